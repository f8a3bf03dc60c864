"""A region's block index in the format of the releases before session 22 (format 1: hashes
and pack names as hex text) keeps working after the upgrade (issue #12, "existing homes keep
working"; docs/data-plane-v2.md, "The index's format"): the home is made by this release,
its indexes written back in format 1 exactly as those releases wrote them, and then used. The
move to format 2 is one transaction: a crash in it leaves format 1 whole."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import delta_bases, edited, make_words, region_root, sha256_file, stored_blocks
from invariants import check_invariants

import imagerelay as ir

# The index's tables as the releases before format 2 made them (frozen).
FORMAT1_SCHEMA = (Path(__file__).resolve().parents[1] / "fixtures"
                  / "block_index_format1.sql").read_text()


def index_file(home: Path, region: str) -> Path:
    return region_root(home, region) / "index" / "blocks.sqlite"


def tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}


def user_version(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def write_as_format1(db: Path) -> None:
    """Rewrites a closed region's index in format 1, row for row (features, marks and the
    changes count were the same in both formats and stay)."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        # No earlier release made the view that stops its processes in format 2.
        conn.execute("DROP VIEW IF EXISTS blocks")
        for statement in FORMAT1_SCHEMA.split(";\n"):  # a trigger's own `;` ends no line
            if statement.strip(" \n-"):
                conn.execute(statement)
        conn.execute("INSERT INTO packs SELECT name, size FROM indexed_packs WHERE size IS NOT NULL")
        conn.execute(
            "INSERT INTO blocks SELECT lower(hex(b.hash)), p.name, b.offset, b.stored_length, "
            "b.raw_length, b.codec, CASE WHEN b.bases IS NULL THEN NULL ELSE lower(hex(b.bases)) "
            "END FROM indexed_blocks b JOIN indexed_packs p ON p.id = b.pack")
        conn.execute("INSERT INTO delta_bases "
                     "SELECT lower(hex(base)), lower(hex(block)) FROM delta_links")
        for table in ("indexed_blocks", "indexed_packs", "delta_links"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("PRAGMA user_version = 0")
        conn.execute("COMMIT")
    finally:
        conn.close()


@pytest.fixture
def format1_home(home: Path, files: Path) -> tuple[Path, dict[str, str], dict[str, dict]]:
    """A home holding two versions of an image (the second mostly delta blocks on the first)
    in bj and gz, its two indexes then written in format 1. Returns the versions' files by
    name, and what each region's index held before."""
    v1 = make_words(files / "v1.raw", 32, seed=1)
    v2 = edited(v1, files / "v2.raw", seed=2)
    with ir.open(home) as cloud:
        a = cloud.import_image(v1, region="bj", name="v1")
        b = cloud.import_image(v2, region="bj", name="v2")
        for image in (a, b):
            assert image.replicate(["gz"]).wait(timeout=120).state == "Completed"
    held = {}
    for region in ("bj", "gz"):
        held[region] = {"blocks": stored_blocks(home, region),
                        "deltas": sorted(delta_bases(home, region))}
        assert held[region]["deltas"], f"no delta block in {region}"
        write_as_format1(index_file(home, region))
        assert "blocks" in tables(index_file(home, region))
        assert user_version(index_file(home, region)) == 0
    return home, {"v1": str(v1), "v2": str(v2)}, held


def test_a_home_whose_indexes_are_in_the_earlier_format_works_after_the_upgrade(
        format1_home, files: Path) -> None:
    home, sources, held = format1_home
    with ir.open(home) as cloud:
        images = {(i.name, i.region): i for i in cloud.images()}
        # Read back whole from both regions (every block decoded and checked), copied on to a
        # third region (plans and confirmations ask the moved index), then v1 deleted:
        # v2's deltas keep its blocks alive through the moved delta rows.
        for region in ("bj", "gz"):
            for name in ("v1", "v2"):
                assert images[name, region].verify() == sha256_file(Path(sources[name]))
        job = images["v2", "gz"].replicate(["su"])
        assert job.wait(timeout=120).state == "Completed"
        assert job.tasks["su"].bytes_transferred > 0
        assert job.copies["su"].verify() == sha256_file(Path(sources["v2"]))
        images["v1", "bj"].delete()
    for region in ("bj", "gz"):
        db = index_file(home, region)
        assert user_version(db) == 2
        assert not {"blocks", "packs", "delta_bases"} & tables(db)
        # A process of an earlier release started now fails to open it (its index on
        # `blocks` cannot be made on the view there) rather than keep an index of its own.
        with sqlite3.connect(db) as conn, pytest.raises(sqlite3.OperationalError,
                                                        match="view"):
            conn.executescript(FORMAT1_SCHEMA)
        assert not {"blocks", "packs", "delta_bases"} & tables(db)
    # Nothing lost in the move (gz untouched since: every row as before)...
    assert stored_blocks(home, "gz") == held["gz"]["blocks"]
    assert sorted(delta_bases(home, "gz")) == held["gz"]["deltas"]
    # ... and the home as a whole settles: every image right, nothing unneeded kept.
    with ir.open(home) as cloud:
        digests = {i.digest for i in cloud.images()}
    check_invariants(home, digests, "after the upgrade")
    with ir.open(home) as cloud:
        (v2_bj,) = [i for i in cloud.images() if i.name == "v2" and i.region == "bj"]
        assert v2_bj.export(files / "v2.out").read_bytes() == Path(sources["v2"]).read_bytes()


CHILD = textwrap.dedent("""
    import sys
    import imagerelay as ir
    with ir.open(sys.argv[1]) as cloud:
        (image,) = [i for i in cloud.images() if i.name == "v2" and i.region == "bj"]
        image.verify()
""")


def test_a_crash_while_the_index_moves_leaves_the_earlier_format_whole(format1_home) -> None:
    home, sources, held = format1_home
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGERELAY_FAIL")}
    env["IMAGERELAY_FAIL_AT"] = "index.migrated@1"
    result = subprocess.run([sys.executable, "-c", CHILD, str(home)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 86, result.stderr  # ended at the fail point, as kill -9
    db = index_file(home, "bj")
    assert user_version(db) == 0 and "blocks" in tables(db)
    assert "indexed_blocks" not in tables(db)
    with ir.open(home) as cloud:
        (v2,) = [i for i in cloud.images() if i.name == "v2" and i.region == "bj"]
        assert v2.verify() == sha256_file(Path(sources["v2"]))
    assert user_version(db) == 2
    assert stored_blocks(home, "bj") == held["bj"]["blocks"]
    assert sorted(delta_bases(home, "bj")) == held["bj"]["deltas"]
