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


def test_the_python_modules_import_without_cycles() -> None:
    # Imports at module level only (not under TYPE_CHECKING, not inside functions): what runs
    # when the package is imported.
    import ast

    package = ROOT / "python" / "imagerelay"
    graph: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        here = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
        deps: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                base = list(here[:len(here) - node.level + 1])
                if node.module:
                    base += node.module.split(".")
                if node.module:
                    deps.add(".".join(base))
                else:  # `from . import x`: the module x, not the package being imported
                    deps.update(".".join([*base, alias.name]) for alias in node.names)
        graph[name] = deps
    modules = set(graph)

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for dep in graph.get(node, ()):
                if dep not in modules:
                    continue
                if dep == start:
                    return [*path, dep]
                if dep not in path:
                    stack.append((dep, [*path, dep]))
        return None

    cycles = [c for m in sorted(modules) if m and (c := cycle_from(m))]
    assert not cycles, "import cycle: " + " -> ".join(cycles[0])


def test_the_cpp_tree_is_formatted() -> None:
    # .clang-format is the house style; scripts/install-deps.sh installs clang-format.
    import shutil
    import subprocess

    clang_format = shutil.which("clang-format")
    assert clang_format, "clang-format is missing: run scripts/install-deps.sh"
    files = subprocess.run(
        ["git", "ls-files", "cpp/*.cpp", "cpp/*.hpp", "bindings/*.cpp", "bindings/*.hpp",
         "tests/cpp/*.cpp", "tests/cpp/*.hpp", "tests/fuzz/*.cpp", "tests/fuzz/*.hpp",
         "bench/*.cpp"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert files
    proc = subprocess.run([clang_format, "--dry-run", "--Werror", *files], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, (
        "not clang-formatted (clang-format -i FILE):\n" + proc.stderr[:3000])
