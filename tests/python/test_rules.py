"""Rules of DESIGN.md §2: every error code the calls can raise, with all failed rules listed
in ``.problems``, and nothing written by a rejected call."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CHUNK, assert_error, make_dense

import imagerelay as ir

# -- snapshot of everything a call could write ------------------------------------------


class Snapshot:
    """What the catalog and the stores hold; equal before and after a rejected call."""

    def __init__(self, cloud: ir.Cloud, home: Path) -> None:
        self.accounts = sorted(a.id for a in cloud.accounts)
        self.regions = sorted((r.id, r.name, r.store) for r in cloud.regions)
        self.images = {
            a: sorted((i.id, i.name, i.region, i.type, i.status)
                      for i in cloud.as_account(a).images())
            for a in self.accounts
        }
        self.shares = {
            i[0]: sorted(cloud.as_account(a).shared_users(i[0]))
            for a, imgs in self.images.items() for i in imgs if i[3] == "Custom"
        }
        self.jobs = {a: sorted(j.id for j in cloud.as_account(a).jobs()) for a in self.accounts}
        events = cloud.events()
        self.events = [(e.seq, e.type, e.image_id) for e in events]
        self.created = [e for e in events if e.type == "image.created"]
        regions_dir = home / "regions"
        self.files = sorted(str(p.relative_to(home)) for p in regions_dir.rglob("*")
                            if p.is_file() and not p.name.startswith("."))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Snapshot) and vars(self) == vars(other)

    def diff(self, other: Snapshot) -> dict[str, tuple[object, object]]:
        return {k: (v, vars(other)[k]) for k, v in vars(self).items() if vars(other)[k] != v}


@pytest.fixture
def unchanged(cloud: ir.Cloud, home: Path) -> Callable[[], None]:
    """Call it after some bad calls: fails if anything changed since the last call."""
    state = {"snap": None}

    def check() -> None:
        now = Snapshot(cloud, home)
        before = state["snap"]
        if before is not None:
            assert now == before, before.diff(now)
        state["snap"] = now

    return check


def expect(cls: type, code: str, status: int, call: Callable[[], object], *,
           problems: list[str] | None = None) -> ir.ImageRelayError:
    with pytest.raises(ir.ImageRelayError) as excinfo:
        call()
    assert_error(excinfo, cls, code, status, problems=problems)
    assert isinstance(excinfo.value, ir.ImageRelayError)
    return excinfo.value


@pytest.fixture
def world(cloud: ir.Cloud, files: Path) -> dict[str, object]:
    """default owns `img` (bj) and `other` (gz); accounts bob and carol; a System image."""
    cloud.add_account("bob")
    cloud.add_account("carol")
    src = make_dense(files / "w.raw", 6 * CHUNK)
    img = cloud.import_image(src, region="bj", name="img")
    other = cloud.import_image(src, region="gz", name="other")
    system = cloud.add_system_image(src, region="bj", name="sys")
    return {"img": img, "other": other, "system": system, "src": src}


# -- sharing ----------------------------------------------------------------------------
def test_share_rules(cloud: ir.Cloud, world: dict, unchanged: Callable[[], None]) -> None:
    img, system = world["img"].id, world["system"].id
    cloud.share(img, "bob")
    unchanged()
    expect(ir.ValidationError, "Image.AccountListIsEmpty", 400, lambda: cloud.share(img, []))
    expect(ir.ValidationError, "Image.CannotShareToOwner", 403,
           lambda: cloud.share(img, ["default"]))
    expect(ir.ConflictError, "Image.AccountHasBeenShared", 409, lambda: cloud.share(img, "bob"))
    expect(ir.ValidationError, "Image.InvalidAccount", 400, lambda: cloud.share(img, ["ghost"]))
    expect(ir.ValidationError, "Image.InvalidAccount", 400, lambda: cloud.share(img, ["A B"]))
    expect(ir.ValidationError, "Image.UnCustomImageCannotBeShared", 403,
           lambda: cloud.share(system, ["bob"]), problems=["Image.UnCustomImageCannotBeShared"])
    # a System image has no owner: the type rule answers, never AccessDenied
    expect(ir.ValidationError, "Image.UnCustomImageCannotBeShared", 403,
           lambda: cloud.as_account("bob").share(system, ["carol"]),
           problems=["Image.UnCustomImageCannotBeShared"])
    unchanged()
    assert cloud.shared_users(img) == ["bob"]


def test_share_several_failures_at_once(cloud: ir.Cloud, world: dict,
                                        unchanged: Callable[[], None]) -> None:
    img, system = world["img"].id, world["system"].id
    cloud.share(img, "bob")
    unchanged()
    err = expect(ir.ValidationError, "Image.InvalidAccount", 400,
                 lambda: cloud.share(img, ["ghost", "default", "bob", "carol"]),
                 problems=["Image.InvalidAccount", "Image.CannotShareToOwner",
                           "Image.AccountHasBeenShared"])
    messages = " ".join(m for _, m in err.problems)
    assert "ghost" in messages and "bob" in messages
    # System image and empty list: both type and list rules
    expect(ir.ValidationError, "Image.UnCustomImageCannotBeShared", 403,
           lambda: cloud.share(system, []),
           problems=["Image.UnCustomImageCannotBeShared", "Image.AccountListIsEmpty"])
    # duplicates in the list are folded: carol is not shared (the call failed as a whole)
    unchanged()
    assert cloud.shared_users(img) == ["bob"]
    cloud.share(img, ["carol", "carol"])
    assert sorted(cloud.shared_users(img)) == ["bob", "carol"]


def test_unshare_rules(cloud: ir.Cloud, world: dict, unchanged: Callable[[], None]) -> None:
    img, system = world["img"].id, world["system"].id
    cloud.share(img, "bob")
    unchanged()
    expect(ir.ConflictError, "Image.AccountNotShared", 409, lambda: cloud.unshare(img, "carol"))
    expect(ir.ValidationError, "Image.AccountListIsEmpty", 400, lambda: cloud.unshare(img, []))
    expect(ir.ValidationError, "Image.InvalidAccount", 400, lambda: cloud.unshare(img, "ghost"))
    expect(ir.ValidationError, "Image.InvalidAccount", 400,
           lambda: cloud.unshare(img, ["ghost", "carol", "bob"]),
           problems=["Image.InvalidAccount", "Image.AccountNotShared"])
    # a System image has no shares: the type rule, and bob's share is missing too
    expect(ir.ValidationError, "Image.UnCustomImageCannotBeShared", 403,
           lambda: cloud.unshare(system, "bob"),
           problems=["Image.UnCustomImageCannotBeShared", "Image.AccountNotShared"])
    expect(ir.ValidationError, "Image.UnCustomImageCannotBeShared", 403,
           lambda: cloud.as_account("bob").unshare(system, []),
           problems=["Image.UnCustomImageCannotBeShared", "Image.AccountListIsEmpty"])
    unchanged()
    assert cloud.shared_users(img) == ["bob"]


def test_share_quota_per_image(open_cloud: Callable[..., ir.Cloud], home: Path,
                               files: Path) -> None:
    cloud = open_cloud(max_share_accounts=2)
    for a in ("a1", "a2", "a3", "a4"):
        cloud.add_account(a)
    img = cloud.import_image(make_dense(files / "q.raw", CHUNK), region="bj", name="q").id
    before = Snapshot(cloud, home)
    expect(ir.QuotaExceededError, "Image.ExceedSharedToUserNumQuota", 413,
           lambda: cloud.share(img, ["a1", "a2", "a3"]),
           problems=["Image.ExceedSharedToUserNumQuota"])
    assert Snapshot(cloud, home) == before  # no partial share
    cloud.share(img, ["a1", "a2"])
    before = Snapshot(cloud, home)
    expect(ir.QuotaExceededError, "Image.ExceedSharedToUserNumQuota", 413,
           lambda: cloud.share(img, "a3"))
    # quota and an unknown account: the InvalidAccount rule comes first
    expect(ir.ValidationError, "Image.InvalidAccount", 400,
           lambda: cloud.share(img, ["ghost", "a3"]),
           problems=["Image.InvalidAccount", "Image.ExceedSharedToUserNumQuota"])
    assert Snapshot(cloud, home) == before
    cloud.unshare(img, "a1")
    cloud.share(img, "a3")
    assert sorted(cloud.shared_users(img)) == ["a2", "a3"]


def test_accepted_shares_quota_per_account_and_region(open_cloud: Callable[..., ir.Cloud],
                                                      home: Path, files: Path) -> None:
    cloud = open_cloud(max_accepted_shares=1)
    cloud.add_account("bob")
    cloud.add_account("carol")
    src = make_dense(files / "q.raw", CHUNK)
    first = cloud.import_image(src, region="bj", name="one").id
    second = cloud.import_image(src, region="bj", name="two").id
    elsewhere = cloud.import_image(src, region="gz", name="three").id
    cloud.share(first, "bob")
    before = Snapshot(cloud, home)
    expect(ir.QuotaExceededError, "Image.ExceedAcceptSharedImageNumQuota", 413,
           lambda: cloud.share(second, "bob"),
           problems=["Image.ExceedAcceptSharedImageNumQuota"])
    # another owner's image in the same region counts for bob too
    carol = cloud.as_account("carol")
    carols = carol.import_image(src, region="bj", name="c").id
    before = Snapshot(cloud, home)
    expect(ir.QuotaExceededError, "Image.ExceedAcceptSharedImageNumQuota", 413,
           lambda: carol.share(carols, "bob"))
    assert Snapshot(cloud, home) == before
    cloud.share(second, "carol")  # carol has accepted nothing yet
    cloud.share(elsewhere, "bob")  # the quota is per region
    cloud.unshare(first, "bob")
    cloud.share(second, "bob")
    assert sorted(i.id for i in cloud.as_account("bob").images(image_type="Sharing")) == sorted(
        [second, elsewhere])


# -- delete -----------------------------------------------------------------------------
def test_delete_rules(cloud: ir.Cloud, world: dict, unchanged: Callable[[], None]) -> None:
    img, system = world["img"].id, world["system"].id
    cloud.share(img, ["bob", "carol"])
    unchanged()
    err = expect(ir.ConflictError, "Image.ImageHasBeenSharedToOthers", 409,
                 lambda: cloud.delete_image(img), problems=["Image.ImageHasBeenSharedToOthers"])
    assert img in err.message
    expect(ir.ValidationError, "Image.UnCustomImageCannotBeDeleted", 403,
           lambda: cloud.delete_image(system), problems=["Image.UnCustomImageCannotBeDeleted"])
    expect(ir.ValidationError, "Image.UnCustomImageCannotBeDeleted", 403,
           lambda: cloud.as_account("bob").delete_image(system),
           problems=["Image.UnCustomImageCannotBeDeleted"])
    expect(ir.PermissionDeniedError, "AccessDenied", 403,
           lambda: cloud.as_account("bob").delete_image(img))
    unchanged()
    cloud.unshare(img, ["bob", "carol"])
    cloud.delete_image(img)


def test_creating_image_rules(cloud: ir.Cloud, home: Path, files: Path) -> None:
    """While Creating: delete -> CreatingImageCannotBeDeleted; share/rename/replicate/export
    -> ImageStatusForbidden."""
    cloud.add_account("bob")
    src = make_dense(files / "big.raw", 8 * 2**20)
    for _attempt in range(5):
        image = cloud.import_image(src, region="bj", name="slow", wait=False)
        errors = {}
        calls = {
            "delete": lambda: cloud.delete_image(image.id),
            "share": lambda: cloud.share(image.id, "bob"),
            "rename": lambda: cloud.rename_image(image.id, "renamed"),
            "replicate": lambda: cloud.replicate(image.id, "gz"),
            "export": lambda: cloud.export_image(image.id, files / "early.out"),
        }
        for what, call in calls.items():
            try:
                call()
                errors[what] = None
            except ir.ImageRelayError as e:
                errors[what] = e
        creating_seen = isinstance(errors["delete"], ir.ImageBusyError)
        if creating_seen and all(errors.values()):
            break
        image.wait(timeout=30)
        if errors["delete"] is None:
            continue  # the import won the race: the image is gone, try again
        cloud.wait_idle(timeout=30)
        try:
            cloud.unshare(image.id, "bob")
        except ir.ImageRelayError:
            pass
    else:
        pytest.fail(f"never caught the image while Creating: {errors}")
    e = errors["delete"]
    assert type(e) is ir.ImageBusyError
    assert e.code == "Image.CreatingImageCannotBeDeleted" and e.http_status == 409
    for what in ("share", "rename", "replicate", "export"):
        e = errors[what]
        assert type(e) is ir.ImageBusyError, (what, e)
        assert e.code == "Image.ImageStatusForbidden" and e.http_status == 409, (what, e)
    image.wait(timeout=30)
    assert image.status == "Available"
    assert image.name == "slow"
    assert cloud.shared_users(image.id) == []
    assert [j for j in cloud.jobs() if j.source_image_id == image.id] == []


# -- import -----------------------------------------------------------------------------
def test_import_size_limit(open_cloud: Callable[..., ir.Cloud], home: Path,
                           files: Path) -> None:
    cloud = open_cloud(max_import_bytes=4 * CHUNK)
    big = make_dense(files / "big.raw", 4 * CHUNK + 1)
    before = Snapshot(cloud, home)
    err = expect(ir.ValidationError, "Image.LargeImageImportForbidden", 409,
                 lambda: cloud.import_image(big, region="bj", name="big"),
                 problems=["Image.LargeImageImportForbidden"])
    assert str(4 * CHUNK) in err.message
    assert Snapshot(cloud, home) == before
    # several rules at once: unknown region first, then the name, then the size
    expect(ir.NotFoundError, "NoSuchRegion", 404,
           lambda: cloud.import_image(big, region="nope", name="1bad"),
           problems=["NoSuchRegion", "InvalidParameter", "Image.LargeImageImportForbidden"])
    assert Snapshot(cloud, home) == before
    ok = cloud.import_image(make_dense(files / "ok.raw", 4 * CHUNK), region="bj", name="ok")
    assert ok.status == "Available"


def test_import_unknown_region(cloud: ir.Cloud, files: Path,
                               unchanged: Callable[[], None]) -> None:
    src = make_dense(files / "x.raw", CHUNK)
    unchanged()
    expect(ir.NotFoundError, "NoSuchRegion", 404,
           lambda: cloud.import_image(src, region="nope", name="x"), problems=["NoSuchRegion"])
    expect(ir.NotFoundError, "NoSuchRegion", 404,
           lambda: cloud.add_system_image(src, region="nope", name="x"))
    unchanged()


@pytest.mark.parametrize("kind", ["missing", "directory", "under_a_file", "nul", "empty"])
def test_import_unreadable_source(cloud: ir.Cloud, files: Path, kind: str,
                                  unchanged: Callable[[], None]) -> None:
    regular = make_dense(files / "regular.raw", CHUNK)
    source = {
        "missing": str(files / "missing.raw"),
        "directory": str(files),
        "under_a_file": str(regular) + "/x",
        "nul": str(files / "a\x00b"),
        "empty": "",
    }[kind]
    unchanged()
    err = expect(ir.ValidationError, "InvalidParameter", 400,
                 lambda: cloud.import_image(source, region="bj", name="x"))
    if kind in ("missing", "directory", "under_a_file"):
        assert source in err.message, err.message
    expect(ir.ValidationError, "InvalidParameter", 400,
           lambda: cloud.add_system_image(source, region="bj", name="x"))
    # with an unknown region too: both problems listed, the region's first
    expect(ir.NotFoundError, "NoSuchRegion", 404,
           lambda: cloud.import_image(source, region="nope", name="x"),
           problems=["NoSuchRegion", "InvalidParameter"])
    unchanged()


@pytest.mark.parametrize("field,value", [
    ("format", "iso"), ("os_type", "x" * 65), ("os_arch", "a\x00b"), ("description", "d" * 1025),
])
def test_import_bad_fields(cloud: ir.Cloud, files: Path, field: str, value: str,
                           unchanged: Callable[[], None]) -> None:
    src = make_dense(files / "x.raw", CHUNK)
    unchanged()
    expect(ir.ValidationError, "InvalidParameter", 400,
           lambda: cloud.import_image(src, region="bj", name="x", **{field: value}))
    unchanged()


# -- names and ids ----------------------------------------------------------------------
BAD_NAMES = ["1abc", "", "a" * 66, "a b", "../x", "a\x00b", "-x", "é", "a\nb"]
BAD_IMAGE_IDS = ["m-XYZ", "../etc", "m-1234567/", "", "m-abc\x00defg", "m-ABCDEFGH",
                 "x-12345678", "m-123456789", "m-1234567", "m-1234567_", " m-12345678"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_image_names(cloud: ir.Cloud, world: dict, files: Path, name: str,
                         unchanged: Callable[[], None]) -> None:
    img = world["img"].id
    unchanged()
    expect(ir.ValidationError, "InvalidParameter", 400,
           lambda: cloud.import_image(world["src"], region="bj", name=name),
           problems=["InvalidParameter"])
    expect(ir.ValidationError, "InvalidParameter", 400,
           lambda: cloud.rename_image(img, name), problems=["InvalidParameter"])
    expect(ir.ValidationError, "InvalidParameter", 400,
           lambda: cloud.replicate(img, ["gz"], name=name), problems=["InvalidParameter"])
    unchanged()
    assert cloud.image(img).name == "img"


def test_good_image_names(cloud: ir.Cloud, world: dict) -> None:
    img = world["img"].id
    for name in ("a", "Z" + "a" * 64, "a1-_./b", "Ubuntu_22.04/x86-64"):
        cloud.rename_image(img, name)
        assert cloud.image(img).name == name


@pytest.mark.parametrize("bad", BAD_IMAGE_IDS)
def test_malformed_image_ids(cloud: ir.Cloud, world: dict, files: Path, bad: str,
                             unchanged: Callable[[], None]) -> None:
    unchanged()
    calls = [
        lambda: cloud.image(bad),
        lambda: cloud.share(bad, "bob"),
        lambda: cloud.unshare(bad, "bob"),
        lambda: cloud.shared_users(bad),
        lambda: cloud.rename_image(bad, "x"),
        lambda: cloud.delete_image(bad),
        lambda: cloud.export_image(bad, files / "out.raw"),
        lambda: cloud.replicate(bad, ["gz"]),
        lambda: cloud.cancel_copy(bad),
        lambda: cloud.as_account("bob").image(bad),
    ]
    for call in calls:
        expect(ir.ValidationError, "InvalidParameter", 400, call)
    assert not (files / "out.raw").exists()
    assert cloud.events(image_id=bad) == []
    unchanged()


# -- regions and accounts ---------------------------------------------------------------
BAD_REGION_IDS = ["../x", "/abs", "A B", "", "a", "a" * 33, "1ab", "Ab", "ab_c", "ab/c",
                  "a\x00b", "ab.", "-ab"]
BAD_ACCOUNT_IDS = ["../x", "/abs", "A B", "", "a" * 65, "-ab", "_ab", "a/b", "a\x00b", "a b",
                   "ab!", ".ab"]


@pytest.mark.parametrize("region_id", BAD_REGION_IDS)
def test_bad_region_ids(cloud: ir.Cloud, home: Path, region_id: str,
                        unchanged: Callable[[], None]) -> None:
    unchanged()
    expect(ir.ValidationError, "InvalidParameter", 400, lambda: cloud.add_region(region_id))
    expect(ir.ValidationError, "InvalidParameter", 400,
           lambda: cloud.add_region(region_id, home / "elsewhere"))
    unchanged()
    assert not (home / "elsewhere").exists()
    assert sorted(p.name for p in (home / "regions").iterdir()) == ["bj", "gz", "su"]


@pytest.mark.parametrize("account_id", BAD_ACCOUNT_IDS)
def test_bad_account_ids(cloud: ir.Cloud, account_id: str,
                         unchanged: Callable[[], None]) -> None:
    unchanged()
    expect(ir.ValidationError, "InvalidParameter", 400, lambda: cloud.add_account(account_id))
    unchanged()


def test_good_region_and_account_ids(cloud: ir.Cloud, tmp_path: Path) -> None:
    for rid in ("ab", "a" * 32, "x1-2"):
        r = cloud.add_region(rid)
        assert r.id == rid and r.name == rid
    r = cloud.add_region("ext", tmp_path / "ext-store", name="External")
    assert (r.id, r.name) == ("ext", "External")
    assert "ext-store" in r.store
    assert cloud.region("ext") == r
    r2 = cloud.add_region("uri", f"file://{tmp_path / 'uri-store'}")
    assert r2.id == "uri"
    for aid in ("A", "a" * 64, "x.y@z-w_1", "9lives"):
        a = cloud.add_account(aid)
        assert a.id == aid
    a = cloud.add_account("named", name="A Name")
    assert a.name == "A Name"
    assert {"A", "a" * 64, "x.y@z-w_1", "9lives", "named"} <= {a.id for a in cloud.accounts}


def test_duplicate_region_and_account(cloud: ir.Cloud, tmp_path: Path,
                                      unchanged: Callable[[], None]) -> None:
    cloud.add_account("bob")
    cloud.add_region("xian")
    unchanged()
    for rid in ("bj", "xian"):
        expect(ir.ConflictError, "AlreadyExists", 409, lambda: cloud.add_region(rid))
        expect(ir.ConflictError, "AlreadyExists", 409,
               lambda: cloud.add_region(rid, tmp_path / "other"))
    assert not (tmp_path / "other").exists()
    for aid in ("default", "bob"):
        expect(ir.ConflictError, "AlreadyExists", 409, lambda: cloud.add_account(aid))
    unchanged()
    assert cloud.region("bj").store == str(cloud.home.absolute() / "regions" / "bj")


def test_unusable_store(cloud: ir.Cloud, files: Path, unchanged: Callable[[], None]) -> None:
    a_file = make_dense(files / "a-file", 10)
    unchanged()
    err = expect(ir.TransferError, "Region.StoreUnavailable", 503,
                 lambda: cloud.add_region("xx", f"{a_file}/sub"))
    assert "xx" not in {r.id for r in cloud.regions}
    assert str(a_file) in err.message
    expect(ir.TransferError, "Region.StoreUnavailable", 503,
           lambda: cloud.add_region("xx", f"file://{a_file}/sub"))
    expect(ir.ValidationError, "InvalidParameter", 400, lambda: cloud.add_region("xx", "ftp://x"))
    expect(ir.ValidationError, "InvalidParameter", 400,
           lambda: cloud.add_region("xx", "file://relative/path"))
    expect(ir.ValidationError, "InvalidParameter", 400,
           lambda: cloud.add_region("xx", "/tmp/a\x00b"))
    # a bad id and a bad store: both listed
    expect(ir.ValidationError, "InvalidParameter", 400,
           lambda: cloud.add_region("X", "ftp://x"),
           problems=["InvalidParameter", "InvalidParameter"])
    unchanged()
    assert a_file.read_bytes() and a_file.is_file()


def test_a_region_takes_no_directory_of_other_files(cloud: ir.Cloud, tmp_path: Path,
                                                    unchanged: Callable[[], None]) -> None:
    """A region's directory is new, empty or a store already: never one with other files,
    which the store would fill with its folders and a sweep could delete from."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0\n")
    unchanged()
    for uri in (str(etc), f"file://{etc}"):
        err = expect(ir.TransferError, "Region.StoreUnavailable", 503,
                     lambda: cloud.add_region("xx", uri))
        assert str(etc) in err.message and "not an imagerelay store" in err.message
        assert "passwd" in err.message
    unchanged()
    assert sorted(p.name for p in etc.iterdir()) == ["passwd"]  # nothing created in it

    empty = tmp_path / "empty"
    empty.mkdir()
    cloud.add_region("e1", empty)
    marker = json.loads((empty / ".imagerelay-store").read_text())
    assert {k: marker[k] for k in ("format", "version", "place")} == {
        "format": "imagerelay-store", "version": 2, "place": f"file:{empty}"}
    assert marker["home_path"] == str(cloud.home)
    # While e1 has it, no other region takes it; removed from the catalog, the store is a
    # store still: it can be a region again.
    err = expect(ir.ValidationError, "InvalidParameter", 400,
                 lambda: cloud.add_region("e2", f"file://{empty}"))
    assert "is the store of region e1" in err.message
    cloud.remove_region("e1")
    cloud.add_region("e2", f"file://{empty}")


