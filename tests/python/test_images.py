"""Images: import, export, visibility, sharing, rename, delete, chunk accounting, persistence."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import textwrap
from collections.abc import Callable
from datetime import timezone
from pathlib import Path

import pytest
from conftest import (
    CHUNK,
    PYTHON,
    assert_error,
    chunk_hashes,
    chunk_names,
    chunk_stats,
    damage_block,
    distinct_nonzero_bytes,
    make_dense,
    make_odd,
    make_sparse,
    make_text,
    make_zero,
    manifest_path,
    read_manifest,
    read_result,
    sha256_file,
    wait_until,
)

import imagerelay as ir


def _roundtrip(cloud: ir.Cloud, src: Path, out: Path, **kw: object) -> ir.Image:
    image = cloud.import_image(src, region="bj", name="img", **kw)  # type: ignore[arg-type]
    assert image.status == "Available"
    assert image.size == src.stat().st_size
    data = src.read_bytes()
    assert image.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert image.digest == sha256_file(src)
    returned = image.export(out)
    assert Path(returned) == out
    assert out.read_bytes() == data
    assert sha256_file(out) == image.digest
    return image


# -- import / export --------------------------------------------------------------------
def test_the_least_buffer_memory_still_moves_every_byte(open_cloud: Callable[..., ir.Cloud],
                                                        home: Path, files: Path) -> None:
    """Import, copy, export and verify take their chunk buffers from one bounded pool each;
    with buffer_memory below one chunk every pool runs on its floor (a buffer or two, shared
    by several workers) and still moves every byte: compressed blocks, raw ones and a short
    last one."""
    cloud = open_cloud(buffer_memory=1)
    src = make_text(files / "mixed.raw", chunks=12, random_chunks=12)
    with open(src, "ab") as f:
        f.write(os.urandom(12345))
    data = src.read_bytes()
    image = cloud.import_image(src, region="bj", name="tight")
    assert image.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    job = image.replicate(["gz"])
    assert job.wait(timeout=60).state == "Completed"
    copy = job.copies["gz"]
    for img, out in ((image, files / "bj.out"), (copy, files / "gz.out")):
        assert img.verify() == image.digest
        img.export(out)
        assert out.read_bytes() == data
    # A damaged block stops an export whose workers share one buffer: the failure is
    # reported, no worker is left waiting for a buffer.
    damage_block(home, "gz", chunk_hashes(src)[3])
    with pytest.raises(ir.IntegrityError) as excinfo:
        copy.export(files / "damaged.out")
    assert excinfo.value.code == "Transfer.IntegrityError"
    assert not (files / "damaged.out").exists()


@pytest.mark.both_catalogs
def test_import_export_dense(cloud: ir.Cloud, files: Path) -> None:
    src = make_dense(files / "dense.raw", 40 * CHUNK)
    image = _roundtrip(cloud, src, files / "dense.out")
    assert image.id.startswith("m-") and len(image.id) == 10
    assert image.type == "Custom"
    assert image.owner == "default"
    assert image.region == "bj"
    assert image.name == "img"
    assert image.format == "raw" and image.os_type == "linux" and image.os_arch == "x86_64"
    assert image.source_image_id is None and image.source_region is None
    assert image.progress is None
    assert image.created_at is not None and image.created_at.tzinfo is not None
    assert image.created_at.utcoffset() == timezone.utc.utcoffset(None)


def test_import_export_sparse(cloud: ir.Cloud, files: Path) -> None:
    size = 4 * 2**20
    src = make_sparse(files / "sparse.raw", size)
    out = files / "sparse.out"
    _roundtrip(cloud, src, out)
    st = os.stat(out)
    assert st.st_size == size
    # Only a few 64 KiB blocks hold data: the export must be sparse.
    assert st.st_blocks * 512 < size // 4, st.st_blocks * 512


def test_import_export_odd_size(cloud: ir.Cloud, files: Path) -> None:
    src = make_odd(files / "odd.raw", chunks=9, extra=777)
    assert src.stat().st_size % CHUNK != 0
    _roundtrip(cloud, src, files / "odd.out")


def test_import_export_odd_size_smaller_than_a_chunk(cloud: ir.Cloud, files: Path) -> None:
    src = make_dense(files / "tiny.raw", 1000)
    _roundtrip(cloud, src, files / "tiny.out")


def test_import_export_empty(cloud: ir.Cloud, files: Path) -> None:
    src = files / "empty.raw"
    src.write_bytes(b"")
    image = _roundtrip(cloud, src, files / "empty.out")
    assert image.size == 0
    assert image.digest == "sha256:" + hashlib.sha256(b"").hexdigest()


def test_import_export_all_zero(cloud: ir.Cloud, home: Path, files: Path) -> None:
    size = 3 * 2**20 + 100
    src = make_zero(files / "zero.raw", size)
    before = chunk_stats(home, "bj")
    _roundtrip(cloud, src, files / "zero.out")
    # all-zero chunks are not stored at all
    assert chunk_stats(home, "bj") == before
    st = os.stat(files / "zero.out")
    assert st.st_size == size
    assert st.st_blocks * 512 < size // 4


def test_import_stores_each_distinct_chunk_once(cloud: ir.Cloud, home: Path,
                                                files: Path) -> None:
    block = os.urandom(CHUNK)
    other = os.urandom(CHUNK)
    src = files / "rep.raw"
    src.write_bytes(block * 5 + bytes(CHUNK) * 3 + other + block + b"tail")
    _roundtrip(cloud, src, files / "rep.out")
    n, total = distinct_nonzero_bytes(src)
    assert n == 3
    assert chunk_stats(home, "bj") == (n, total)
    expected = {h for h in chunk_hashes(src) if h}
    assert chunk_names(home, "bj") == expected


def test_import_metadata_fields(cloud: ir.Cloud, files: Path) -> None:
    src = make_dense(files / "m.raw", 3 * CHUNK)
    image = cloud.import_image(src, region="gz", name="meta/v1.0_x-y", os_type="windows",
                               os_name="Windows Server", os_version="2022", os_arch="arm64",
                               format="raw", description="a test image")
    again = cloud.image(image.id)
    d = again.to_dict()
    assert d["name"] == "meta/v1.0_x-y"
    assert d["region"] == "gz"
    assert d["os_type"] == "windows" and d["os_name"] == "Windows Server"
    assert d["os_version"] == "2022" and d["os_arch"] == "arm64"
    assert d["format"] == "raw" and d["description"] == "a test image"
    assert d["size"] == 3 * CHUNK


@pytest.mark.both_catalogs
def test_import_wait_false_creating_then_available(cloud: ir.Cloud, files: Path) -> None:
    src = make_dense(files / "nw.raw", 32 * CHUNK)
    image = cloud.import_image(src, region="bj", name="nowait", wait=False)
    assert image.status == "Creating"
    assert image.wait(timeout=30) is image
    assert image.status == "Available"
    assert image.digest == sha256_file(src)
    out = image.export(files / "nw.out")
    assert out.read_bytes() == src.read_bytes()


def test_import_file_uri_and_relative_path(cloud: ir.Cloud, files: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_odd(files / "u.raw", chunks=3, extra=5)
    image = cloud.import_image(f"file://{src}", region="bj", name="uri")
    assert image.export(files / "u.out").read_bytes() == src.read_bytes()
    monkeypatch.chdir(files)
    rel = cloud.import_image("u.raw", region="gz", name="rel")
    assert rel.digest == image.digest
    assert rel.export("rel.out").read_bytes() == src.read_bytes()


def test_as_account_close_keeps_the_engine(cloud: ir.Cloud, files: Path) -> None:
    cloud.add_account("bob")
    bob = cloud.as_account("bob")
    with bob:
        assert bob.account == "bob"
    bob.close()
    image = cloud.import_image(make_dense(files / "a.raw", CHUNK), region="bj", name="a")
    job = image.replicate("gz")
    job.wait(timeout=60)
    assert job.state == "Completed"


# -- mostly-empty images: the digest follows the data ----------------------------------
BIG_SPARSE = 5 * 2**28  # 1.25 GiB of which a few KiB are data: over the 1 GiB threshold
BIG_CHUNK = 4 * 2**20  # the default: 64 KiB chunks would make 20480 of them


def test_mostly_empty_image_is_available_before_its_digest(home: Path, files: Path) -> None:
    src = make_sparse(files / "big.raw", BIG_SPARSE)
    expected = sha256_file(src)
    with ir.open(home, limits=ir.Limits(chunk_size=BIG_CHUNK)) as cloud:
        image = cloud.import_image(src, region="bj", name="big")
        assert image.status == "Available"
        assert image.size == BIG_SPARSE
        # usable at once: replicate it while the digester may still be hashing its holes
        job = image.replicate("gz")
        assert image.wait_digest(timeout=120) == expected
        assert image.digest == expected
        job.wait(timeout=120)
        copy = job.copies["gz"]
        assert copy.wait_digest(timeout=120) == expected
        assert copy.verify() == expected
        assert cloud.wait_idle(timeout=60)
        events = cloud.events(image_id=image.id)
        assert [e.detail["digest"] for e in events if e.type == "image.digest"] == [expected]
        out = copy.export(files / "big.out")
        assert sha256_file(out) == expected
    for region, image_id in (("bj", image.id), ("gz", copy.id)):
        assert read_manifest(manifest_path(home, region, image_id))["digest"] == expected


def test_digest_wait_shows_progress(home: Path, files: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Issue #14: the minute of hashing a large sparse image's holes is not silent: the wait
    shows how far the digester got (the command line without a terminal: test_cli)."""
    src = make_sparse(files / "big.raw", BIG_SPARSE)
    with ir.open(home, limits=ir.Limits(chunk_size=BIG_CHUNK)) as cloud:
        image = cloud.import_image(src, region="bj", name="big")
        assert image.digest is None  # left for the digester
        capsys.readouterr()
        digest = image.wait_digest(timeout=120, progress=True)
    err = capsys.readouterr().err
    assert digest == sha256_file(src)
    assert f"digest {image.id}" in err, err  # the bar
    if "%" in err:  # else the digester was done before the wait looked: nothing to show
        assert "100%" in err, err


