"""YAML playbooks: the example, re-runs that change nothing, failures and kills half-way,
dry runs, errors that name the file, line and step, and the command line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from conftest import CHUNK, PYTHON, chunk_bytes, make_dense, make_odd, wait_until

import imagerelay as ir
from imagerelay.playbook import PlaybookAssertionError, PlaybookError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "playbooks" / "replicate-and-share.yaml"
IMAGERELAY = str(REPO / ".venv" / "bin" / "imagerelay")
KiB = 1024
CREATING_EVENTS = {"image.created", "job.created", "image.shared", "image.unshared",
                   "image.renamed", "image.deleted", "task.cancelled"}


@pytest.fixture
def book_dir(tmp_path: Path) -> Path:
    """A folder holding a copy of the example playbook and its golden.raw."""
    d = tmp_path / "book"
    d.mkdir()
    shutil.copy(EXAMPLE, d / EXAMPLE.name)
    make_dense(d / "golden.raw", 300 * KiB + 123)
    return d


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def event_types(cloud: ir.Cloud, since: int = 0) -> Counter[str]:
    return Counter(e.type for e in cloud.events(since=since))


def last_seq(cloud: ir.Cloud) -> int:
    events = cloud.events()
    return events[-1].seq if events else 0


def statuses(result: object) -> dict[str, str]:
    return {s.key: s.status for s in result.steps}  # type: ignore[attr-defined]


def copies_of(cloud: ir.Cloud, image_id: str) -> dict[str, list[str]]:
    """region -> ids of the images copied from ``image_id``."""
    out: dict[str, list[str]] = {}
    for im in cloud.images():
        if im.source_image_id == image_id:
            out.setdefault(im.region, []).append(im.id)
    return out


def cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([IMAGERELAY, "--home", str(home), *args], capture_output=True,
                          text=True, timeout=120)
    if check:
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return proc


# -- the example ---------------------------------------------------------------------------
def check_example_outcome(cloud: ir.Cloud, golden_file: Path, outputs: dict) -> None:
    golden = cloud.image(outputs["golden"])
    assert golden.status == "Available" and golden.region == "bj" and golden.name == "golden"
    assert golden.size == golden_file.stat().st_size
    assert copies_of(cloud, golden.id) == {"gz": [outputs["#3"]], "su": [outputs["#4"]]}
    for region in ("gz", "su"):
        copy = cloud.image(copies_of(cloud, golden.id)[region][0])
        assert copy.status == "Available" and copy.digest == golden.digest
        assert cloud.shared_users(copy.id) == ["team-b"]
    team_b = cloud.as_account("team-b")
    assert sorted(i.region for i in team_b.images(image_type="Sharing")) == ["gz", "su"]


def test_example_through_the_python_api(cloud: ir.Cloud, book_dir: Path) -> None:
    cloud.add_account("team-b")
    book = ir.Playbook.load(book_dir / EXAMPLE.name)
    assert book.name == "replicate-and-share" and len(book.steps) == 6
    seen: list[str] = []
    result = book.run(cloud, on_step=lambda s: seen.append(s.key))
    assert seen == ["golden", "copies", "#3", "#4", "#5", "seen-in-su"]
    assert set(statuses(result).values()) == {"done"}
    out = result.outputs
    assert isinstance(out["golden"], ir.Image) and isinstance(out["copies"], ir.Job)
    assert out["copies"].state == "Completed"
    assert out["copies"].source_image_id == out["golden"].id
    assert out["seen-in-su"].type == "Sharing"  # as team-b
    assert [s.account for s in result.steps] == ["default"] * 4 + ["team-b"] * 2
    assert [s.line for s in result.steps[:2]] == [14, 18]
    # golden.raw is found beside the playbook: relative to its folder, not to the cwd
    check_example_outcome(cloud, book_dir / "golden.raw", result.output_ids())
    state = json.loads((cloud.home / "playbooks" / "replicate-and-share.json").read_text())
    assert set(state["steps"]) == {"golden", "copies", "#3", "#4", "#5", "seen-in-su"}


def test_rerun_changes_nothing(cloud: ir.Cloud, book_dir: Path) -> None:
    cloud.add_account("team-b")
    book = ir.Playbook.load(book_dir / EXAMPLE.name)
    first = book.run(cloud)
    seq = last_seq(cloud)
    for _ in range(2):
        again = ir.Playbook.load(book_dir / EXAMPLE.name).run(cloud)
        assert set(statuses(again).values()) == {"skipped"}
        assert again.output_ids() == first.output_ids()
    assert cloud.events(since=seq) == []
    assert len(cloud.jobs()) == 1
    check_example_outcome(cloud, book_dir / "golden.raw", first.output_ids())


def test_example_through_the_command_line(home: Path, book_dir: Path, tmp_path: Path) -> None:
    other = make_dense(tmp_path / "elsewhere.raw", 200 * KiB)
    cli(home, "accounts", "add", "team-b")
    book = str(book_dir / EXAMPLE.name)
    dry = cli(home, "run", book, "--dry-run", "--var", f"image_file={other}")
    assert [ln.split()[0] for ln in dry.stdout.splitlines()[:6]] == ["dry-run"] * 6
    assert not (home / "playbooks" / "replicate-and-share.json").exists()
    first = cli(home, "run", book, "--var", f"image_file={other}")
    lines = first.stdout.splitlines()
    assert [ln.split()[:3] for ln in lines[:6]] == [
        ["done", "golden", "import"], ["done", "copies", "replicate"],
        ["done", "#3", "share"], ["done", "#4", "share"], ["done", "#5", "assert"],
        ["done", "seen-in-su", "assert"]]
    assert lines[6] == "playbook replicate-and-share: 6 steps (6 done)"
    again = json.loads(cli(home, "--json", "run", book, "--var", f"image_file={other}").stdout)
    assert [s["status"] for s in again["steps"]] == ["skipped"] * 6
    assert again["dry_run"] is False and again["outputs"]["copies"].startswith("j-")
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        # the file came from --var, not the golden.raw beside the playbook
        check_example_outcome(cloud, other, again["outputs"])
        assert len(cloud.jobs()) == 1
    # errors: exit 1 with `error: <code>: <message>`; bad usage: exit 2
    bad = cli(home, "run", book, "--var", "nope=1", check=False)
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: InvalidParameter: ") and "'nope'" in bad.stderr
    assert cli(home, "run", book, "--var", "novalue", check=False).returncode == 2
    missing = cli(home, "run", str(tmp_path / "absent.yaml"), check=False)
    assert missing.returncode == 1 and "absent.yaml" in missing.stderr


def test_dry_run_changes_nothing(cloud: ir.Cloud, book_dir: Path) -> None:
    cloud.add_account("team-b")
    seq = last_seq(cloud)
    state = cloud.home / "playbooks" / "replicate-and-share.json"
    result = ir.Playbook.load(book_dir / EXAMPLE.name).run(cloud, dry_run=True)
    assert set(statuses(result).values()) == {"dry-run"}
    assert str(result.outputs["golden"]) == "<golden>"
    assert "would replicate <golden.id> to gz, su" in result.steps[1].detail
    assert "<copies.copies.gz.id>" in result.steps[2].detail
    assert cloud.events(since=seq) == [] and cloud.images(image_type="Custom") == []
    assert not state.exists()
    # after a real run, a dry run sees every step done (and the checks hold)
    real = ir.Playbook.load(book_dir / EXAMPLE.name).run(cloud)
    text = state.read_text()
    seq = last_seq(cloud)
    dry = ir.Playbook.load(book_dir / EXAMPLE.name).run(cloud, dry_run=True)
    assert [s.status for s in dry.steps] == ["skipped"] * 6
    assert dry.steps[5].detail.startswith("still holds: ")
    assert dry.output_ids() == real.output_ids()
    assert cloud.events(since=seq) == [] and state.read_text() == text


def test_dry_run_finds_what_is_missing(cloud: ir.Cloud, book_dir: Path) -> None:
    path = book_dir / EXAMPLE.name
    cloud.add_account("team-b")

    def dry(text: str, **vars: str) -> ir.ImageRelayError:
        write(path, text)
        with pytest.raises(ir.ImageRelayError) as info:
            ir.Playbook.load(path).run(cloud, dry_run=True, vars=vars)
        return info.value

    base = """
        name: checks
        vars: {f: golden.raw, who: team-b}
        steps:
          - id: golden
            import: {source: "${vars.f}", region: bj, name: golden}
          - id: copies
            replicate: {image: "${golden.id}", to: [gz, mars]}
          - share: {image: "${copies.copies.gz.id}", accounts: ["${vars.who}"]}
        """
    err = dry(base)
    assert (type(err), err.code) == (ir.NotFoundError, "NoSuchRegion")
    assert err.message.startswith(f"{path}:6: step copies (replicate): region 'mars'")
    err = dry(base.replace("mars", "su"), f="absent.raw")
    assert (type(err), err.code) == (ir.ValidationError, "InvalidParameter")
    assert err.message.startswith(f"{path}:4: step golden (import): ")
    assert str(path.parent / "absent.raw") in err.message
    err = dry(base.replace("mars", "su"), who="team-z")
    assert err.code == "Image.InvalidAccount" and f"{path}:8: step #3 (share): " in err.message
    err = dry(base.replace("mars", "su").replace("- id: golden",
                                                 "- as: nobody\n            id: golden"))
    assert err.code == "NoSuchAccount" and "step golden (import)" in err.message
    assert not (cloud.home / "playbooks" / "checks.json").exists()
    assert cloud.images(image_type="Custom") == []


# -- failures and kills half-way -----------------------------------------------------------
def test_failure_half_way_then_rerun(cloud: ir.Cloud, book_dir: Path) -> None:
    path = book_dir / EXAMPLE.name
    with pytest.raises(ir.ValidationError) as info:
        ir.Playbook.load(path).run(cloud)  # team-b does not exist yet
    err = info.value
    assert err.code == "Image.InvalidAccount" and err.http_status == 400
    assert err.message.startswith(f"{path}:21: step #3 (share): ")
    assert "team-b" in err.message and err.problems[0][0] == "Image.InvalidAccount"
    golden = cloud.images(region="bj", image_type="Custom")
    assert len(golden) == 1 and len(cloud.jobs()) == 1
    seq = last_seq(cloud)

    cloud.add_account("team-b")
    result = ir.Playbook.load(path).run(cloud)
    assert statuses(result) == {"golden": "skipped", "copies": "skipped", "#3": "done",
                                "#4": "done", "#5": "done", "seen-in-su": "done"}
    assert result.outputs["golden"].id == golden[0].id
    assert event_types(cloud, seq) == Counter({"image.shared": 2})
    check_example_outcome(cloud, book_dir / "golden.raw", result.output_ids())


CHILD_RUN = textwrap.dedent("""
    import sys, imagerelay as ir
    home, book, image_file, bandwidth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    cloud = ir.open(home, limits=ir.Limits(chunk_size=65536, bandwidth=bandwidth))
    ir.Playbook.load(book).run(cloud, vars={"image_file": image_file})
    print("RESULT finished", flush=True)