def test_a_relative_store_path_is_taken_from_where_the_region_is_added(
        home: Path, files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept relative, it named another directory whenever the home was opened from
    elsewhere: the image's manifest "missing", the image set NotAvailable (found by trying
    the command line from two directories)."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(here)
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        region = cloud.add_region("rel", "stores/rel")
        assert region.store == str(here / "stores" / "rel")
        image = cloud.import_image(make_dense(files / "a.raw", 3 * CHUNK), region="rel",
                                   name="a")
    monkeypatch.chdir(elsewhere)
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        assert cloud.region("rel").store == str(here / "stores" / "rel")
        assert cloud.verify_image(image.id) == image.digest
        assert cloud.image(image.id).status == "Available"
    assert list(elsewhere.iterdir()) == []


def test_stores_of_the_last_release_are_adopted(home: Path, files: Path) -> None:
    """A home made before stores had a marker: its regions work on and get one; a store
    directory of that release can be added as a region."""
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        image = cloud.import_image(make_dense(files / "a.raw", 3 * CHUNK), region="bj", name="a")
    for region in ("bj", "gz", "su"):
        (home / "regions" / region / ".imagerelay-store").unlink()
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        job = cloud.replicate(image.id, ["gz"])
        job.wait(timeout=60)
        assert job.state == "Completed"
        cloud.import_image(make_dense(files / "b.raw", 3 * CHUNK), region="bj", name="b")
        old_store = files / "old-store"  # an empty store of that release: no marker
        for sub in ("chunks", "images", "manifests"):
            (old_store / sub).mkdir(parents=True)
        cloud.add_region("old", old_store)
        assert (old_store / ".imagerelay-store").is_file()
    for region in ("bj", "gz"):
        assert (home / "regions" / region / ".imagerelay-store").is_file(), region