def test_digest_left_by_a_closed_process_is_computed_by_the_next(home: Path,
                                                                files: Path) -> None:
    src = make_sparse(files / "big.raw", BIG_SPARSE)
    with ir.open(home, limits=ir.Limits(chunk_size=BIG_CHUNK)) as cloud:
        image_id = cloud.import_image(src, region="bj", name="big").id
    # closed at once: the digest may or may not have been computed; either way it is right
    expected = sha256_file(src)
    with ir.open(home, limits=ir.Limits(chunk_size=BIG_CHUNK)) as cloud:
        assert cloud.image(image_id).wait_digest(timeout=120) == expected
        assert cloud.verify_image(image_id) == expected


def test_interrupted_import_is_create_failed(home: Path, files: Path) -> None:
    """A process killed during an import: the next open marks the image CreateFailed, removes
    its partial bytes, and the image can be deleted."""
    src = make_dense(files / "big.raw", 16 * 2**20)
    ir.open(home).close()
    code = textwrap.dedent("""
        import sys, json, time, imagerelay as ir
        c = ir.open(sys.argv[1], limits=ir.Limits(chunk_size=65536))
        im = c.import_image(sys.argv[2], region="bj", name="x", wait=False)
        print("RESULT", json.dumps({"id": im.id}), flush=True)
        time.sleep(60)
    """)
    for _attempt in range(3):
        child = subprocess.Popen([PYTHON, "-c", code, str(home), str(src)],
                                 stdout=subprocess.PIPE, text=True)
        info = read_result(child)
        child.kill()
        child.wait()
        child.stdout.close()
        with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as c:
            image = c.image(info["id"])
            if image.status == "Available":  # the import won the race: try again
                image.delete()
                continue
            assert image.status == "CreateFailed"
            assert image.error
            wait_until(lambda: chunk_stats(home, "bj") == (0, 0), timeout=10)
            types = [e.type for e in c.events(image_id=image.id)]
            assert types == ["image.created", "image.create_failed"]
            image.delete()
            with pytest.raises(ir.NotFoundError):
                c.image(image.id)
            return
    pytest.fail("the import always finished before the kill")


