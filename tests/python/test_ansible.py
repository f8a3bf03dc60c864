"""The Ansible collection imagerelay.cloud (ansible_collections/imagerelay/cloud), run as a
user runs it: the real ``ansible-playbook`` and ``ansible-doc`` of the venv, the collection
found through ANSIBLE_COLLECTIONS_PATH, localhost with this Python as the interpreter, and
a home made with the Python API. Results are read from the run's JSON (a stdout callback in
ansible_callbacks/, the shape of ansible.posix's ``json``), never from its text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import imagerelay as ir

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODULES = ("image", "image_copy", "image_share", "image_info")

# import, replicate to two regions, share the copies with team-b; then what team-b sees
ROLLOUT = (ROOT / "examples" / "ansible" / "rollout.yml").read_text()

# requests that break BCC's rules: each task's failure is kept (ignore_errors) and read
BROKEN = """
- hosts: localhost
  gather_facts: false
  module_defaults:
    group/imagerelay.cloud.imagerelay:
      home: "{{ home }}"
  tasks:
    - name: share a System image
      imagerelay.cloud.image_share: {image_id: "{{ system_id }}", accounts: [team-b]}
      ignore_errors: true
    - name: share with the owner and an account that does not exist
      imagerelay.cloud.image_share: {image_id: "{{ custom_id }}", accounts: [default, nobody]}
      ignore_errors: true
    - name: copy a System image
      imagerelay.cloud.image_copy: {image_id: "{{ system_id }}", regions: [gz]}
      ignore_errors: true
    - name: delete a shared image
      imagerelay.cloud.image: {name: shared, region: bj, state: absent}
      ignore_errors: true
"""


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANSIBLE_", "IMAGERELAY_"))}
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(ROOT),
        ANSIBLE_STDOUT_CALLBACK="json",
        ANSIBLE_CALLBACK_PLUGINS=str(Path(__file__).parent / "ansible_callbacks"),
        ANSIBLE_HOME=str(tmp / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_PIPELINING="1",
    )
    return env


class Ansible:
    """Runs playbooks on localhost against one home."""

    def __init__(self, tmp: Path, home: Path, **vars: str) -> None:
        self.tmp = tmp
        self.inventory = tmp / "inventory.ini"
        self.inventory.write_text(f"localhost ansible_connection=local "
                                  f"ansible_python_interpreter={sys.executable}\n")
        self.vars = {"home": str(home), **vars}

    def play(self, text: str, *flags: str, rc: int = 0) -> dict[str, Any]:
        """Runs a playbook; the run's JSON document (plays, tasks, stats)."""
        path = self.tmp / "playbook.yml"
        path.write_text(text)
        extra = self.tmp / "vars.json"
        extra.write_text(json.dumps(self.vars))
        proc = subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", str(self.inventory), "-e", f"@{extra}",
             *flags, str(path)],
            env=_env(self.tmp), capture_output=True, text=True, timeout=300)
        assert proc.returncode == rc, proc.stdout + proc.stderr
        return json.loads(proc.stdout[proc.stdout.index("{"):])


