"""Fuzzing the playbook loader and the ``${...}`` language (issue #16 point 3).

A playbook is outside input: whatever text it holds, ``Playbook.parse`` must either give a
playbook or raise ``PlaybookError`` (code ``InvalidParameter``), and a dry run of one that
parses must either report its steps or raise an ``ImageRelayError`` with a stable code; never a
raw ``KeyError``, ``TypeError``, ``RecursionError``..., and never a hang (each example has
``EXAMPLE_SECONDS``). Three sources of input: any text (with YAML's punctuation), any YAML
document (what ``yaml.safe_dump`` makes of random nested values) and near-valid playbooks
(the real step kinds and fields, with values and references that are often wrong).

Derandomized, ``IMAGERELAY_FUZZ_EXAMPLES`` examples per test (60 by default: about 20-30 s in
all on a shared 2-core machine); more, with fresh random inputs::

    IMAGERELAY_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest -q tests/python/test_fuzz_playbooks.py
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deadline import deadline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imagerelay as ir
from imagerelay.errors import ImageRelayError
from imagerelay.playbook import STEP_KINDS, Playbook, PlaybookError
from imagerelay.playbook.schema import ASSERT_PROPERTIES
from imagerelay.playbook.template import Ref, parse_template

EXAMPLES = int(os.environ.get("IMAGERELAY_FUZZ_EXAMPLES", "60"))
EXAMPLE_SECONDS = 20  # an example that runs longer is a hang
SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize="IMAGERELAY_FUZZ_EXAMPLES" not in os.environ,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much,
                           HealthCheck.function_scoped_fixture],
)
# Every stable code is documented, each in backticks.
ERRORS_DOC = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()


class Hang(BaseException):
    """An example ran past EXAMPLE_SECONDS."""


def bounded() -> contextlib.AbstractContextManager[None]:
    return deadline(EXAMPLE_SECONDS, Hang)


def parse_or_playbook_error(text: str) -> Playbook | None:
    """The playbook, or None when it was refused as a playbook must be."""
    with bounded():
        try:
            return Playbook.parse(text, path="fuzz.yaml")
        except PlaybookError as exc:
            assert exc.code == "InvalidParameter", exc.code
            assert exc.message.startswith("fuzz.yaml"), exc.message
            return None


def dry_run_or_stable_error(book: Playbook, cloud: ir.Cloud) -> None:
    with bounded():
        try:
            result = book.run(cloud, dry_run=True)
        except ImageRelayError as exc:
            assert f"`{exc.code}`" in ERRORS_DOC, f"{type(exc).__name__} {exc.code}: {exc}"
            assert exc.message, exc
            return
    assert len(result.steps) == len(book.steps)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ir.Cloud]:
    home = tmp_path_factory.mktemp("fuzz-home")
    c = ir.open(home / "home")
    c.add_account("team-b")
    try:
        yield c
    finally:
        c.close()


# -- any text --------------------------------------------------------------------------------
YAML_BITS = ["\n", "  ", "- ", ": ", "{", "}", "[", "]", ",", "&a ", "*a", "!!", "!!python/object ",
             "? ", "|", ">", "'", '"', "#", "%YAML 1.1\n", "---\n", "...\n", "<<: ", "${", "}",
             "$${", "name: x\n", "steps:\n", "vars:\n", "account: ", "import:", "replicate:",
             "id: ", "as: ", "${vars.", "${a.b}", "\t", "\\", "\x00", "\ufeff", "0x", "1e9999",
             "2020-99-99", "~", "null", "true", "&x [*x]"]
texts = st.lists(st.one_of(st.sampled_from(YAML_BITS), st.text(max_size=12)),
                 max_size=40).map("".join)


@SETTINGS
@given(text=texts)
def test_any_text_is_a_playbook_or_a_playbook_error(text: str) -> None:
    parse_or_playbook_error(text)


# -- any YAML document -----------------------------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["${vars.x}", "${a.id}", "$${", "${"]))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.text(max_size=8), st.integers()),
                                            inner, max_size=4)),
    max_leaves=30)


@SETTINGS
@given(document=documents)
def test_any_yaml_document_is_a_playbook_or_a_playbook_error(document: Any) -> None:
    parse_or_playbook_error(yaml.safe_dump(document, allow_unicode=True))


# -- near-valid playbooks, run dry -----------------------------------------------------------
STEP_IDS = ["golden", "copies", "seen", "a", "b"]
references = st.builds(
    lambda head, rest: "${" + ".".join([head, *rest]) + "}",
    st.sampled_from([*STEP_IDS, "vars", "nope", "", " "]),
    st.lists(st.sampled_from(["id", "copies", "gz", "bj", "size", "digest", "x", "0", "_x",
                              "image", "job", "state", "name", "1e3", ""]), max_size=3))
field_values = st.one_of(
    references,
    st.builds(lambda a, r, b: a + r + b, st.text(max_size=5), references, st.text(max_size=5)),
    st.sampled_from(["bj", "gz", "su", "default", "team-b", "ghost", "m-00000000", "j-1",
                     "golden.raw", "/nonexistent/file.raw", "http://127.0.0.1:9/x.img", "",
                     "Available", "Sharing", "$${", "${", "}"]),
    st.integers(min_value=-5, max_value=10**20), st.floats(allow_nan=True), st.booleans(),
    st.none(), st.lists(st.sampled_from(["gz", "su", "bj", "team-b", "${vars.who}"]), max_size=3),
    st.dictionaries(st.sampled_from(["a", "id", "${x}"]), st.sampled_from(["1", "${vars.x}"]),
                    max_size=2))


@st.composite
def steps(draw: st.DrawFn, index: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(STEP_KINDS)))
    spec = STEP_KINDS[kind]
    fields = list(spec.required)
    if spec.one_of:
        fields.append(draw(st.sampled_from(spec.one_of)))
    fields += draw(st.lists(st.sampled_from(
        [*spec.optional, *(ASSERT_PROPERTIES if kind == "assert" else ()), "bogus"]),
        max_size=2, unique=True))
    if draw(st.integers(0, 9)) == 0 and fields:
        fields.pop(draw(st.integers(0, len(fields) - 1)))  # a required field missing
    args = {name: draw(field_values) for name in fields}
    step: dict[str, Any] = {kind: args if draw(st.integers(0, 19)) else draw(field_values)}
    if draw(st.booleans()):
        step["id"] = STEP_IDS[index] if draw(st.integers(0, 5)) else draw(field_values)
    if draw(st.integers(0, 4)) == 0:
        step["as"] = draw(field_values)
    return step


@st.composite
def playbooks(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(0, 4))
    book: dict[str, Any] = {
        "name": draw(st.one_of(st.just("fuzz-run"), field_values)),
        "steps": [draw(steps(i)) for i in range(n)],
    }
    if draw(st.booleans()):
        book["account"] = draw(st.one_of(st.just("default"), field_values))
    if draw(st.booleans()):
        book["vars"] = draw(st.dictionaries(st.sampled_from(["x", "who", "image_file", "cfg"]),
                                            field_values, max_size=3))
    if draw(st.integers(0, 9)) == 0:
        book[draw(st.sampled_from(["bogus", "Steps", "description"]))] = draw(field_values)
    return book


@SETTINGS
@given(book=playbooks())
def test_near_valid_playbooks_load_and_dry_run_or_fail_with_stable_codes(
        book: dict[str, Any], cloud: ir.Cloud) -> None:
    loaded = parse_or_playbook_error(yaml.safe_dump(book, allow_unicode=True, sort_keys=False))
    if loaded is not None:
        dry_run_or_stable_error(loaded, cloud)


# -- the template language -------------------------------------------------------------------
template_bits = ["${", "}", "$${", "$", "{", ".", "vars", "a", "-", "_", " ", "${vars.x}",
                 "${a.b.c}", "\n", "\x00", "é"]
template_strings = st.lists(st.one_of(st.sampled_from(template_bits), st.text(max_size=4)),
                            max_size=20).map("".join)


@SETTINGS
@given(text=template_strings)
def test_template_strings_parse_or_fail_with_a_reason(text: str) -> None:
    with bounded():
        try:
            parts = parse_template(text)
        except ValueError as exc:
            assert "reference" in str(exc)
            return
    for part in parts:
        assert isinstance(part, (str, Ref)) and part != ""
    assert all(isinstance(p, str) or p.segments for p in parts)


@SETTINGS
@given(text=template_strings)
def test_template_strings_in_a_playbook_fail_as_playbook_errors(text: str, cloud: ir.Cloud) -> None:
    book = {"name": "fuzz-template", "vars": {"x": "bj", "a": {"b": {"c": "1"}}},
            "steps": [{"id": "a", "rename": {"image": "m-00000000", "name": text}},
                      {"assert": {"image": "${a.image.id}", "description": text}}]}
    loaded = parse_or_playbook_error(yaml.safe_dump(book, allow_unicode=True))
    if loaded is not None:
        dry_run_or_stable_error(loaded, cloud)


def test_the_examples_still_parse(tmp_path: Path) -> None:
    """The fuzzing above is no use if a good playbook no longer loads."""
    root = Path(__file__).resolve().parents[2]
    for path in sorted((root / "examples" / "playbooks").glob("*.yaml")):
        assert Playbook.load(path).steps