def test_refresh_and_equality(cloud: ir.Cloud, files: Path) -> None:
    image = cloud.import_image(make_dense(files / "a.raw", CHUNK), region="bj", name="a")
    same = cloud.image(image.id)
    assert same == image and hash(same) == hash(image)
    cloud.rename_image(image.id, "b")
    assert image.name == "a"
    assert image.refresh().name == "b"
    assert "Image" in repr(image)
    assert "<table>" in image._repr_html_()


# -- visibility ------------------------------------------------------------------------
@pytest.fixture
def two_accounts(cloud: ir.Cloud) -> tuple[ir.Cloud, ir.Cloud]:
    cloud.add_account("alice")
    cloud.add_account("bob")
    return cloud.as_account("alice"), cloud.as_account("bob")


def test_an_account_id_is_never_reused_so_no_account_inherits_anothers_history(
        cloud: ir.Cloud, files: Path) -> None:
    # Found by an adversarial pass: a new account under a removed one's id saw its jobs and
    # its events (image names, sources). Ids are not reused, as a cloud's are not.
    cloud.add_account("carol")
    carol = cloud.as_account("carol")
    image = carol.import_image(make_dense(files / "c.raw", 2 * CHUNK), region="bj",
                               name="carol-private-build")
    image.replicate(["gz"]).wait()
    for i in carol.images():
        i.delete()
    cloud.remove_account("carol")
    cloud.add_account("dave")  # never used: fine
    cloud.remove_account("dave")  # no history but its removal, which names it
    for used in ("carol", "dave"):
        with pytest.raises(ir.ConflictError) as e:
            cloud.add_account(used)
        assert e.value.code == "AlreadyExists" and "was used" in e.value.message
        assert used not in {a.id for a in cloud.accounts}