def test_not_found_codes(cloud: ir.Cloud, home: Path, files: Path) -> None:
    src = make_dense(files / "x.raw", CHUNK)
    expect(ir.NotFoundError, "NoSuchRegion", 404, lambda: cloud.images(region="nope"))
    expect(ir.NotFoundError, "NoSuchRegion", 404, lambda: cloud.region("nope"))
    expect(ir.NotFoundError, "NoSuchRegion", 404,
           lambda: cloud.import_image(src, region="nope", name="x"))
    expect(ir.NotFoundError, "NoSuchAccount", 404, lambda: cloud.as_account("ghost"))
    expect(ir.NotFoundError, "NoSuchAccount", 404, lambda: ir.open(home, account="ghost"))
    expect(ir.NotFoundError, "NoSuchJob", 404, lambda: cloud.job("j-00000000"))
    # a malformed job id is a bad request, as a malformed image id is, not a missing job
    for bad in ["j-XYZ", "", "../etc", "m-12345678", "j-1234567\x00", "j-123456789"]:
        expect(ir.ValidationError, "InvalidParameter", 400, lambda: cloud.job(bad))
    # another account's job is not revealed
    cloud.add_account("bob")
    img = cloud.import_image(src, region="bj", name="x")
    job = img.replicate("gz")
    job.wait(timeout=60)
    bob = cloud.as_account("bob")
    expect(ir.NotFoundError, "NoSuchJob", 404, lambda: bob.job(job.id))
    assert bob.jobs() == []
    assert [j.id for j in cloud.jobs()] == [job.id]