""")


def test_killed_during_replicate_then_rerun(home: Path, book_dir: Path) -> None:
    golden_file = make_dense(book_dir / "big.raw", 2 * 2**20)
    state = home / "playbooks" / "replicate-and-share.json"
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as c:
        c.add_account("team-b")
    child = subprocess.Popen([PYTHON, "-c", CHILD_RUN, str(home), str(book_dir / EXAMPLE.name),
                              str(golden_file), str(256 * KiB)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def replicating() -> bool:
            if child.poll() is not None:
                return True  # it ended: fails below
            if not state.exists():
                return False
            steps = json.loads(state.read_text())["steps"]
            return "copies" in steps and chunk_bytes(home, "gz") >= 2 * CHUNK
        wait_until(replicating, timeout=60)
        assert child.poll() is None, child.communicate()
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]
    record = next(iter(json.loads(state.read_text())["steps"]["copies"]["runs"].values()))
    assert record["status"] == "started"

    # The copy resumes as soon as the home opens; the bandwidth limit keeps it running
    # (~7 s for what is left) until the rerun's copies step looks at it.
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK, bandwidth=256 * KiB)) as cloud:
        seq = last_seq(cloud)
        result = ir.Playbook.load(book_dir / EXAMPLE.name).run(
            cloud, vars={"image_file": str(golden_file)})
        assert statuses(result)["golden"] == "skipped"
        assert statuses(result)["copies"] == "done"  # waited for the resumed copies
        assert result.steps[1].detail.startswith("resumed: ")
        assert len(cloud.jobs()) == 1 and result.outputs["copies"].id == record["jobs"][0]
        check_example_outcome(cloud, golden_file, result.output_ids())
        types = event_types(cloud, seq)
        assert types["job.created"] == types["image.created"] == 0
        assert types["image.shared"] == 2
        assert len(cloud.images(region="bj", image_type="Custom")) == 1


def test_lost_state_gets_the_same_job_back(cloud: ir.Cloud, book_dir: Path) -> None:
    """A run killed after starting the copies but before recording them: the client token
    derived from the step gives the same job back."""
    cloud.add_account("team-b")
    first = ir.Playbook.load(book_dir / EXAMPLE.name).run(cloud)
    state = cloud.home / "playbooks" / "replicate-and-share.json"
    data = json.loads(state.read_text())
    for key in ("copies", "#3", "#4"):
        del data["steps"][key]
    state.write_text(json.dumps(data))
    seq = last_seq(cloud)
    again = ir.Playbook.load(book_dir / EXAMPLE.name).run(cloud)
    assert again.output_ids() == first.output_ids()
    assert statuses(again)["#3"] == statuses(again)["#4"] == "skipped"  # already shared
    assert cloud.events(since=seq) == []


def test_changed_argument_reruns_the_step(cloud: ir.Cloud, book_dir: Path) -> None:
    cloud.add_account("team-b")
    path = book_dir / EXAMPLE.name
    v1 = ir.Playbook.load(path).run(cloud)
    v2_file = make_dense(book_dir / "v2.raw", 100 * KiB)
    v2 = ir.Playbook.load(path).run(cloud, vars={"image_file": "v2.raw"})  # beside the book
    assert set(statuses(v2).values()) == {"done"}
    assert v2.outputs["golden"].size == v2_file.stat().st_size
    assert v2.outputs["golden"].id != v1.outputs["golden"].id
    assert len(cloud.jobs()) == 2
    # back to the first file: everything was done before, nothing happens
    seq = last_seq(cloud)
    back = ir.Playbook.load(path).run(cloud)
    assert back.output_ids() == v1.output_ids()
    # the checks' latest run had other arguments (v2): they check again
    assert [s.status for s in back.steps] == ["skipped"] * 4 + ["done"] * 2
    assert cloud.events(since=seq) == []


def test_failed_copy_is_retried_without_duplicates(cloud: ir.Cloud, tmp_path: Path) -> None:
    cloud.add_account("team-b")
    cloud.add_region("hk")
    store = cloud.home / "regions" / "hk"
    shutil.rmtree(store, ignore_errors=True)
    store.write_text("not a directory")  # hk's store is broken: its copy fails
    make_dense(tmp_path / "a.raw", 200 * KiB)
    book = write(tmp_path / "retry.yaml", """
        name: retry
        steps:
          - id: golden
            import: {source: a.raw, region: bj, name: golden}
          - id: copies
            replicate: {image: "${golden.id}", to: [gz, hk]}
          - share: {image: "${copies.copies.hk.id}", accounts: team-b}
        """)
    with pytest.raises(ir.ReplicationFailedError) as info:
        ir.Playbook.load(book).run(cloud)
    assert info.value.code == "Job.Failed"
    assert info.value.message.startswith(f"{book}:5: step copies (replicate): job j-")
    assert info.value.job.state == "Failed"  # the error keeps its .job
    store.unlink()

    result = ir.Playbook.load(book).run(cloud)
    assert [s.status for s in result.steps] == ["skipped", "done", "done"]
    golden = result.outputs["golden"]
    copies = copies_of(cloud, golden.id)  # the failed copies were deleted
    assert sorted(copies) == ["gz", "hk"] and all(len(v) == 1 for v in copies.values())
    assert {r: im.id for r, im in result.outputs["copies"].copies.items()} == {
        r: v[0] for r, v in copies.items()}
    assert all(cloud.image(v[0]).status == "Available" for v in copies.values())
    assert len(cloud.jobs()) == 2 and "hk" in cloud.jobs()[0].tasks
    assert cloud.shared_users(copies["hk"][0]) == ["team-b"]
    seq = last_seq(cloud)
    again = ir.Playbook.load(book).run(cloud)
    assert set(statuses(again).values()) == {"skipped"} and cloud.events(since=seq) == []
    assert again.output_ids() == result.output_ids()


# -- every step kind -----------------------------------------------------------------------
KINDS = """
    name: kinds
    vars: {image_file: disk.raw, suffix: v1, regions: [gz, su]}
    steps:
      - id: img
        import: {source: "${vars.image_file}", region: bj, name: base, os_version: "22.04"}
      - id: rep
        replicate: {image: "${img}", to: "${vars.regions}", wait: false, name: base-copy}
      - id: waited
        wait: {job: "${rep.id}", timeout: 60}
      - id: renamed
        rename: {image: "${rep.copies.gz.id}", name: "renamed-${vars.suffix}"}
      - share: {image: "${renamed}", accounts: team-b}
      - as: team-b
        assert: {image: "${renamed.id}", type: Sharing, name: renamed-v1, os_version: "22.04"}
      - unshare: {image: "${renamed.id}", accounts: [team-b]}
      - id: out
        export: {image: "${rep.copies.su.id}", path: exported/su.raw}
      - id: gone
        delete: {image: "${rep.copies.su.id}"}
      - assert: {image: "${img.id}", name: base, status: Available, region: bj,
                 owner: default, type: Custom, size: "${img.size}"}