def test_private_image_is_invisible_to_others(two_accounts: tuple[ir.Cloud, ir.Cloud],
                                              files: Path) -> None:
    alice, bob = two_accounts
    assert alice.account == "alice" and bob.account == "bob"
    image = alice.import_image(make_dense(files / "p.raw", 4 * CHUNK), region="bj", name="priv")
    assert [i.id for i in alice.images()] == [image.id]
    assert image.id not in {i.id for i in bob.images()}
    assert image.id not in {i.id for i in bob.images(region="bj")}
    calls = {
        "image": lambda: bob.image(image.id),
        "share": lambda: bob.share(image.id, ["default"]),
        "unshare": lambda: bob.unshare(image.id, ["default"]),
        "shared_users": lambda: bob.shared_users(image.id),
        "delete": lambda: bob.delete_image(image.id),
        "export": lambda: bob.export_image(image.id, files / "stolen.raw"),
        "rename": lambda: bob.rename_image(image.id, "mine"),
        "replicate": lambda: bob.replicate(image.id, ["gz"]),
        "cancel_copy": lambda: bob.cancel_copy(image.id),
    }
    for what, call in calls.items():
        with pytest.raises(ir.NotFoundError) as excinfo:
            call()
        assert_error(excinfo, ir.NotFoundError, "NoSuchImage", 404)
        assert "AccessDenied" not in str(excinfo.value), what
    assert not (files / "stolen.raw").exists()
    # nothing changed for the owner
    again = alice.image(image.id)
    assert again.name == "priv" and again.status == "Available"
    assert alice.shared_users(image.id) == []


def test_unknown_image_is_no_such_image(cloud: ir.Cloud) -> None:
    with pytest.raises(ir.NotFoundError) as excinfo:
        cloud.image("m-00000000")
    assert_error(excinfo, ir.NotFoundError, "NoSuchImage", 404)


