"""The source tree shows the architecture (docs/architecture.md "Source tree"): each area of
cpp/src includes only the areas below it, and the bindings only the public headers."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "cpp" / "src"
INCLUDE = re.compile(r'^#include "([^"]+)"', re.M)

# area -> the areas its files may include (besides itself and cpp/include/imagerelay/).
ALLOWED = {
    "base": set(),
    "net": {"base"},
    "rules": {"base"},
    "catalog": {"base", "rules"},
    "store": {"base", "net"},
    "dataplane": {"base", "net", "store"},
    "engine": {"base", "net", "rules", "catalog", "store", "dataplane"},
}


def test_every_source_file_lives_in_an_area_with_a_readme() -> None:
    assert not [p.name for p in SRC.iterdir() if p.is_file()], "files at the top of cpp/src"
    assert {p.name for p in SRC.iterdir() if p.is_dir()} == set(ALLOWED)
    for area in ALLOWED:
        assert (SRC / area / "README.md").is_file(), f"cpp/src/{area} has no README.md"


def test_areas_include_only_the_areas_below_them() -> None:
    wrong = []
    for area, allowed in ALLOWED.items():
        for path in sorted((SRC / area).glob("*.[ch]pp")):
            for header in INCLUDE.findall(path.read_text()):
                target = header.split("/")[0] if "/" in header else None
                assert target is not None, f"{path}: include {header!r} names no area"
                if target in ("imagerelay", area) or target in allowed:
                    continue
                wrong.append(f"{path.relative_to(ROOT)} includes {header}")
    assert not wrong, "\n".join(wrong)


def test_the_bindings_include_only_the_public_headers() -> None:
    for path in sorted((ROOT / "bindings").glob("*.[ch]pp")):
        for header in INCLUDE.findall(path.read_text()):
            assert header == "bindings.hpp" or header.startswith("imagerelay/"), (
                f"{path.relative_to(ROOT)} includes {header}")