def test_open_unknown_account_via_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ir.open(home).close()
    monkeypatch.setenv("IMAGERELAY_ACCOUNT", "ghost")
    expect(ir.NotFoundError, "NoSuchAccount", 404, lambda: ir.open(home))
    monkeypatch.setenv("IMAGERELAY_HOME", str(home))
    monkeypatch.setenv("IMAGERELAY_ACCOUNT", "default")
    with ir.open() as c:
        assert c.home.resolve() == home.resolve()
        assert c.account == "default"


def test_bad_limits_and_workers(home: Path) -> None:
    for limits in (ir.Limits(chunk_size=100), ir.Limits(chunk_size=0),
                   ir.Limits(max_copy_bytes=-1), ir.Limits(bandwidth=-5)):
        expect(ir.ValidationError, "InvalidParameter", 400,
               lambda: ir.open(home, limits=limits))
    expect(ir.ValidationError, "InvalidParameter", 400, lambda: ir.open(home, workers=0))


# -- replicate --------------------------------------------------------------------------
def test_replicate_rules(cloud: ir.Cloud, world: dict, unchanged: Callable[[], None]) -> None:
    img, system = world["img"].id, world["system"].id
    unchanged()
    expect(ir.ValidationError, "Image.ImageNotSupportCopy", 409,
           lambda: cloud.replicate(system, ["gz"]), problems=["Image.ImageNotSupportCopy"])
    expect(ir.ValidationError, "Image.ImageNotSupportCopy", 409,
           lambda: cloud.as_account("bob").replicate(system, ["gz"]),
           problems=["Image.ImageNotSupportCopy"])
    expect(ir.ValidationError, "Image.DestRegionIsEmpty", 400,
           lambda: cloud.replicate(img, []), problems=["Image.DestRegionIsEmpty"])
    expect(ir.ValidationError, "Image.RegionNotSupportCopy", 409,
           lambda: cloud.replicate(img, "bj"), problems=["Image.RegionNotSupportCopy"])
    expect(ir.ValidationError, "Image.RegionNotSupportCopy", 409,
           lambda: cloud.replicate(img, ["gz", "nope"]), problems=["Image.RegionNotSupportCopy"])
    expect(ir.ValidationError, "InvalidParameter", 400,
           lambda: cloud.replicate(img, ["gz"], name="1bad"), problems=["InvalidParameter"])
    expect(ir.ValidationError, "InvalidParameter", 400,
           lambda: cloud.replicate(img, ["gz"], client_token=""))
    expect(ir.ValidationError, "InvalidParameter", 400,
           lambda: cloud.replicate(img, ["gz"], client_token="t" * 65))
    expect(ir.ValidationError, "Image.ImageNotSupportCopy", 409,
           lambda: cloud.replicate(system, [], name="9"),
           problems=["Image.ImageNotSupportCopy", "Image.DestRegionIsEmpty", "InvalidParameter"])
    unchanged()