def test_system_images_are_seen_by_every_account(two_accounts: tuple[ir.Cloud, ir.Cloud],
                                                 cloud: ir.Cloud, files: Path) -> None:
    alice, bob = two_accounts
    src = make_dense(files / "sys.raw", 5 * CHUNK)
    system = cloud.add_system_image(src, region="su", name="ubuntu-22.04")
    assert system.type == "System"
    assert system.owner is None
    assert system.status == "Available"
    for c in (cloud, alice, bob):
        seen = c.image(system.id)
        assert seen.type == "System" and seen.owner is None
        listed = {i.id: i for i in c.images(region="su")}
        assert system.id in listed
        assert listed[system.id].type == "System" and listed[system.id].owner is None
        assert [i.id for i in c.images(image_type="System")] == [system.id]
        out = c.image(system.id).export(files / f"sys-{c.account}.out")
        assert out.read_bytes() == src.read_bytes()


@pytest.mark.both_catalogs
def test_share_unshare_and_recipient_view(two_accounts: tuple[ir.Cloud, ir.Cloud],
                                          files: Path) -> None:
    alice, bob = two_accounts
    src = make_sparse(files / "s.raw", 2 * 2**20)
    image = alice.import_image(src, region="bj", name="shared")
    alice.share(image.id, "bob")
    assert alice.shared_users(image.id) == ["bob"]
    assert image.shared_users() == ["bob"]

    seen = bob.image(image.id)
    assert seen.type == "Sharing"
    assert seen.owner == "alice"
    assert seen.digest == image.digest
    listed = {i.id: i for i in bob.images()}
    assert listed[image.id].type == "Sharing"
    assert [i.id for i in bob.images(image_type="Sharing")] == [image.id]
    assert bob.images(image_type="Custom") == []
    assert alice.images(image_type="Sharing") == []
    assert [i.id for i in alice.images(image_type="Custom")] == [image.id]
    out = seen.export(files / "bob.out")
    assert out.read_bytes() == src.read_bytes()

    # the recipient may not change it
    denied = {
        "share": lambda: bob.share(image.id, ["default"]),
        "unshare": lambda: bob.unshare(image.id, ["bob"]),
        "rename": lambda: bob.rename_image(image.id, "hijack"),
        "delete": lambda: bob.delete_image(image.id),
        "shared_users": lambda: bob.shared_users(image.id),
        "replicate": lambda: bob.replicate(image.id, ["gz"]),
    }
    for what, call in denied.items():
        with pytest.raises(ir.PermissionDeniedError) as excinfo:
            call()
        assert excinfo.value.code == "AccessDenied", what
        assert excinfo.value.http_status == 403, what
        assert excinfo.value.problems[0][0] == "AccessDenied", what
    assert alice.image(image.id).name == "shared"
    assert alice.shared_users(image.id) == ["bob"]

    image.unshare("bob")
    assert alice.shared_users(image.id) == []
    with pytest.raises(ir.NotFoundError) as excinfo:
        bob.image(image.id)
    assert excinfo.value.code == "NoSuchImage"
    assert image.id not in {i.id for i in bob.images()}


def test_share_several_accounts_via_image_methods(cloud: ir.Cloud, files: Path) -> None:
    for a in ("a1", "a2", "a3"):
        cloud.add_account(a)
    image = cloud.import_image(make_dense(files / "x.raw", CHUNK), region="bj", name="x")
    image.share("a1", "a2")
    cloud.share(image.id, "a3")
    assert sorted(cloud.shared_users(image.id)) == ["a1", "a2", "a3"]
    image.unshare("a1", "a3")
    assert cloud.shared_users(image.id) == ["a2"]
    assert cloud.as_account("a2").image(image.id).type == "Sharing"


