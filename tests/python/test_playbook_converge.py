"""Playbooks converge (issue #14, point 2): a re-run looks at the world, not only at its run
state. Run the example, unshare both copies from team-b and delete one copy by hand, run it
again: the copy is made again (only that one), both are shared again, the asserts check the
catalog; a third run changes nothing; a dry run says what would be redone and changes
nothing; an assert on an image that is gone fails."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import CHUNK, make_dense
from test_playbooks import book_dir  # noqa: F401  (a fixture)
from test_playbooks import EXAMPLE, cli, copies_of, event_types, last_seq, statuses, write

import imagerelay as ir
from imagerelay.playbook import PlaybookAssertionError

KiB = 1024
STEPS = ["golden", "copies", "#3", "#4", "#5", "seen-in-su"]


@pytest.fixture
def book(book_dir: Path) -> Path:
    """The example playbook, beside its golden.raw."""
    return book_dir / EXAMPLE.name


def small_book(tmp_path: Path, name: str, steps: str) -> Path:
    """Playbook ``name``: step ``a`` imports a 64 KiB a.raw into bj, then ``steps``."""
    make_dense(tmp_path / "a.raw", 64 * KiB)
    return write(tmp_path / f"{name}.yaml", f"name: {name}\nsteps:\n  - id: a\n    import: "
                 "{source: a.raw, region: bj, name: a}\n" + textwrap.indent(
                     textwrap.dedent(steps).lstrip("\n"), "  "))


def drift(cloud: ir.Cloud, gz: str, su: str) -> None:
    """The issue's hand edits: both copies unshared from team-b, the one in gz deleted."""
    cloud.unshare(gz, ["team-b"])
    cloud.unshare(su, ["team-b"])
    cloud.delete_image(gz)
    assert cloud.as_account("team-b").images(image_type="Sharing") == []


def check_converged(cloud: ir.Cloud, golden_id: str, su: str, gz_gone: str) -> str:
    """team-b sees both copies again, the one in su untouched, a new one in gz; its id."""
    copies = copies_of(cloud, golden_id)
    assert set(copies) == {"gz", "su"}
    assert copies["su"] == [su]  # not copied twice
    assert len(copies["gz"]) == 1 and copies["gz"][0] != gz_gone
    gz = copies["gz"][0]
    golden = cloud.image(golden_id)
    for copy_id in (gz, su):
        copy = cloud.image(copy_id)
        assert copy.status == "Available" and copy.digest == golden.digest
        assert cloud.shared_users(copy_id) == ["team-b"]
    seen = cloud.as_account("team-b").images(image_type="Sharing")
    assert sorted((i.region, i.id) for i in seen) == [("gz", gz), ("su", su)]
    return gz