def test_replicate_size_limit_and_several_failures(open_cloud: Callable[..., ir.Cloud],
                                                    home: Path, files: Path) -> None:
    cloud = open_cloud(max_copy_bytes=4 * CHUNK)
    big = cloud.import_image(make_dense(files / "big.raw", 4 * CHUNK + 1), region="bj",
                             name="big")
    small = cloud.import_image(make_dense(files / "small.raw", 4 * CHUNK), region="bj",
                               name="small")
    before = Snapshot(cloud, home)
    expect(ir.ValidationError, "Image.LargeImageCopyForbidden", 409,
           lambda: cloud.replicate(big.id, ["gz"]), problems=["Image.LargeImageCopyForbidden"])
    err = expect(ir.ValidationError, "Image.LargeImageCopyForbidden", 409,
                 lambda: cloud.replicate(big.id, ["bj", "nope", "gz", "gz"], name="1bad"),
                 problems=["Image.LargeImageCopyForbidden", "Image.RegionNotSupportCopy",
                           "Image.RegionNotSupportCopy", "InvalidParameter"])
    text = " ".join(m for _, m in err.problems)
    assert "nope" in text and "bj" in text
    assert Snapshot(cloud, home) == before
    job = cloud.replicate(small.id, ["gz"])
    job.wait(timeout=60)
    assert job.state == "Completed"