@pytest.mark.both_catalogs
def test_rename(cloud: ir.Cloud, files: Path) -> None:
    image = cloud.import_image(make_dense(files / "r.raw", CHUNK), region="bj", name="old")
    image.rename("new-name_1.0/x")
    assert image.name == "new-name_1.0/x"
    assert cloud.image(image.id).name == "new-name_1.0/x"
    cloud.rename_image(image.id, "again")
    assert [i.name for i in cloud.images()] == ["again"]
    renamed = [e for e in cloud.events(image_id=image.id) if e.type == "image.renamed"]
    assert len(renamed) == 2


# -- delete -----------------------------------------------------------------------------
@pytest.mark.both_catalogs
def test_delete_then_no_such_image_and_ids_not_reused(cloud: ir.Cloud, home: Path,
                                                      files: Path) -> None:
    src = make_dense(files / "d.raw", 10 * CHUNK)
    image = cloud.import_image(src, region="bj", name="gone")
    image_id = image.id
    image.delete()
    with pytest.raises(ir.NotFoundError) as excinfo:
        cloud.image(image_id)
    assert_error(excinfo, ir.NotFoundError, "NoSuchImage", 404)
    assert cloud.images() == []
    with pytest.raises(ir.NotFoundError):
        cloud.delete_image(image_id)
    with pytest.raises(ir.NotFoundError):
        cloud.export_image(image_id, files / "gone.out")
    # its chunks are gone from the region
    assert chunk_stats(home, "bj") == (0, 0)
    ids = {image_id}
    for i in range(5):
        new = cloud.import_image(src, region="bj", name="gone")
        assert new.id not in ids
        ids.add(new.id)
    assert [e.type for e in cloud.events(image_id=image_id)][-1] == "image.deleted"


def test_delete_keeps_chunks_another_image_uses(cloud: ir.Cloud, home: Path,
                                                files: Path) -> None:
    src = make_odd(files / "same.raw", chunks=12, extra=999)
    first = cloud.import_image(src, region="bj", name="one")
    after_first = chunk_stats(home, "bj")
    second = cloud.import_image(src, region="bj", name="two")
    assert second.id != first.id
    assert chunk_stats(home, "bj") == after_first  # identical chunks are stored once
    first.delete()
    assert chunk_stats(home, "bj") == after_first
    out = second.export(files / "two.out")
    assert out.read_bytes() == src.read_bytes()
    assert sha256_file(out) == second.digest
    second.delete()
    assert chunk_stats(home, "bj") == (0, 0)


def test_delete_removes_exactly_the_unique_chunks(cloud: ir.Cloud, home: Path,
                                                  files: Path) -> None:
    shared = os.urandom(8 * CHUNK)
    a_only = os.urandom(8 * CHUNK)
    b_only = os.urandom(8 * CHUNK)
    src_a = files / "a.raw"
    src_b = files / "b.raw"
    src_a.write_bytes(shared + a_only)
    src_b.write_bytes(shared + b_only)
    a = cloud.import_image(src_a, region="bj", name="a")
    b = cloud.import_image(src_b, region="bj", name="b")
    names_a = {h for h in chunk_hashes(src_a) if h}
    names_b = {h for h in chunk_hashes(src_b) if h}
    assert chunk_names(home, "bj") == names_a | names_b
    count, total = chunk_stats(home, "bj")
    assert count == 24 and total == 24 * CHUNK
    a.delete()
    assert chunk_names(home, "bj") == names_b
    assert chunk_stats(home, "bj") == (count - 8, total - 8 * CHUNK)
    out = b.export(files / "b.out")
    assert out.read_bytes() == src_b.read_bytes()


def test_delete_in_one_region_leaves_other_regions_alone(cloud: ir.Cloud, home: Path,
                                                         files: Path) -> None:
    src = make_dense(files / "r.raw", 6 * CHUNK)
    bj = cloud.import_image(src, region="bj", name="x")
    gz = cloud.import_image(src, region="gz", name="x")
    before = chunk_stats(home, "gz")
    bj.delete()
    assert chunk_stats(home, "bj") == (0, 0)
    assert chunk_stats(home, "gz") == before
    assert gz.export(files / "gz.out").read_bytes() == src.read_bytes()


