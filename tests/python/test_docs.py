"""The docs in docs/ match the code: every error code, event type (and its detail fields),
public Python name, method signature, property, CLI subcommand and option, and every
transition of the state tables is documented; the README links inside the repository.

The facts come from the code itself: the C++ sources (error.hpp / error.cpp, state.cpp, the
event-emitting sources), the built package (``imagerelay.__all__``, the classes' properties
and signatures, ``imagerelay.errors``) and the CLI's argparse parser. A failure names what is
missing and where it should be documented.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

import imagerelay as ir
from imagerelay._fields import CoreField
from imagerelay import _core, cli, errors, playbook

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CPP_SRC = ROOT / "cpp" / "src"
PACKAGE = ROOT / "python" / "imagerelay"


def doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def sections(text: str, level: int) -> dict[str, str]:
    """Heading line -> its text up to the next heading of the same or a higher level."""
    out: dict[str, str] = {}
    heading_re = re.compile(r"^(#{1,%d}) (.*)$" % level, re.M)
    matches = list(heading_re.finditer(text))
    for i, m in enumerate(matches):
        if len(m.group(1)) != level:
            continue
        end = len(text)
        for later in matches[i + 1:]:
            if len(later.group(1)) <= level:
                end = later.start()
                break
        out[m.group(2)] = text[m.end():end]
    return out


def section_of(text: str, level: int, name: str) -> str:
    """The section whose heading names `name` in backticks (e.g. `Image`)."""
    found = [body for head, body in sections(text, level).items() if f"`{name}`" in head]
    assert found, f"no {'#' * level} heading naming `{name}`"
    return "\n".join(found)


# -- error codes ---------------------------------------------------------------------------
def python_raised_codes() -> dict[str, str]:
    """Codes the Python package raises itself (`code=` or a class's default_code): code ->
    class name."""
    out: dict[str, str] = {}
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"class (\w+)\([^)]*\):.*(?:\n    .*|\n)*?\n    default_code = "
                             r"\"([^\"]+)\"", text):
            out.setdefault(m.group(2), m.group(1))
        for m in re.finditer(r"raise (\w+)\((?:[^()]|\([^()]*\))*?code=\"([^\"]+)\"", text):
            out.setdefault(m.group(2), m.group(1))
    return out


def error_rows() -> dict[str, list[str]]:
    """code -> the cells of its row in errors.md's "Every code" table."""
    table = sections(doc("errors.md"), 2)["Every code"]
    rows: dict[str, list[str]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells
    return rows


def test_every_cpp_error_code_is_documented_with_its_class_and_status() -> None:
    # The core's table (cpp/src/base/error.cpp) is the one list of codes, kinds and statuses.
    rows = error_rows()
    for code in _core.error_codes():
        assert code in rows, f"error code {code} is missing from docs/errors.md"
        python_class = type(errors.error_for_code(code, "m")).__name__
        assert rows[code][1] == f"`{python_class}`", (
            f"docs/errors.md lists {code} as {rows[code][1]}, the code raises {python_class}")
        status = _core.error_http_status(code)
        assert rows[code][2] == str(status), (
            f"docs/errors.md gives {code} status {rows[code][2]}, the code {status}")
        assert len(rows[code][3]) > 10, f"docs/errors.md does not say when {code} is raised"


def test_every_python_error_code_and_class_is_documented() -> None:
    rows = error_rows()
    core = {c: type(errors.error_for_code(c, "m")).__name__ for c in _core.error_codes()}
    for code, cls in {**python_raised_codes(), **core}.items():
        assert code in rows, f"error code {code} (raised as {cls}) is missing from docs/errors.md"
    assert "Playbook.AssertionFailed" in python_raised_codes()  # the scan finds them
    text = doc("errors.md")
    classes = [n for n in errors.__all__ if n[0].isupper()] + [
        "PlaybookError", "PlaybookAssertionError"]
    for name in classes:
        assert f"`{name}`" in text, f"exception class {name} is missing from docs/errors.md"
        assert name in dir(errors) or name in dir(playbook)


# -- events --------------------------------------------------------------------------------
# An emit site: MakeEvent / MakeJobEvent / MakeTaskEvent(event_type::kName, ...).
EVENT_CALL = re.compile(r"Make(Task|Job|Region)?Event\(\s*event_type::(k\w+)")
EVENT_CONSTANT = re.compile(r'inline constexpr std::string_view (k\w+) = "([a-z]+\.[a-z_]+)"')


def _statement(text: str, start: int) -> str:
    """From `start` to the `;` that ends the statement (parentheses balanced)."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == ";" and depth <= 0:
            return text[start:i]
    return text[start:]


def _detail_keys(code: str) -> set[str]:
    keys = set(re.findall(r'\{\s*"([a-z_]+)"\s*,', code))           # {{"key", value}}
    keys |= set(re.findall(r'\bdetail\["([a-z_]+)"\]', code))         # detail["key"] = ...
    return keys


def emitted_events() -> dict[str, set[str]]:
    """Event type -> the detail keys the C++ code writes for it. The types are the core's
    list (_core.event_types(), src/events.hpp); the keys come from the emit sites."""
    names = dict(EVENT_CONSTANT.findall((CPP_SRC / "engine" / "events.hpp").read_text()))
    builders = (CPP_SRC / "engine" / "events.cpp").read_text()
    start = builders.index("Event MakeTaskEvent(")
    task_detail = _detail_keys(_function_body(builders, start))
    assert task_detail >= {"state", "bytes_done"}, "MakeTaskEvent() not found in events.cpp"
    events: dict[str, set[str]] = {t: set() for t in _core.event_types()}
    assert set(names.values()) == set(events), "events.hpp and _core.event_types() disagree"
    for path in sorted(CPP_SRC.rglob("*.cpp")):
        text = path.read_text()
        for m in EVENT_CALL.finditer(text):
            kind = names[m.group(2)]
            if m.group(1) == "Task":
                events[kind] |= task_detail
            else:
                events[kind] |= _detail_keys(_statement(text, m.start()))
    assert {"image.created", "task.progress", "job.finished"} <= set(events)
    return events


def test_every_event_type_and_detail_field_is_documented() -> None:
    text = doc("events.md")
    groups = sections(text, 2)
    for kind, keys in emitted_events().items():
        owners = [(head, body) for head, body in sections(text, 3).items()
                  if f"`{kind}`" in head]
        assert owners, f"event type {kind} has no ### section in docs/events.md"
        body = owners[0][1]
        group = next((g for h, g in groups.items() if owners[0][0] in g), "")
        intro = group.split("\n### ", 1)[0]
        for key in keys:
            assert f"`{key}`" in body or f"`{key}`" in intro, (
                f"detail field {key!r} of event {kind} is not named in docs/events.md")


def test_python_api_lists_the_event_types_the_engine_emits() -> None:
    # The CLI and python-api.md point at events.md; it must not list types the code lacks.
    documented = set(re.findall(r"^### .*", doc("events.md"), re.M))
    names = {n for line in documented for n in re.findall(r"`([a-z]+\.[a-z_]+)`", line)}
    extra = names - set(emitted_events())
    assert not extra, f"docs/events.md documents event types the code never emits: {extra}"


def _function_body(text: str, start: int) -> str:
    open_at = text.index("{", start)
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_at:i]
    return text[open_at:]


# -- the Python API ------------------------------------------------------------------------
def signature(fn: object, name: str) -> str:
    """`name(a, b=None, *, c="x")`: the form docs/python-api.md writes."""
    parts: list[str] = []
    star = False
    for p in inspect.signature(fn).parameters.values():  # type: ignore[arg-type]
        if p.name == "self":
            continue
        if p.kind == p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
            star = True
        elif p.kind == p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
        else:
            if p.kind == p.KEYWORD_ONLY and not star:
                parts.append("*")
                star = True
            parts.append(p.name if p.default is p.empty
                         else f"{p.name}={p.default!r}".replace("'", '"'))
    return f"{name}({', '.join(parts)})"


CLASSES = [ir.Cloud, ir.Image, ir.Job, ir.Task, ir.Playbook, ir.ImageList, ir.JobList,
           ir.Handle, ir.ScrubReport]


def test_every_public_name_is_documented() -> None:
    text = doc("python-api.md")
    for name in ir.__all__:
        assert f"`{name}`" in text or f"`{name}(" in text, (
            f"imagerelay.{name} is missing from docs/python-api.md")
    assert signature(ir.open, "open") in text, (
        f"docs/python-api.md lacks the signature {signature(ir.open, 'open')}")


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_method_property_argument_and_default_is_documented(cls: type) -> None:
    body = section_of(doc("python-api.md"), 2, cls.__name__)
    for name, value in vars(cls).items():
        if name.startswith("_") and name != "_repr_html_":
            continue
        if isinstance(value, (property, CoreField)):
            assert f"`{name}`" in body, (
                f"property {cls.__name__}.{name} is missing from docs/python-api.md")
        elif isinstance(value, (classmethod, staticmethod)) or inspect.isfunction(value):
            fn = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
            sig = signature(fn, name)
            if isinstance(value, classmethod):
                sig = sig.replace("(cls, ", "(").replace("(cls)", "()")
            assert sig in body, (f"docs/python-api.md lacks {cls.__name__}.{sig} (a method, "
                                 "its arguments or a default changed?)")


@pytest.mark.parametrize("cls", [ir.Region, ir.Account, ir.AccessKey, ir.Event, ir.ScrubReport,
                                 ir.Limits],
                         ids=lambda c: c.__name__)
def test_every_dataclass_field_is_documented(cls: type) -> None:
    body = section_of(doc("python-api.md"), 2 if cls is not ir.Limits else 3, cls.__name__)
    for f in dataclasses.fields(cls):
        assert f"`{f.name}`" in body, f"field {cls.__name__}.{f.name} is missing"
        if cls is ir.Limits:  # the table gives each default
            line = next(x for x in body.splitlines() if f"`{f.name}`" in x)
            assert f"`{f.default!r}`" in line, (
                f"docs/python-api.md gives Limits.{f.name} another default than {f.default!r}")


def test_policy_request_attributes_are_documented() -> None:
    body = section_of(doc("python-api.md"), 2, "PolicyRequest")
    attrs = re.findall(r"self\.(\w+)\s*:", inspect.getsource(ir.PolicyRequest.__init__))
    assert "action" in attrs
    for attr in attrs:
        assert f"`{attr}`" in body, f"PolicyRequest.{attr} is missing from docs/python-api.md"


def test_image_statuses_are_documented() -> None:
    text = (CPP_SRC / "base" / "model.cpp").read_text()
    statuses = re.findall(r"\{ImageStatus::k\w+,\s*\"(\w+)\"\}", text)
    assert "NotAvailable" in statuses
    row = next(x for x in section_of(doc("python-api.md"), 2, "Image").splitlines()
               if x.startswith("| `status`"))
    for status in set(statuses) - {"Deleted"}:
        assert f"`{status}`" in row, f"image status {status} is missing from Image.status"


# -- the command line ----------------------------------------------------------------------
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_commands() -> dict[str, argparse.ArgumentParser]:
    """"imagerelay cmd [action]" -> its parser."""
    out = {}
    for name, sub in _subparsers(cli.build_parser()).items():
        actions = _subparsers(sub)
        if actions:
            out.update({f"imagerelay {name} {a}": p for a, p in actions.items()})
        else:
            out[f"imagerelay {name}"] = sub
    assert "imagerelay replicate" in out and "imagerelay jobs wait" in out
    return out


def _check_arguments(parser: argparse.ArgumentParser, body: str, where: str,
                     skip: frozenset[str] = frozenset()) -> None:
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction,
                               argparse._VersionAction)) or action.dest in skip:
            continue
        if action.option_strings:
            long = max(action.option_strings, key=len)
            assert long in body, f"option {long} of {where} is missing from docs/cli.md"
            default = action.default
            if default not in (None, False, "", []) and not isinstance(default, bool):
                assert str(default) in body, (
                    f"docs/cli.md does not give the default {default!r} of {where} {long}")
        else:
            assert action.dest.upper() in body, (
                f"argument {action.dest.upper()} of {where} is missing from docs/cli.md")


def test_every_cli_subcommand_and_option_is_documented() -> None:
    text = doc("cli.md")
    top = cli.build_parser()
    # The global options, accepted after the subcommand too, are documented once.
    global_options = frozenset(a.dest for a in top._actions if a.option_strings)
    for command, parser in cli_commands().items():
        body = section_of(text, 3, command)
        _check_arguments(parser, body, command, skip=global_options)
    glob = sections(text, 2)["Global options"]
    _check_arguments(top, glob, "imagerelay")
    assert "--version" in glob


# -- state tables --------------------------------------------------------------------------
def cpp_transitions(table: str) -> set[tuple[str, str, str]]:
    text = (CPP_SRC / "rules" / "state.cpp").read_text()
    body = _function_body(text, text.index(f"{table}[] ="))
    rows = set(re.findall(r"\{\w+::k(\w+),\s*\w+::k(\w+),\s*\w+::k(\w+)\}", body))
    assert rows, f"{table} not found in state.cpp"
    return rows


def doc_transitions(heading: str) -> set[tuple[str, str, str]]:
    body = sections(doc("architecture.md"), 3)[heading]
    rows = set()
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if (line.startswith("|") and len(cells) >= 3 and cells[0] not in ("from", "")
                and not cells[0].startswith("-")):
            rows.add((cells[0], cells[1], cells[2]))
    return rows


@pytest.mark.parametrize("table,heading", [("kImageTable", "Image status"),
                                           ("kTaskTable", "Task state")])
def test_state_tables_match_state_cpp(table: str, heading: str) -> None:
    code, documented = cpp_transitions(table), doc_transitions(heading)
    assert code - documented == set(), f"transitions missing from docs/architecture.md"
    assert documented - code == set(), f"docs/architecture.md lists transitions state.cpp lacks"


# -- links ---------------------------------------------------------------------------------
def test_readme_links_inside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "../shared" not in readme
    for name in ("architecture.md", "python-api.md", "cli.md", "errors.md", "events.md"):
        assert f"docs/{name}" in readme, f"README.md does not link docs/{name}"


def test_relative_links_resolve() -> None:
    for path in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.name} links to missing {target}"