def results(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Task name -> its result on localhost."""
    return {t["task"]["name"]: t["hosts"]["localhost"]
            for play in run["plays"] for t in play["tasks"] if t["hosts"]}


def stats(run: dict[str, Any]) -> dict[str, int]:
    return run["stats"]["localhost"]


def snapshot(home: Path) -> dict[str, Any]:
    """What a home holds, as each account sees it, and the files of its regions."""
    with ir.open(home, start_workers=False) as cloud:
        out: dict[str, Any] = {}
        for account in ("default", "team-b"):
            c = cloud.as_account(account)
            out[account] = {
                "images": [i.to_dict() for i in c.images()],
                "shared": {i.id: c.shared_users(i.id) for i in c.images(image_type="Custom")},
                "jobs": [j.id for j in c.jobs()],
                "events": [(e.seq, e.type) for e in c.events()],
            }
    out["files"] = sorted(str(p.relative_to(home)) for p in (home / "regions").rglob("*"))
    return out


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Ansible, Path]:
    """A home with the account team-b, a System image in bj, and a small image file."""
    home = tmp_path / "home"
    image_file = tmp_path / "golden.raw"
    image_file.write_bytes(os.urandom(192 * 1024) + bytes(64 * 1024))
    with ir.open(home, start_workers=False) as cloud:
        cloud.add_account("team-b")
        cloud.add_system_image(image_file, region="bj", name="base-os")
    return Ansible(tmp_path, home, image_file=str(image_file)), home


def test_rollout_changes_once_then_nothing(setup: tuple[Ansible, Path]) -> None:
    ansible, home = setup
    first = ansible.play(ROLLOUT, "--diff")
    r = results(first)
    assert stats(first)["failures"] == 0 and stats(first)["changed"] == 3
    assert [r[t]["changed"] for t in ("import", "replicate", "share", "seen by team-b")] == [
        True, True, True, False]
    golden = r["import"]["image"]
    assert (golden["name"], golden["region"], golden["status"]) == ("golden", "bj", "Available")
    copies = r["replicate"]["copies"]
    assert sorted(copies) == ["gz", "su"]
    assert all(i["source_image_id"] == golden["id"] and i["status"] == "Available"
               for i in r["replicate"]["images"].values())
    # --diff: what each task changed
    assert r["import"]["diff"]["before"]["state"] == "absent"
    assert r["import"]["diff"]["after"]["images"][0]["id"] == golden["id"]
    assert r["replicate"]["diff"] == {"before": {"regions": []},
                                      "after": {"regions": ["gz", "su"]}}
    assert [x["diff"] for x in r["share"]["results"]] == [
        {"before": {"shared_with": []}, "after": {"shared_with": ["team-b"]}}] * 2
    seen = {i["region"]: i for i in r["seen by team-b"]["images"]}
    assert {reg: i["id"] for reg, i in seen.items()} == copies
    assert all(i["type"] == "Sharing" for i in seen.values())

    # what the home holds, through the Python API
    with ir.open(home, account="team-b", start_workers=False) as cloud:
        assert sorted(i.id for i in cloud.images(image_type="Sharing")) == sorted(
            copies.values())

    before = snapshot(home)
    second = ansible.play(ROLLOUT, "--diff")
    assert stats(second)["changed"] == 0 and stats(second)["failures"] == 0
    r2 = results(second)
    assert r2["import"]["image"]["id"] == golden["id"]
    assert r2["replicate"]["copies"] == copies
    assert r2["replicate"].get("job") is None
    assert snapshot(home) == before

    # check mode of the converged home: nothing would change either
    third = ansible.play(ROLLOUT, "--check")
    assert stats(third)["changed"] == 0
    assert snapshot(home) == before


def test_check_mode_on_a_fresh_home_changes_nothing_yet_reports_changed(
        setup: tuple[Ansible, Path]) -> None:
    ansible, home = setup
    before = snapshot(home)
    run = ansible.play(ROLLOUT, "--check", "--diff")
    r = results(run)
    assert stats(run)["failures"] == 0
    assert [r[t]["changed"] for t in ("import", "replicate", "share", "seen by team-b")] == [
        True, True, True, False]
    assert r["import"]["image"] is None
    assert r["import"]["diff"]["after"]["state"] == "present"
    assert r["replicate"]["diff"]["after"] == {"regions": ["gz", "su"]}
    assert snapshot(home) == before


def test_broken_rules_fail_with_bccs_codes_in_real_and_check_mode(
        setup: tuple[Ansible, Path]) -> None:
    ansible, home = setup
    with ir.open(home, start_workers=False) as cloud:
        system = cloud.images(image_type="System")[0]
        custom = cloud.import_image(ansible.vars["image_file"], region="bj", name="custom")
        shared = cloud.import_image(ansible.vars["image_file"], region="bj", name="shared")
        shared.share("team-b")
    ansible.vars.update(system_id=system.id, custom_id=custom.id)
    expected = {
        "share a System image": "Image.UnCustomImageCannotBeShared",
        "share with the owner and an account that does not exist": "Image.CannotShareToOwner",
        "copy a System image": "Image.ImageNotSupportCopy",
        "delete a shared image": "Image.ImageHasBeenSharedToOthers",
    }
    before = snapshot(home)
    for flags in ((), ("--check",)):
        run = ansible.play(BROKEN, *flags)
        r = results(run)
        assert {name: r[name]["code"] for name in expected} == expected, flags
        for name, code in expected.items():
            assert r[name]["failed"] and not r[name]["changed"]
            assert code in r[name]["msg"]
            assert code in [p["code"] for p in r[name]["problems"]]
        # every rule the request broke, not just the first
        assert [p["code"] for p in r["share with the owner and an account that does not exist"]
                ["problems"]] == ["Image.CannotShareToOwner", "Image.InvalidAccount"]
        assert stats(run)["ignored"] == len(expected)
        assert snapshot(home) == before


def test_unshare_and_delete_change_once(setup: tuple[Ansible, Path]) -> None:
    ansible, home = setup
    with ir.open(home, start_workers=False) as cloud:
        image = cloud.import_image(ansible.vars["image_file"], region="gz", name="old")
        image.share("team-b")
    teardown = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: unshare
      imagerelay.cloud.image_share:
        {home: "{{ home }}", name: old, region: gz, accounts: [team-b], state: absent}
    - name: delete
      imagerelay.cloud.image: {home: "{{ home }}", name: old, region: gz, state: absent}
      register: deleted
"""
    first = ansible.play(teardown, "--diff")
    r = results(first)
    assert r["unshare"]["removed"] == ["team-b"]
    assert r["unshare"]["diff"] == {"before": {"shared_with": ["team-b"]},
                                    "after": {"shared_with": []}}
    assert r["delete"]["deleted"] == [image.id]
    assert stats(ansible.play(teardown))["changed"] == 0
    with ir.open(home, start_workers=False) as cloud, pytest.raises(ir.NotFoundError):
        cloud.image(image.id)


def test_the_collection_installs_and_ansible_doc_renders_every_module(tmp_path: Path) -> None:
    installed = tmp_path / "collections"
    proc = subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "install",
         str(ROOT / "ansible_collections" / "imagerelay" / "cloud"), "-p", str(installed)],
        env={**_env(tmp_path), "ANSIBLE_COLLECTIONS_PATH": str(installed)},
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plugins = installed / "ansible_collections" / "imagerelay" / "cloud" / "plugins"
    assert {p.stem for p in (plugins / "modules").glob("*.py")} == set(MODULES)

    proc = subprocess.run(
        [str(BIN / "ansible-doc"), "--json", *(f"imagerelay.cloud.{m}" for m in MODULES)],
        env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    docs = json.loads(proc.stdout)
    for m in MODULES:
        doc = docs[f"imagerelay.cloud.{m}"]
        assert {"home", "account"} <= set(doc["doc"]["options"]), m
        assert doc["examples"].strip() and doc["return"], m