# -- listing filters --------------------------------------------------------------------
@pytest.mark.both_catalogs
def test_images_filters(cloud: ir.Cloud, files: Path) -> None:
    cloud.add_account("other")
    other = cloud.as_account("other")
    src = make_dense(files / "f.raw", CHUNK)
    a = cloud.import_image(src, region="bj", name="alpha")
    b = cloud.import_image(src, region="gz", name="beta")
    c = cloud.import_image(src, region="gz", name="alpha")
    s = cloud.add_system_image(src, region="gz", name="alpha")
    o = other.import_image(src, region="gz", name="alpha")
    o2 = other.import_image(src, region="gz", name="gamma")
    other.share(o2.id, "default")

    def ids(images: list[ir.Image]) -> set[str]:
        return {i.id for i in images}

    assert ids(cloud.images()) == {a.id, b.id, c.id, s.id, o2.id}
    assert ids(cloud.images(region="gz")) == {b.id, c.id, s.id, o2.id}
    assert ids(cloud.images("bj")) == {a.id}
    assert ids(cloud.images(region="su")) == set()
    assert ids(cloud.images(name="alpha")) == {a.id, c.id, s.id}
    assert ids(cloud.images(region="gz", name="alpha")) == {c.id, s.id}
    assert ids(cloud.images(image_type="Custom")) == {a.id, b.id, c.id}
    assert ids(cloud.images(image_type="System")) == {s.id}
    assert ids(cloud.images(image_type="Sharing")) == {o2.id}
    assert ids(cloud.images(image_type="All")) == {a.id, b.id, c.id, s.id, o2.id}
    assert ids(cloud.images(region="gz", image_type="Custom", name="alpha")) == {c.id}
    assert ids(cloud.images(name="nothing")) == set()
    assert ids(other.images(region="gz")) == {o.id, o2.id, s.id}
    for image in cloud.images(region="gz"):
        assert image.region == "gz"
    with pytest.raises(ir.ValidationError) as excinfo:
        cloud.images(image_type="Public")
    assert excinfo.value.code == "InvalidParameter"


# -- persistence ------------------------------------------------------------------------
@pytest.mark.both_catalogs
def test_catalog_survives_close_and_reopen(home: Path, files: Path) -> None:
    src = make_odd(files / "p.raw", chunks=5, extra=3)
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as c:
        c.add_account("bob")
        c.add_region("xian", name="Xi'an")
        image = c.import_image(src, region="bj", name="keep", description="kept")
        image.share("bob")
        system = c.add_system_image(src, region="gz", name="sys")
        gone = c.import_image(src, region="su", name="gone")
        gone.delete()
        job = image.replicate("xian")
        job.wait(timeout=60)
        events_before = [(e.seq, e.type, e.image_id) for e in c.events()]
        images_before = sorted((i.id, i.name, i.region, i.type, i.status, i.digest)
                               for i in c.images())
    assert events_before

    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as c:
        assert {r.id for r in c.regions} == {"bj", "gz", "su", "xian"}
        assert c.region("xian").name == "Xi'an"
        assert {a.id for a in c.accounts} == {"default", "bob"}
        images_after = sorted((i.id, i.name, i.region, i.type, i.status, i.digest)
                              for i in c.images())
        assert images_after == images_before
        assert c.shared_users(image.id) == ["bob"]
        assert c.as_account("bob").image(image.id).type == "Sharing"
        assert c.image(system.id).type == "System"
        with pytest.raises(ir.NotFoundError):
            c.image(gone.id)
        events_after = [(e.seq, e.type, e.image_id) for e in c.events()]
        assert events_after[:len(events_before)] == events_before
        assert c.job(job.id).state == "Completed"
        assert c.image(image.id).description == "kept"
        assert c.image(image.id).export(files / "p.out").read_bytes() == src.read_bytes()
    # a third open with the default chunk size still reads what was written
    with ir.open(home) as c:
        copy = c.job(job.id).copies["xian"]
        assert copy.export(files / "copy.out").read_bytes() == src.read_bytes()