def test_the_issue_through_the_python_api(cloud: ir.Cloud, book: Path) -> None:
    cloud.add_account("team-b")
    first = ir.Playbook.load(book).run(cloud)
    golden, gz, su = first.outputs["golden"].id, first.outputs["#3"].id, first.outputs["#4"].id
    drift(cloud, gz, su)
    state = cloud.home / "playbooks" / "replicate-and-share.json"
    text, seq = state.read_text(), last_seq(cloud)

    # A dry run says what would be redone, and why; it changes nothing.
    dry = ir.Playbook.load(book).run(cloud, dry_run=True)
    assert statuses(dry) == {"golden": "skipped", "copies": "dry-run", "#3": "dry-run",
                             "#4": "dry-run", "#5": "dry-run", "seen-in-su": "dry-run"}
    steps = {s.key: s for s in dry.steps}
    assert steps["copies"].drift == f"the copy in gz ({gz}) was deleted"
    assert steps["copies"].detail == (f"would redo: the copy in gz ({gz}) was deleted; would "
                                      f"replicate {golden} to gz again")
    assert steps["#3"].detail == "would share <copies.copies.gz.id> with team-b"
    assert steps["#4"].drift == f"{su} was unshared from team-b since"
    assert steps["#4"].detail == (f"would redo: {su} was unshared from team-b since; would "
                                  f"share {su} with team-b")
    assert steps["#5"].detail.startswith("would check <copies.copies.gz.id> as team-b")
    assert steps["golden"].drift is None
    assert cloud.events(since=seq) == [] and state.read_text() == text
    assert cloud.as_account("team-b").images(image_type="Sharing") == []

    # The real run converges: only what drifted is done again.
    again = ir.Playbook.load(book).run(cloud)
    assert statuses(again) == {"golden": "skipped", "copies": "redone", "#3": "done",
                               "#4": "redone", "#5": "done", "seen-in-su": "done"}
    assert again.summary() == "playbook replicate-and-share: 6 steps (3 done, 2 redone, " \
                              "1 skipped)"
    new_gz = check_converged(cloud, golden, su, gz)
    steps = {s.key: s for s in again.steps}
    assert steps["copies"].drift == f"the copy in gz ({gz}) was deleted"
    assert steps["copies"].detail.startswith(
        f"the copy in gz ({gz}) was deleted; copying again: replicated job j-")
    assert steps["#4"].detail == (f"{su} was unshared from team-b since; shared {su} with "
                                  "team-b again")
    assert again.outputs["copies"].copies["gz"].id == new_gz
    assert again.outputs["#3"].id == new_gz and again.outputs["seen-in-su"].id == su
    types = event_types(cloud, seq)
    assert (types["job.created"], types["image.shared"], types["image.deleted"]) == (1, 2, 0)
    assert len(cloud.jobs()) == 2  # one more job, to gz only
    assert list(cloud.jobs()[0].tasks) == ["gz"]
    # the run state holds the new copy: the state file follows the world
    record = json.loads(state.read_text())["steps"]["copies"]
    assert len(next(iter(record["runs"].values()))["jobs"]) == 2

    # A third run changes nothing.
    seq = last_seq(cloud)
    third = ir.Playbook.load(book).run(cloud)
    assert [s.status for s in third.steps] == ["skipped"] * 6
    assert third.output_ids() == again.output_ids()
    assert cloud.events(since=seq) == [] and len(cloud.jobs()) == 2
    dry = ir.Playbook.load(book).run(cloud, dry_run=True)
    assert [s.status for s in dry.steps] == ["skipped"] * 6
    assert dry.steps[5].detail.startswith(f"still holds: {su} as team-b: ")


def test_the_issue_through_the_command_line(home: Path, book: Path) -> None:
    cli(home, "accounts", "add", "team-b")
    first = json.loads(cli(home, "--json", "run", str(book)).stdout)
    golden, gz, su = (first["outputs"][k] for k in ("golden", "#3", "#4"))
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        seq = last_seq(cloud)
    cli(home, "unshare", gz, "team-b")
    cli(home, "unshare", su, "team-b")
    cli(home, "delete", gz)
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        assert cloud.as_account("team-b").images(image_type="Sharing") == []

    dry = cli(home, "run", str(book), "--dry-run")
    lines = dry.stdout.splitlines()
    assert [ln.split()[:3] for ln in lines[:6]] == [
        ["skipped", "golden", "import"], ["dry-run", "copies", "replicate"],
        ["dry-run", "#3", "share"], ["dry-run", "#4", "share"], ["dry-run", "#5", "assert"],
        ["dry-run", "seen-in-su", "assert"]]
    assert f"would redo: the copy in gz ({gz}) was deleted" in lines[1]
    assert f"would redo: {su} was unshared from team-b since" in lines[3]
    assert lines[6] == "playbook replicate-and-share: 6 steps (1 skipped, 5 dry-run)"

    again = cli(home, "run", str(book))
    lines = again.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines[:6]] == [
        ["skipped", "golden"], ["redone", "copies"], ["done", "#3"], ["redone", "#4"],
        ["done", "#5"], ["done", "seen-in-su"]]
    assert f"the copy in gz ({gz}) was deleted; copying again" in lines[1]
    assert lines[6] == "playbook replicate-and-share: 6 steps (3 done, 2 redone, 1 skipped)"
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        check_converged(cloud, golden, su, gz)
        types = event_types(cloud, seq)
        assert types["job.created"] == 1 and types["image.shared"] == 2
        assert types["image.deleted"] == 1  # the hand deletion only

    third = json.loads(cli(home, "--json", "run", str(book)).stdout)
    assert [s["status"] for s in third["steps"]] == ["skipped"] * 6
    assert all(s["drift"] is None for s in third["steps"])
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        assert len(cloud.jobs()) == 2 and len(copies_of(cloud, golden)["gz"]) == 1