"""


def test_every_step_kind_and_rerun(cloud: ir.Cloud, tmp_path: Path) -> None:
    cloud.add_account("team-b")
    d = tmp_path / "kinds"
    d.mkdir()
    src = make_dense(d / "disk.raw", 200 * KiB + 7)
    book = write(d / "kinds.yaml", KINDS)
    result = ir.Playbook.load(book).run(cloud)
    assert set(statuses(result).values()) == {"done"}
    out = result.outputs
    assert isinstance(out["waited"], ir.Job) and out["waited"].state == "Completed"
    assert out["renamed"].name == "renamed-v1" and out["renamed"].region == "gz"
    assert cloud.shared_users(out["renamed"].id) == []
    assert out["out"] == d / "exported" / "su.raw"  # relative to the playbook's folder
    assert out["out"].read_bytes() == src.read_bytes()
    with pytest.raises(ir.NotFoundError):
        cloud.image(out["gone"])
    assert copies_of(cloud, out["img"].id) == {"gz": [out["renamed"].id]}
    types = event_types(cloud)
    assert (types["image.shared"], types["image.unshared"], types["image.renamed"],
            types["image.deleted"]) == (1, 1, 1, 1)

    # Each step converges where it stands: #5 shares again what #7 unshared (so that the
    # assert between them holds), #7 unshares it again; the copy that `gone` deleted is
    # not copied again. Every re-run does the same, and nothing else.
    for _ in range(2):
        seq = last_seq(cloud)
        again = ir.Playbook.load(book).run(cloud)
        assert [s.status for s in again.steps] == ["skipped"] * 4 + [
            "redone", "done", "redone", "skipped", "skipped", "done"]
        assert again.steps[4].drift == (f"{out['renamed'].id} was unshared from team-b since "
                                        "(step #7 unshares it)")
        assert isinstance(again.outputs["#5"], ir.Image)
        assert again.outputs["gone"] == out["gone"]
        assert event_types(cloud, seq) == Counter({"image.shared": 1, "image.unshared": 1})
    assert copies_of(cloud, out["img"].id) == {"gz": [out["renamed"].id]}
    dry = ir.Playbook.load(book).run(cloud, dry_run=True)
    assert [s.status for s in dry.steps] == ["skipped"] * 4 + [
        "dry-run", "dry-run", "skipped", "skipped", "skipped", "dry-run"]
    assert dry.steps[4].detail.startswith("would redo: ")


EXPORTS = """
    name: exports
    vars: {image_file: v1.raw, force: false}
    steps:
      - id: img
        import: {source: "${vars.image_file}", region: bj, name: img}
      - id: mine
        export: {image: "${img.id}", path: mine.raw}
      - id: theirs
        export: {image: "${img.id}", path: theirs.raw, force: "${vars.force}"}
