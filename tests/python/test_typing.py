"""Typing: the hand-written stub ``_core.pyi`` matches the built module, and mypy (configured
in pyproject.toml) finds no error in the package and catches misuse of its API."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import imagerelay
from imagerelay import _core

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "python" / "imagerelay"
STUB = PACKAGE / "_core.pyi"


# -- the stub, as ast sees it --------------------------------------------------------------
@dataclass
class StubFunction:
    args: list[str]  # without self
    defaults: int  # how many of the last args have a default
    returns: str
    kind: str  # "method", "staticmethod", "property"


@dataclass
class StubClass:
    functions: dict[str, StubFunction] = field(default_factory=dict)
    attributes: set[str] = field(default_factory=set)  # annotated: readable and writable


def _function(node: ast.FunctionDef) -> StubFunction:
    decorators = {d.id for d in node.decorator_list if isinstance(d, ast.Name)}
    kind = ("property" if "property" in decorators
            else "staticmethod" if "staticmethod" in decorators else "method")
    args = [a.arg for a in node.args.posonlyargs + node.args.args]
    if kind != "staticmethod" and args and args[0] == "self":
        args = args[1:]
    returns = ast.unparse(node.returns) if node.returns is not None else ""
    return StubFunction(args, len(node.args.defaults), returns, kind)


def parse_stub() -> tuple[dict[str, StubFunction], set[str], dict[str, StubClass]]:
    tree = ast.parse(STUB.read_text(), filename=str(STUB))
    functions: dict[str, StubFunction] = {}
    variables: set[str] = set()
    classes: dict[str, StubClass] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            functions[node.name] = _function(node)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            variables.add(node.target.id)
        elif isinstance(node, ast.ClassDef):
            cls = classes[node.name] = StubClass()
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    assert item.name not in cls.functions, f"{node.name}.{item.name} twice"
                    cls.functions[item.name] = _function(item)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    cls.attributes.add(item.target.id)
    return functions, variables, classes


# -- the module, as pybind11 describes it --------------------------------------------------
def split_top_level(text: str) -> list[str]:
    """Splits ``a: list[int, str], b: int = 4`` at the commas outside brackets."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def pybind_signature(obj: object, name: str) -> tuple[list[str], int, str]:
    """(argument names without self, how many have defaults, return type) from the docstring
    pybind11 writes: ``name(self: T, a: int, b: int = 4) -> R``."""
    first = (getattr(obj, "__doc__", None) or "").lstrip().splitlines()[0]
    m = re.fullmatch(rf"{re.escape(name)}\((.*)\) -> (.+)", first)
    assert m, f"no pybind11 signature for {name}: {first!r}"
    args, defaults = [], 0
    for part in split_top_level(m.group(1)):
        arg_name = part.split(":", 1)[0].strip()
        defaults += "=" in part
        args.append(arg_name)
    if args and args[0] == "self":
        args = args[1:]
    return args, defaults, m.group(2).strip()


def public(names: list[str]) -> set[str]:
    return {n for n in names if not n.startswith("_")}


def core_classes() -> dict[str, type]:
    return {n: getattr(_core, n) for n in dir(_core) if isinstance(getattr(_core, n), type)}


# -- the stub against the module -----------------------------------------------------------
def test_stub_names_match_the_module() -> None:
    functions, variables, classes = parse_stub()
    stub_names = set(functions) | variables | set(classes)
    missing = public(dir(_core)) - stub_names
    assert not missing, f"in imagerelay._core but not in _core.pyi: {sorted(missing)}"
    extra = stub_names - set(dir(_core))
    assert not extra, f"in _core.pyi but not in imagerelay._core: {sorted(extra)}"
    assert set(core_classes()) == set(classes)


@pytest.mark.parametrize("name", sorted(core_classes()))
def test_stub_class_matches_the_module(name: str) -> None:
    cls = core_classes()[name]
    stub = parse_stub()[2][name]
    stub_members = {n for n in set(stub.functions) | stub.attributes if not n.startswith("__")}
    missing = public(dir(cls)) - stub_members
    assert not missing, f"{name}: not in the stub: {sorted(missing)}"
    extra = stub_members - set(dir(cls))
    assert not extra, f"{name}: in the stub but not in the module: {sorted(extra)}"

    for member in sorted(public(dir(cls))):
        raw = cls.__dict__[member]
        where = f"{name}.{member}"
        if isinstance(raw, property):
            if raw.fset is None:
                assert member in stub.functions and stub.functions[member].kind == "property", \
                    f"{where} is read-only: declare it as a @property"
            else:
                assert member in stub.attributes, \
                    f"{where} is writable: declare it as an annotated attribute"
            continue
        assert member in stub.functions, f"{where} is a method in the module"
        fn = stub.functions[member]
        static = isinstance(raw, staticmethod)
        assert fn.kind == ("staticmethod" if static else "method"), \
            f"{where}: the stub says {fn.kind}, the module {'static' if static else 'method'}"
        args, defaults, returns = pybind_signature(getattr(cls, member), member)
        assert fn.args == args, f"{where}: the stub's arguments {fn.args}, the module's {args}"
        assert fn.defaults == defaults, f"{where}: {fn.defaults} defaults, the module {defaults}"
        assert (fn.returns == "None") == (returns == "None"), \
            f"{where} returns {returns}, the stub says {fn.returns}"

    # A constructor in the stub exactly when the class has one.
    constructible = "No constructor defined" not in _construct_error(cls)
    assert ("__init__" in stub.functions) == constructible, \
        f"{name}: constructible={constructible}, but the stub disagrees"