ASSERTING = """
    name: asserting
    vars: {image: m-00000000}
    steps:
      - assert: {image: "${vars.image}", status: Available, region: bj}
    """


def test_an_assert_on_a_deleted_image_fails(cloud: ir.Cloud, home: Path,
                                            tmp_path: Path) -> None:
    src = make_dense(tmp_path / "a.raw", 64 * KiB)
    image = cloud.import_image(src, region="bj", name="a")
    path = write(tmp_path / "asserting.yaml", ASSERTING)
    ok = ir.Playbook.load(path).run(cloud, vars={"image": image.id})
    assert statuses(ok) == {"#1": "done"}
    assert statuses(ir.Playbook.load(path).run(cloud, vars={"image": image.id})) == {
        "#1": "skipped"}
    cloud.delete_image(image.id)
    for dry_run in (True, False):
        with pytest.raises(PlaybookAssertionError) as info:
            ir.Playbook.load(path).run(cloud, vars={"image": image.id}, dry_run=dry_run)
        err = info.value
        assert err.code == "Playbook.AssertionFailed"
        assert err.message == (f"{path}:4: step #1 (assert): image {image.id} as default: it "
                               "is gone (deleted, or default cannot see it)")
    proc = cli(home, "run", str(path), "--var", f"image={image.id}", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: Playbook.AssertionFailed: ")
    assert f"image {image.id} as default: it is gone" in proc.stderr


def test_an_assert_on_a_copy_gone_from_its_job_fails(cloud: ir.Cloud, tmp_path: Path) -> None:
    """An assert whose image reference no longer resolves (the copy left its job's copies)
    fails; it is not skipped because it held before."""
    cloud.add_account("team-b")
    path = small_book(tmp_path, "gone", """
          - id: copies
            replicate: {image: "${a.id}", to: [gz]}
          - id: check
            assert: {image: "${copies.copies.gz.id}", status: Available}
          - delete: {image: "${copies.copies.gz.id}"}
        """)
    first = ir.Playbook.load(path).run(cloud)
    assert [s.status for s in first.steps] == ["done"] * 4
    # the playbook deletes its copy itself: the copy is not made again, the assert fails
    with pytest.raises(PlaybookAssertionError) as info:
        ir.Playbook.load(path).run(cloud)
    assert info.value.message.startswith(f"{path}:7: step check (assert): "
                                         "${copies.copies.gz.id}: ")
    assert "what it checks is gone" in info.value.message
    assert len(cloud.jobs()) == 1 and copies_of(cloud, first.outputs["a"].id) == {}


def test_a_deleted_import_is_imported_again_and_what_uses_it_follows(
        cloud: ir.Cloud, book: Path) -> None:
    cloud.add_account("team-b")
    first = ir.Playbook.load(book).run(cloud)
    old = first.outputs["golden"].id
    cloud.delete_image(old)  # its copies stay: they are images of their own
    again = ir.Playbook.load(book).run(cloud)
    assert statuses(again) == {"golden": "redone", "copies": "done", "#3": "done",
                               "#4": "done", "#5": "done", "seen-in-su": "done"}
    golden = again.outputs["golden"]
    assert golden.id != old and golden.name == "golden" and golden.region == "bj"
    assert again.steps[0].drift == f"image {old} (golden, bj) was deleted"
    assert again.steps[0].detail.startswith(f"image {old} (golden, bj) was deleted; imported "
                                            f"again: {golden.id} (golden, bj, ")
    assert copies_of(cloud, golden.id).keys() == {"gz", "su"}
    third = ir.Playbook.load(book).run(cloud)
    assert [s.status for s in third.steps] == ["skipped"] * 6
    assert len(cloud.images(region="bj", image_type="Custom")) == 1


def test_a_rename_and_an_unshare_undone_by_hand_are_done_again(cloud: ir.Cloud,
                                                               tmp_path: Path) -> None:
    cloud.add_account("team-b")
    cloud.add_account("team-c")
    path = small_book(tmp_path, "names", """
          - id: named
            rename: {image: "${a.id}", name: golden-v2}
          - id: private
            unshare: {image: "${a.id}", accounts: [team-b]}
        """)
    first = ir.Playbook.load(path).run(cloud)
    image = first.outputs["a"].id
    cloud.rename_image(image, "someone-else")
    cloud.share(image, ["team-b", "team-c"])
    seq = last_seq(cloud)
    dry = ir.Playbook.load(path).run(cloud, dry_run=True)
    assert [s.status for s in dry.steps] == ["skipped", "dry-run", "dry-run"]
    assert dry.steps[1].drift == f"{image} was renamed to someone-else since"
    assert dry.steps[2].drift == f"{image} was shared with team-b since"
    assert cloud.events(since=seq) == []
    again = ir.Playbook.load(path).run(cloud)
    assert [s.status for s in again.steps] == ["skipped", "redone", "redone"]
    assert cloud.image(image).name == "golden-v2"
    assert cloud.shared_users(image) == ["team-c"]  # team-c is not the playbook's business
    assert [s.status for s in ir.Playbook.load(path).run(cloud).steps] == ["skipped"] * 3


def test_what_a_later_step_removed_is_not_made_again(cloud: ir.Cloud,
                                                      tmp_path: Path) -> None:
    """A copy that a later step of the playbook deletes, or cancels, is not copied again on
    a re-run (the step would only remove it again); a copy deleted by hand is."""
    cloud.add_account("team-b")
    path = small_book(tmp_path, "undo", """
          - id: copies
            replicate: {image: "${a.id}", to: [gz, su, hk]}
          - id: named
            rename: {image: "${copies.tasks.su.dest_image_id}", name: su-copy}
          - delete: {image: "${copies.tasks.su.dest_image_id}"}
          - delete: {image: "${copies.tasks.hk.dest_image_id}"}
        """)
    cloud.add_region("hk")
    first = ir.Playbook.load(path).run(cloud)
    assert {s.status for s in first.steps} == {"done"}
    golden = first.outputs["a"].id
    assert copies_of(cloud, golden).keys() == {"gz"}
    seq = last_seq(cloud)
    again = ir.Playbook.load(path).run(cloud)
    assert statuses(again) == {"a": "skipped", "copies": "skipped", "named": "skipped",
                               "#4": "skipped", "#5": "skipped"}
    su = first.outputs["copies"].tasks["su"].dest_image_id
    assert again.steps[2].detail == f"{su} is gone: step #4 removed it"
    assert cloud.events(since=seq) == [] and len(cloud.jobs()) == 1
    # deleting the copy in gz by hand is drift: it is copied again; su and hk are not
    gz = first.outputs["copies"].tasks["gz"].dest_image_id
    cloud.delete_image(gz)
    third = ir.Playbook.load(path).run(cloud)
    assert statuses(third)["copies"] == "redone"
    assert third.steps[1].drift == f"the copy in gz ({gz}) was deleted"
    assert copies_of(cloud, golden).keys() == {"gz"} and len(cloud.jobs()) == 2
    assert [s.status for s in ir.Playbook.load(path).run(cloud).steps] == ["skipped"] * 5


def test_each_step_converges_where_it_stands(cloud: ir.Cloud, tmp_path: Path) -> None:
    """A playbook that renames twice: each rename holds where it stands, so a re-run renames
    again (twice), and says which other step renames the image."""
    path = small_book(tmp_path, "twice", """
          - rename: {image: "${a.id}", name: first}
          - assert: {image: "${a.id}", name: first}
          - rename: {image: "${a.id}", name: second}
        """)
    first = ir.Playbook.load(path).run(cloud)
    image = first.outputs["a"].id
    again = ir.Playbook.load(path).run(cloud)
    assert [s.status for s in again.steps] == ["skipped", "redone", "done", "redone"]
    assert again.steps[1].drift == f"{image} was renamed to second since (step #4 renames it)"
    assert again.steps[3].drift == f"{image} was renamed to first since (step #2 renames it)"
    assert cloud.image(image).name == "second"