def test_client_token(cloud: ir.Cloud, world: dict, home: Path) -> None:
    img = world["img"].id
    job = cloud.replicate(img, ["gz", "su"], client_token="tok-1")
    again = cloud.replicate(img, ["su", "gz", "gz"], client_token="tok-1")
    assert again.id == job.id
    job.wait(timeout=60)
    again = cloud.replicate(img, ["gz", "su"], client_token="tok-1")
    assert again.id == job.id
    assert set(again.tasks) == {"gz", "su"}
    assert [j.id for j in cloud.jobs()] == [job.id]
    assert len([e for e in cloud.events() if e.type == "job.created"]) == 1
    assert len(cloud.images(region="gz")) == 2  # `other` and one copy
    before = Snapshot(cloud, home)
    for kwargs in ({"to": ["gz"]}, {"to": ["gz", "su"], "name": "renamed"}):
        expect(ir.ConflictError, "IdempotentParameterMismatch", 409,
               lambda: cloud.replicate(img, client_token="tok-1", **kwargs))
    expect(ir.ConflictError, "IdempotentParameterMismatch", 409,
           lambda: cloud.replicate(world["other"].id, ["su"], client_token="tok-1"))
    assert Snapshot(cloud, home) == before
    # a token whose request was rejected is not used up
    expect(ir.ValidationError, "Image.DestRegionIsEmpty", 400,
           lambda: cloud.replicate(img, [], client_token="tok-3"))
    job3 = cloud.replicate(img, ["su"], client_token="tok-3")
    job3.wait(timeout=60)
    assert job3.state == "Completed"
    # a new token is a new request
    job2 = cloud.replicate(img, ["gz", "su"], client_token="tok-2")
    assert job2.id != job.id
    job2.wait(timeout=60)
    assert len(cloud.jobs()) == 3