"""


def test_export_step_overwrites_its_own_file_and_others_only_with_force(
        cloud: ir.Cloud, tmp_path: Path) -> None:
    d = tmp_path / "exports"
    d.mkdir()
    v1 = make_dense(d / "v1.raw", 100 * KiB)
    v2 = make_dense(d / "v2.raw", 120 * KiB)
    (d / "theirs.raw").write_bytes(b"not the playbook's")
    book = write(d / "exports.yaml", EXPORTS)
    with pytest.raises(ir.ValidationError) as info:
        ir.Playbook.load(book).run(cloud)
    assert info.value.code == "InvalidParameter"
    assert "step theirs (export)" in info.value.message and "--force" in info.value.message
    assert (d / "mine.raw").read_bytes() == v1.read_bytes()
    assert (d / "theirs.raw").read_bytes() == b"not the playbook's"

    ir.Playbook.load(book).run(cloud, vars={"force": "true"})
    assert (d / "theirs.raw").read_bytes() == v1.read_bytes()
    # Re-runs write the playbook's own files again: damaged, or of another image.
    (d / "mine.raw").write_bytes(b"damaged")
    result = ir.Playbook.load(book).run(cloud, vars={"force": "true"})
    assert statuses(result)["mine"] == "done"
    assert (d / "mine.raw").read_bytes() == v1.read_bytes()
    result = ir.Playbook.load(book).run(cloud, vars={"image_file": "v2.raw"})
    assert statuses(result) == {"img": "done", "mine": "done", "theirs": "done"}
    assert (d / "mine.raw").read_bytes() == (d / "theirs.raw").read_bytes() == v2.read_bytes()

def test_cancel_steps(home: Path, tmp_path: Path) -> None:
    cloud = ir.open(home, limits=ir.Limits(chunk_size=CHUNK, bandwidth=256 * KiB))
    try:
        d = tmp_path / "cancel"
        d.mkdir()
        make_dense(d / "disk.raw", 512 * KiB)
        book = write(d / "cancel.yaml", """
            name: cancel
            steps:
              - id: rep1
                import: {source: disk.raw, region: bj, name: one}
              - id: job
                replicate: {image: "${rep1.id}", to: [gz, su], wait: false}
              - cancel: {image: "${job.tasks.su.dest_image_id}"}
              - cancel: {job: "${job.id}", region: gz}
              - id: after
                wait: {job: "${job}"}
            """)
        result = ir.Playbook.load(book).run(cloud)
        assert set(statuses(result).values()) == {"done"}
        job = result.outputs["after"]
        assert job.state == "Cancelled" and job.copies == {}
        assert {t.state for t in job.tasks.values()} == {"Cancelled"}
        seq = last_seq(cloud)
        again = ir.Playbook.load(book).run(cloud)
        assert [s.status for s in again.steps] == ["skipped"] * 5
        assert cloud.events(since=seq) == [] and len(cloud.jobs()) == 1
    finally:
        cloud.close()


def test_assert_failure_names_the_step(cloud: ir.Cloud, book_dir: Path) -> None:
    make_dense(book_dir / "a.raw", 64 * KiB)
    book = write(book_dir / "a.yaml", """
        name: asserting
        steps:
          - id: a
            import: {source: a.raw, region: bj, name: a}
          - id: check
            assert: {image: "${a.id}", status: Available, region: gz, type: System}
        """)
    with pytest.raises(PlaybookAssertionError) as info:
        ir.Playbook.load(book).run(cloud)
    err = info.value
    assert isinstance(err, ir.ImageRelayError) and err.code == "Playbook.AssertionFailed"
    assert err.message.startswith(f"{book}:5: step check (assert): image m-")
    assert "region is 'bj', expected 'gz'" in err.message
    assert "type is 'Custom', expected 'System'" in err.message
    assert "status" not in err.message


def test_step_error_keeps_class_code_and_extras(cloud: ir.Cloud, book_dir: Path) -> None:
    """An engine error raised by a step keeps its class, code, status and problems."""
    cloud.add_account("team-b")
    make_dense(book_dir / "a.raw", 64 * KiB)
    book = write(book_dir / "b.yaml", """
        name: errors
        steps:
          - id: a
            import: {source: a.raw, region: bj, name: a}
          - as: team-b
            rename: {image: "${a.id}", name: b}
        """)
    with pytest.raises(ir.NotFoundError) as info:
        ir.Playbook.load(book).run(cloud)
    err = info.value
    assert (err.code, err.http_status) == ("NoSuchImage", 404)
    assert err.message.startswith(f"{book}:5: step #2 (rename): image m-")
    assert str(err) == f"NoSuchImage: {err.message}"
    assert isinstance(err.__cause__, ir.NotFoundError)


# -- playbooks that cannot run as written --------------------------------------------------
def load_error(tmp_path: Path, text: str) -> PlaybookError:
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(PlaybookError) as info:
        ir.Playbook.load(path)
    err = info.value
    assert isinstance(err, ir.ValidationError) and err.code == "InvalidParameter"
    assert err.message.startswith(f"{path}:"), err.message
    return err


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    err = load_error(tmp_path, """
        name: bad
        steps:
          - import: {source: a.raw, region: bj
          - delete: {image: m-12345678}
        """)
    assert err.line == 4 and err.message.startswith(f"{tmp_path / 'bad.yaml'}:4:")
    assert "bad YAML" in err.message
    err = load_error(tmp_path, "name: bad\nsteps:\n  - delete: {image: x}\nname: again\n")
    assert err.line == 4 and "duplicate key 'name'" in err.message


def test_unknown_step_kind_names_line_and_step(tmp_path: Path) -> None:
    err = load_error(tmp_path, """
        name: bad
        steps:
          - id: first
            delete: {image: m-12345678}
          - id: second
            copy: {image: m-12345678, to: gz}
        """)
    assert err.line == 6 and err.message.startswith(f"{tmp_path / 'bad.yaml'}:6: step second:")
    assert "unknown step kind 'copy'" in err.message and "replicate" in err.message


@pytest.mark.parametrize("step, line, where, expected", [
    ('delete: {image: "${golden.id}"}', 3, "step #1 (delete)",
     "refers to step 'golden', which no earlier step"),
    ('id: me\n    rename:\n      image: m-12345678\n      name: "x-${later.id}"', 6,
     "step me (rename)", "refers to step 'later', which no earlier step"),
    ('id: me\n    rename: {image: "${me.id}", name: x}', 4, "step me (rename)",
     "a step cannot use its own output"),
    ('delete: {image: "${vars.nope}"}', 3, "step #1 (delete)",
     "var 'nope', which the playbook does not declare"),
    ('delete: {image: "${vars.x"}', 3, "step #1 (delete)", "unterminated reference"),
    ("share: {image: m-12345678}", 3, "step #1 (share)", "missing required field 'accounts'"),
    ("import: {source: a.raw, region: bj, nam: x}", 3, "step #1 (import)",
     "unknown field 'nam' for import"),
    ("wait: {job: j-1, image: m-12345678}", 3, "step #1 (wait)", "exactly one of job, image"),
    ("delete: m-12345678", 3, "step #1 (delete)", "the arguments of delete are a mapping"),
    ("id: 1st\n    delete: {image: m-12345678}", 3, "step #1 (delete)", "step id '1st'"),
    ("import: {}\n    delete: {}", 3, "step #1", "exactly one kind: import, delete"),
])
def test_bad_steps_name_the_line_and_the_step(tmp_path: Path, step: str, line: int,
                                              where: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nsteps:\n  - " + step +
                    "\n  - id: later\n    delete: {image: m-12345678}\n")
    with pytest.raises(PlaybookError) as info:
        ir.Playbook.load(path)
    err = info.value
    assert err.code == "InvalidParameter" and err.line == line, err.message
    assert err.message.startswith(f"{path}:{line}: {where}: "), err.message
    assert expected in err.message, err.message


def test_reference_to_a_missing_attribute_at_run_time(cloud: ir.Cloud, book_dir: Path) -> None:
    make_dense(book_dir / "a.raw", 64 * KiB)
    book = write(book_dir / "r.yaml", """
        name: refs
        steps:
          - id: a
            import: {source: a.raw, region: bj, name: a}
          - rename: {image: "${a.id}", name: "${a.nonsense}"}
        """)
    with pytest.raises(PlaybookError) as info:
        ir.Playbook.load(book).run(cloud)
    assert info.value.message.startswith(f"{book}:5: step #2 (rename): ${{a.nonsense}}: ")
    assert "has no attribute or key 'nonsense'" in info.value.message


def test_references_keep_types_or_format_into_strings(cloud: ir.Cloud, tmp_path: Path) -> None:
    make_dense(tmp_path / "a.raw", 64 * KiB)
    book = write(tmp_path / "t.yaml", """
        name: types
        vars: {n: 3, where: {region: bj}}
        steps:
          - id: a
            import: {source: a.raw, region: "${vars.where.region}", name: "a-${vars.n}",
                     description: "$${literal} ${vars.n}"}
          - assert: {image: "${a.id}", size: "${a.size}", name: "a-3", region: bj,
                     description: "$${literal} 3"}
        """)
    result = ir.Playbook.load(book).run(cloud)
    assert result.outputs["a"].name == "a-3"
    assert result.outputs["a"].description == "${literal} 3"
    assert result.outputs["#2"].size == 64 * KiB


def test_vars_account_and_as_must_exist(cloud: ir.Cloud, tmp_path: Path) -> None:
    book = write(tmp_path / "acct.yaml", """
        name: acct
        account: "${vars.who}"
        vars: {who: someone}
        steps:
          - delete: {image: m-12345678}
        """)
    with pytest.raises(ir.NotFoundError) as info:
        ir.Playbook.load(book).run(cloud, dry_run=True)
    assert info.value.code == "NoSuchAccount"
    assert info.value.message.startswith(f"{book}:2: ")
    cloud.add_account("someone")
    result = ir.Playbook.load(book).run(cloud, vars={"who": "someone"})
    assert result.steps[0].account == "someone" and result.steps[0].status == "skipped"


def test_a_second_run_at_once_is_refused(cloud: ir.Cloud, tmp_path: Path) -> None:
    import fcntl

    book = write(tmp_path / "l.yaml", "name: locked\nsteps:\n  - delete: {image: m-12345678}\n")
    (cloud.home / "playbooks").mkdir(parents=True, exist_ok=True)
    with open(cloud.home / "playbooks" / "locked.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(ir.ConflictError) as info:
            ir.Playbook.load(book).run(cloud)
    assert info.value.code == "Playbook.AlreadyRunning"
    assert ir.Playbook.load(book).run(cloud).steps[0].status == "skipped"
    assert os.path.exists(cloud.home / "playbooks" / "locked.json")


# For every rule a step can break: the dry run reports what the real run fails with (the
# dry run asks the core, which runs the real request's checks without applying it).
RULE_BREAKERS = {
    "replicate a System image": ("replicate: {image: '${vars.system}', to: [gz]}", ""),
    "replicate into its own region": ("replicate: {image: '${vars.custom}', to: [bj]}", ""),
    "replicate to an unknown region": ("replicate: {image: '${vars.custom}', to: [mars]}", ""),
    "replicate an image that is not there": ("replicate: {image: m-00000000, to: [gz]}", ""),
    "share a System image": ("share: {image: '${vars.system}', accounts: [team-b]}", ""),
    "share with its owner": ("share: {image: '${vars.custom}', accounts: [default]}", ""),
    "share with an unknown account": ("share: {image: '${vars.custom}', accounts: [nobody]}",
                                      ""),
    "rename to an empty name": ("rename: {image: '${vars.custom}', name: ''}", ""),
    "delete a System image": ("delete: {image: '${vars.system}'}", ""),
    "act on another account's image": ("rename: {image: '${vars.custom}', name: x}",
                                       "as: team-b"),
    "import into an unknown region": ("import: {source: '${vars.file}', region: mars, name: x}",
                                      ""),
    "import a file that is not there": ("import: {source: /nonexistent.raw, region: bj, "
                                        "name: x}", ""),
}


@pytest.mark.parametrize("rule", sorted(RULE_BREAKERS))
def test_a_dry_run_fails_as_the_real_run_does(cloud: ir.Cloud, book_dir: Path, files: Path,
                                              rule: str) -> None:
    cloud.add_account("team-b")
    src = make_odd(files / "a.raw")
    custom = cloud.import_image(src, region="bj", name="custom")
    system = cloud.add_system_image(src, region="bj", name="system")
    step, extra = RULE_BREAKERS[rule]
    path = write(book_dir / "rule.yaml", f"""
        name: rule
        vars: {{custom: {custom.id}, system: {system.id}, file: {src}}}
        steps:
          - {{{extra + ', ' if extra else ''}{step}}}
        """)
    before = last_seq(cloud)
    codes = []
    for dry_run in (True, False):
        with pytest.raises(ir.ImageRelayError) as info:
            ir.Playbook.load(path).run(cloud, dry_run=dry_run)
        codes.append((type(info.value), info.value.code))
        if dry_run:
            assert last_seq(cloud) == before  # the dry run changed nothing
    assert codes[0] == codes[1], rule