def _construct_error(cls: type) -> str:
    try:
        cls()
    except TypeError as e:
        return str(e)
    return ""


def test_stub_module_functions_match_the_module() -> None:
    functions, _, _ = parse_stub()
    for name, fn in functions.items():
        args, defaults, returns = pybind_signature(getattr(_core, name), name)
        assert fn.args == args and fn.defaults == defaults, name
        assert (fn.returns == "None") == (returns == "None"), name


def test_the_package_is_marked_typed() -> None:
    assert (PACKAGE / "py.typed").is_file()
    assert STUB.is_file()
    # The stub sits beside the compiled module's package: wheel.packages ships both.
    assert Path(imagerelay.__file__).resolve().parent == PACKAGE


# -- mypy ----------------------------------------------------------------------------------
def run_mypy(cache: Path, *paths: str) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("mypy")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(cache), "--no-error-summary", "--show-error-codes", *paths],
        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_mypy_config_is_strict_enough() -> None:
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    for option in ("disallow_untyped_defs", "check_untyped_defs", "warn_unused_ignores"):
        assert config.get(option) is True, f"[tool.mypy] {option} = true is expected"
    assert config.get("files") == ["python/imagerelay"]


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A fresh cache: a stale one can hide the stub's changes.
    return tmp_path_factory.mktemp("mypy-cache")


def test_mypy_passes_on_the_package(mypy_cache: Path) -> None:
    proc = run_mypy(mypy_cache)  # files = ["python/imagerelay"] from pyproject.toml
    assert proc.returncode == 0, f"mypy found errors:\n{proc.stdout}{proc.stderr}"


def test_mypy_passes_on_the_examples(mypy_cache: Path) -> None:
    examples = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*.py"))
    assert examples
    proc = run_mypy(mypy_cache, *examples)
    assert proc.returncode == 0, f"mypy found errors:\n{proc.stdout}{proc.stderr}"


def test_mypy_checks_code_written_against_the_api(mypy_cache: Path, tmp_path: Path) -> None:
    """The types reach users: good code passes, each misuse is reported on its line."""
    usage = tmp_path / "usage.py"
    usage.write_text(textwrap.dedent("""\
        from pathlib import Path

        import imagerelay as ir

        def ok(cloud: ir.Cloud) -> None:
            images: ir.ImageList = cloud.images("bj", image_type="Custom")
            first: ir.Image = images[0]
            rest: ir.ImageList = images[1:]
            jobs: ir.JobList = cloud.jobs(active=True)
            job: ir.Job = first.replicate(["gz", "su"])
            done: ir.Job = job.wait(timeout=1.5, progress=True)
            task: ir.Task = done.tasks["gz"]
            size: int = first.size
            path: Path = first.export("/tmp/x.raw")
            region: ir.Region = cloud.add_region("hk", name="Hong Kong")
            handle: ir.Handle = cloud.on("task.failed", lambda event: print(event.detail))
            handle.remove()
            del rest, jobs, task, size, path, region

        def bad(cloud: ir.Cloud) -> None:
            cloud.images(region=1)  # E
            cloud.replicate("m-1", to=3)  # E
            cloud.jobs(True)  # E
            n: str = cloud.image("m-1").size  # E
            cloud.open_sesame()  # E
            cloud.image("m-1").size = 3  # E
            sent: str = cloud.job("j-1").tasks["gz"].bytes_sent  # E
            del n, sent
        """))
    proc = run_mypy(mypy_cache, str(usage))
    expected = {i + 1 for i, line in enumerate(usage.read_text().splitlines())
                if line.endswith("# E")}
    reported = {int(m.group(1)) for m in re.finditer(r"usage\.py:(\d+): error", proc.stdout)}
    assert reported == expected, proc.stdout + proc.stderr
