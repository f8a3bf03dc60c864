"""Events (callbacks and the audit log) and policies (add_rule)."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import CHUNK, Collector, assert_error, chunk_stats, make_dense

import imagerelay as ir

STORED_TYPES = {
    "image.created", "image.available", "image.create_failed", "image.renamed", "image.deleted",
    "image.shared", "image.unshared", "job.created", "task.started", "task.completed",
    "task.failed", "task.cancelled", "job.finished",
}


def _check_event(e: ir.Event) -> None:
    assert isinstance(e, ir.Event)
    assert isinstance(e.seq, int)
    assert isinstance(e.time, datetime)
    assert e.time.tzinfo is not None and e.time.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - e.time) < timedelta(minutes=5)
    assert isinstance(e.type, str) and e.type
    assert isinstance(e.detail, dict)
    assert isinstance(e.account, str)


# -- callbacks --------------------------------------------------------------------------
@pytest.mark.both_catalogs
def test_callbacks_receive_events(cloud: ir.Cloud, files: Path) -> None:
    every = Collector()
    available = Collector()
    cloud.on("*", every)
    cloud.on("image.available", available)
    src = make_dense(files / "a.raw", 5 * CHUNK)
    image = cloud.import_image(src, region="bj", name="a")

    e = available.wait_for(lambda e: e.image_id == image.id)
    _check_event(e)
    assert e.type == "image.available"
    assert e.seq > 0
    assert e.region == "bj"
    assert e.account == "default"
    every.wait_for(lambda e: e.type == "image.available" and e.image_id == image.id)
    created = every.wait_for(lambda e: e.type == "image.created" and e.image_id == image.id)
    _check_event(created)
    assert created.detail.get("name") == "a"
    assert created.seq < e.seq
    assert all(x.type == "image.available" for x in available.events)
    # the callback's events are those of the log
    logged = {x.seq: x for x in cloud.events(image_id=image.id)}
    assert logged[e.seq].type == e.type and logged[created.seq].type == "image.created"


def test_callbacks_run_on_another_thread_and_may_call_the_api(cloud: ir.Cloud,
                                                              files: Path) -> None:
    seen: dict[str, object] = {}
    done = threading.Event()

    def callback(event: ir.Event) -> None:
        seen["thread"] = threading.get_ident()
        seen["status"] = cloud.image(event.image_id).status
        done.set()

    cloud.on("image.available", callback)
    cloud.import_image(make_dense(files / "a.raw", CHUNK), region="bj", name="a")
    assert done.wait(10)
    assert seen["thread"] != threading.get_ident()
    assert seen["status"] == "Available"


def test_raising_callback_does_not_stop_the_engine(cloud: ir.Cloud, files: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def broken(event: ir.Event) -> None:
        calls.append(event.type)
        raise RuntimeError("callback bug")

    cloud.on("*", broken)
    good = Collector()
    cloud.on("image.available", good)
    src = make_dense(files / "a.raw", 2 * CHUNK)
    first = cloud.import_image(src, region="bj", name="first")
    good.wait_for(lambda e: e.image_id == first.id)
    second = cloud.import_image(src, region="bj", name="second")
    good.wait_for(lambda e: e.image_id == second.id)
    assert second.status == "Available"
    first.rename("renamed")
    job = first.replicate("gz")
    job.wait(timeout=60)
    assert job.state == "Completed"
    good.wait_for(lambda e: e.image_id == job.tasks["gz"].dest_image_id)
    assert calls.count("image.available") >= 3
    assert "image.renamed" in calls


def test_handle_remove_stops_delivery(cloud: ir.Cloud, files: Path) -> None:
    removed = Collector()
    always = Collector()
    handle = cloud.on("*", removed)
    cloud.on("*", always)
    src = make_dense(files / "a.raw", CHUNK)
    first = cloud.import_image(src, region="bj", name="first")
    removed.wait_for(lambda e: e.type == "image.available" and e.image_id == first.id)
    handle.remove()
    handle.remove()  # idempotent
    second = cloud.import_image(src, region="bj", name="second")
    always.wait_for(lambda e: e.type == "image.available" and e.image_id == second.id)
    time.sleep(0.2)
    assert second.id not in {e.image_id for e in removed.events}


def test_progress_events_only_for_callbacks(open_cloud, home: Path, files: Path) -> None:
    cloud = open_cloud(bandwidth=4 * 2**20)
    progress = Collector()
    cloud.on("task.progress", progress)
    src = make_dense(files / "p.raw", 3 * 2**20)
    image = cloud.import_image(src, region="bj", name="p")
    job = image.replicate("gz")
    e = progress.wait_for(lambda e: e.job_id == job.id, timeout=30)
    _check_event(e)
    assert e.region == "gz"
    assert e.image_id == job.tasks["gz"].dest_image_id
    assert "bytes_done" in e.detail and "bytes_total" in e.detail
    job.wait(timeout=60)
    assert "task.progress" not in {x.type for x in cloud.events()}


# -- the audit log ----------------------------------------------------------------------
@pytest.mark.both_catalogs
def test_events_audit_log(cloud: ir.Cloud, files: Path) -> None:
    cloud.add_account("bob")
    src = make_dense(files / "a.raw", 4 * CHUNK)
    a = cloud.import_image(src, region="bj", name="a")
    b = cloud.import_image(src, region="bj", name="b")
    a.share("bob")
    a.unshare("bob")
    a.rename("a2")
    job = a.replicate(["gz", "su"])
    job.wait(timeout=60)
    b.delete()

    events = cloud.events()
    for e in events:
        _check_event(e)
        assert e.type in STORED_TYPES
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    times = [e.time for e in events]
    assert times == sorted(times)

    of_a = cloud.events(image_id=a.id)
    assert {e.image_id for e in of_a} == {a.id}
    types_a = [e.type for e in of_a]
    for t in ("image.created", "image.available", "image.shared", "image.unshared",
              "image.renamed", "job.created", "job.finished"):
        assert t in types_a, types_a
    assert types_a.index("image.created") < types_a.index("image.available") < types_a.index(
        "image.shared") < types_a.index("image.unshared") < types_a.index("image.renamed")
    shared = next(e for e in of_a if e.type == "image.shared")
    assert shared.detail.get("account") == "bob"
    renamed = next(e for e in of_a if e.type == "image.renamed")
    assert renamed.detail == {"old": "a", "new": "a2"}
    created_job = next(e for e in of_a if e.type == "job.created")
    assert created_job.job_id == job.id
    finished = next(e for e in of_a if e.type == "job.finished")
    assert finished.detail.get("state") == "Completed"

    for region, task in job.tasks.items():
        of_copy = [e.type for e in cloud.events(image_id=task.dest_image_id)]
        for t in ("image.created", "task.started", "task.completed", "image.available"):
            assert t in of_copy, (region, of_copy)
        assert of_copy.index("task.started") < of_copy.index("task.completed")
    assert [e.type for e in cloud.events(image_id=b.id)][-1] == "image.deleted"

    # since: strictly after that sequence number
    middle = events[len(events) // 2].seq
    later = cloud.events(since=middle)
    assert [e.seq for e in later] == [s for s in seqs if s > middle]
    assert cloud.events(since=seqs[-1]) == []
    assert [e.seq for e in cloud.events(since=middle, image_id=a.id)] == [
        e.seq for e in of_a if e.seq > middle]
    assert cloud.events(image_id="m-00000000") == []


# -- policies ---------------------------------------------------------------------------
@pytest.fixture
def ready(cloud: ir.Cloud, files: Path) -> dict:
    cloud.add_account("bob")
    src = make_dense(files / "p.raw", 4 * CHUNK)
    image = cloud.import_image(src, region="bj", name="img")
    shared = cloud.import_image(src, region="bj", name="shared")
    shared.share("bob")
    return {"image": image, "shared": shared, "src": src}


def _snapshot(cloud: ir.Cloud, home: Path) -> tuple:
    return (sorted((i.id, i.name, i.status) for i in cloud.images()),
            [(e.seq, e.type) for e in cloud.events()], chunk_stats(home, "bj"),
            chunk_stats(home, "gz"), [j.id for j in cloud.jobs()],
            {i.id: cloud.shared_users(i.id) for i in cloud.images(image_type="Custom")})


def test_policy_rejects_every_action(cloud: ir.Cloud, home: Path, ready: dict) -> None:
    image, shared = ready["image"], ready["shared"]
    requests: list[ir.PolicyRequest] = []

    def no(request: ir.PolicyRequest) -> str:
        requests.append(request)
        return f"change freeze: {request.action} is not allowed"

    handle = cloud.add_rule(no)
    before = _snapshot(cloud, home)
    calls = {
        "import": lambda: cloud.import_image(ready["src"], region="bj", name="new"),
        "share": lambda: cloud.share(image.id, "bob"),
        "unshare": lambda: cloud.unshare(shared.id, "bob"),
        "rename": lambda: cloud.rename_image(image.id, "other"),
        "delete": lambda: cloud.delete_image(image.id),
        "replicate": lambda: cloud.replicate(image.id, ["gz", "su"]),
    }
    for action, call in calls.items():
        with pytest.raises(ir.ValidationError) as excinfo:
            call()
        assert_error(excinfo, ir.ValidationError, "PolicyViolation", 403)
        assert f"change freeze: {action} is not allowed" in excinfo.value.message
    assert [r.action for r in requests] == list(calls)
    assert _snapshot(cloud, home) == before
    # reads are not policed
    cloud.image(image.id).export(ready["src"].with_suffix(".out"))
    cloud.images()
    handle.remove()
    cloud.rename_image(image.id, "other")
    assert cloud.image(image.id).name == "other"


def test_policy_that_raises_rejects(cloud: ir.Cloud, home: Path, ready: dict) -> None:
    def broken(request: ir.PolicyRequest) -> None:
        raise KeyError("oops")

    cloud.add_rule(broken)
    before = _snapshot(cloud, home)
    for call in (lambda: cloud.rename_image(ready["image"].id, "x"),
                 lambda: cloud.import_image(ready["src"], region="bj", name="x"),
                 lambda: cloud.replicate(ready["image"].id, "gz")):
        with pytest.raises(ir.ValidationError) as excinfo:
            call()
        assert_error(excinfo, ir.ValidationError, "PolicyViolation", 403)
    assert _snapshot(cloud, home) == before


def test_policy_request_fields(cloud: ir.Cloud, ready: dict) -> None:
    image, shared = ready["image"], ready["shared"]
    seen: list[ir.PolicyRequest] = []

    def record(request: ir.PolicyRequest) -> None:
        seen.append(request)

    cloud.add_rule(record)
    cloud.import_image(ready["src"], region="gz", name="imported")
    cloud.share(image.id, ["bob"])
    cloud.unshare(image.id, "bob")
    cloud.rename_image(image.id, "renamed")
    job = cloud.replicate(image.id, ["su", "gz"], name="copyname")
    job.wait(timeout=60)
    cloud.unshare(shared.id, "bob")
    cloud.delete_image(shared.id)
    by_action = {r.action: r for r in seen}
    assert [r.action for r in seen] == ["import", "share", "unshare", "rename", "replicate",
                                        "unshare", "delete"]
    assert all(r.account == "default" for r in seen)
    imp = by_action["import"]
    assert imp.image is None and imp.name == "imported"
    sh = seen[1]
    assert isinstance(sh.image, ir.Image) and sh.image.id == image.id
    assert sh.accounts == ["bob"]
    assert seen[2].accounts == ["bob"] and seen[2].image.id == image.id
    rn = by_action["rename"]
    assert rn.image.id == image.id and rn.image.name == "img" and rn.name == "renamed"
    rp = by_action["replicate"]
    assert rp.image.id == image.id and sorted(rp.to) == ["gz", "su"] and rp.name == "copyname"
    dl = by_action["delete"]
    assert dl.image.id == shared.id
    assert "PolicyRequest" in repr(dl)


def test_policy_by_account_and_region(cloud: ir.Cloud, ready: dict) -> None:
    """A realistic policy: bob may not import, nobody may replicate to su."""
    def policy(request: ir.PolicyRequest) -> str | None:
        if request.action == "import" and request.account == "bob":
            return "bob may not import"
        if request.action == "replicate" and "su" in request.to:
            return "su is closed"
        return None

    cloud.add_rule(policy)
    with pytest.raises(ir.ValidationError) as excinfo:
        cloud.as_account("bob").import_image(ready["src"], region="bj", name="x")
    assert excinfo.value.code == "PolicyViolation"
    assert "bob may not import" in str(excinfo.value)
    cloud.import_image(ready["src"], region="bj", name="x")
    with pytest.raises(ir.ValidationError) as excinfo:
        cloud.replicate(ready["image"].id, ["gz", "su"])
    assert "su is closed" in excinfo.value.message
    cloud.replicate(ready["image"].id, ["gz"]).wait(timeout=60)


def test_rules_are_checked_before_policies(cloud: ir.Cloud, ready: dict) -> None:
    calls: list[str] = []
    cloud.add_rule(lambda r: calls.append(r.action) or "no")
    with pytest.raises(ir.ValidationError) as excinfo:
        cloud.replicate(ready["image"].id, [])
    assert excinfo.value.code == "Image.DestRegionIsEmpty"
    assert calls == []


def test_the_core_lists_every_event_type_once() -> None:
    # One list (src/events.hpp): what users subscribe to by name and docs/events.md lists.
    from imagerelay import _core

    types = _core.event_types()
    assert len(types) == len(set(types))
    assert STORED_TYPES | {"image.digest", "image.digest_failed", "image.damaged",
                           "image.repaired", "task.progress", "region.removed",
                           "region.moved", "account.removed"} == set(types)
