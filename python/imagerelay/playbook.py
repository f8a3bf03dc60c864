"""YAML playbooks: a replicate-then-share rollout written down once, re-runnable at will.

    import imagerelay as ir
    with ir.open() as cloud:
        result = ir.Playbook.load("rollout.yaml").run(cloud, vars={"image_file": "v2.raw"})
        print(result.outputs["copies"].copies)

A playbook (API.md "Playbooks") has a ``name``, an acting ``account``, ``vars`` and
``steps``; each step is one of the kinds in :data:`STEP_KINDS`, with an optional ``id:`` (so
that later steps can use its output as ``${id.attribute...}``) and an optional
``as: <account>``.

Re-running a playbook with the same ``name`` continues it and never duplicates an import, a
copy or a share, also after a run that failed or was killed half-way:

- The run state lives in ``<home>/playbooks/<name>.json``, written atomically after every
  step. It maps a step (its id, or ``#<n>``) and the fingerprint of its resolved arguments
  (kind, acting account, arguments after ``${...}`` substitution, absolute paths) to what the
  step produced, as ids. A step whose arguments changed runs again.
- ``import`` records the new image's id as soon as the import starts. On a re-run the
  recorded image is reused when it is ``Available`` or ``Replicating`` (waited for while
  ``Creating``); a ``CreateFailed`` one (e.g. the importing process was killed) is deleted
  and the file imported again.
- ``replicate`` passes the engine a client token derived from (playbook name, step, resolved
  arguments, attempt), so a run killed between starting the job and recording it gets the
  same job back; a recorded job still running is waited for (its copies resume under this
  engine). A job that ended ``Failed`` is retried on the next run for the regions that have
  no good copy yet (their ``CreateFailed`` copies are deleted); the step's output then shows
  the copies of every attempt.
- ``share`` / ``unshare`` touch only the accounts that are not shared / still shared;
  ``rename`` does nothing if the name is already right; ``delete`` does nothing if the image
  is gone; ``cancel`` does nothing if the copy was already cancelled.
- ``export`` is skipped when the state records it done and the file is still there with the
  image's size; otherwise the image is exported again (exporting is cheap, and it is the
  way to get the file back). It overwrites a file that it wrote in an earlier run (also of
  another image, after its arguments changed), and any other existing file only with
  ``force: true``, as ``imagerelay export --force``.
- ``wait`` and ``assert`` change nothing. One that passed before with the same arguments
  is skipped, unless an earlier step of this run changed something; then it checks again.
- ``delete`` treats an image the acting account cannot see as gone (the engine answers
  ``NoSuchImage`` for both).

A dry run (``dry_run=True``, ``imagerelay run --dry-run``) resolves every reference,
validates every step against the catalog (regions, accounts, images, files) and reports what
would be done, without writing anything: neither the catalog nor the state file. The
outputs of steps that would run are placeholders such as ``<golden.id>``; checks that depend
on them are skipped.

Every error names the playbook file, the line and the step. An error of a step keeps its
class and code (e.g. ``ValidationError`` ``Image.InvalidAccount``) and its message is
prefixed with ``<file>:<line>: step <id or #n> (<kind>): ``.

A playbook is at most 1 MiB and nested at most 64 levels deep; with its aliases expanded
it holds at most 100,000 values and 16 MiB of text, and so may what the ``${...}``
references of one run resolve to. Past that it is a ``PlaybookError``, at once.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ._checks import check_timeout, shown
from .errors import (
    ConflictError,
    ImageRelayError,
    NotFoundError,
    ReplicationFailedError,
    TransferError,
    ValidationError,
)
from .image import Image
from .job import Job, Task

if TYPE_CHECKING:
    from .cloud import Cloud

__all__ = [
    "STEP_KINDS", "GoneImage", "Placeholder", "Playbook", "PlaybookAssertionError",
    "PlaybookError", "PlaybookResult", "StepLog", "parse_var",
]

log = logging.getLogger("imagerelay")

#: Step statuses in a :class:`StepLog`.
DONE = "done"
SKIPPED = "skipped"
DRY_RUN = "dry-run"

_STATE_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_STEP_ID_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_TEMPLATE_RE = re.compile(r"\$\$\{|\$\{([^{}]*)\}|\$\{")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

# Bounds on what a playbook file makes the loader and the runner do. A real playbook is a
# few KiB; a hostile one (nested aliases, a "billion laughs", 5,000 nested brackets) fails
# at once with a PlaybookError instead of running for minutes or overflowing the stack.
_MAX_FILE_BYTES = 2**20
_MAX_DEPTH = 64  # nesting of collections, aliases expanded
# Values and characters of the document with its aliases expanded; and, counted apart, of
# what the ${...} references of one run resolve to.
_MAX_VALUES = 100_000
_MAX_TEXT = 16 * 2**20

#: The image properties an ``assert`` step may check.
ASSERT_PROPERTIES = ("id", "name", "region", "type", "owner", "status", "size", "digest",
                     "format", "os_type", "os_name", "os_version", "os_arch", "description",
                     "source_image_id", "source_region", "error", "progress")


@dataclasses.dataclass(frozen=True)
class _Spec:
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()  # exactly one of these must be given

    @property
    def fields(self) -> tuple[str, ...]:
        return self.required + self.optional + self.one_of


_IMPORT_OPTIONS = ("os_type", "os_name", "os_version", "os_arch", "format", "description")

#: The step kinds and their fields (every kind also takes ``as``).
STEP_KINDS: dict[str, _Spec] = {
    "import": _Spec(required=("source", "region", "name"), optional=_IMPORT_OPTIONS),
    "replicate": _Spec(required=("image", "to"), optional=("name", "wait", "timeout")),
    "wait": _Spec(optional=("timeout",), one_of=("job", "image")),
    "cancel": _Spec(optional=("region",), one_of=("image", "job")),
    "share": _Spec(required=("image", "accounts")),
    "unshare": _Spec(required=("image", "accounts")),
    "rename": _Spec(required=("image", "name")),
    "export": _Spec(required=("image", "path"), optional=("force",)),
    "delete": _Spec(required=("image",)),
    "assert": _Spec(required=("image",), optional=ASSERT_PROPERTIES),
}

_CHECKS = ("wait", "assert")  # kinds that change nothing
_STR_FIELDS = {"source", "region", "name", "path", *_IMPORT_OPTIONS}
_LIST_FIELDS = {"to", "accounts"}


# -- errors ----------------------------------------------------------------------------------
class PlaybookError(ValidationError):
    """A playbook that cannot run as written: bad YAML, an unknown step kind, a missing field,
    a reference to a missing step or var. Code ``InvalidParameter``.

    ``path``, ``line`` and ``step`` (the step's id or ``#n``, or ``None``) say where.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 step: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        self.step = step


class PlaybookAssertionError(ImageRelayError):
    """An ``assert`` step found an image property other than expected."""

    default_code = "Playbook.AssertionFailed"
    default_status = 412


class _LimitError(ValueError):
    """Resolved arguments past the bounds: an error even for a step done before."""


# -- values ----------------------------------------------------------------------------------
class Placeholder:
    """In a dry run, the not yet known output of a step that would run (``<golden.id>``)."""

    def __init__(self, text: str, *, display: str | None = None) -> None:
        self.text = text
        self.display = display if display is not None else f"<{text}>"

    def child(self, segment: str) -> Placeholder:
        return Placeholder(f"{self.text}.{segment}")

    def __str__(self) -> str:
        return self.display

    def __repr__(self) -> str:
        return f"Placeholder({self.display!r})"


@dataclasses.dataclass(frozen=True)
class GoneImage:
    """The output of an earlier run's step whose image no longer exists (e.g. deleted by a
    later step). Only its ``id`` is known."""

    id: str

    def __str__(self) -> str:
        return self.id


class _RetriedJob(Job):
    """A replicate step's output after a retry: the latest job, whose ``tasks`` and ``copies``
    also show the regions copied by earlier attempts."""

    def __init__(self, latest: Job, earlier: list[Job]) -> None:
        super().__init__(latest._cloud, latest._info)
        self._earlier = earlier

    @property
    def tasks(self) -> dict[str, Task]:
        out: dict[str, Task] = {}
        for job in self._earlier:
            out.update(job.tasks)
        out.update(super().tasks)
        return out

    @property
    def copies(self) -> dict[str, Image]:
        out: dict[str, Image] = {}
        for job in self._earlier:
            out.update({r: im for r, im in job.copies.items() if im.status == "Available"})
        out.update(super().copies)
        return out

    @property
    def job_ids(self) -> list[str]:
        return [j.id for j in self._earlier] + [self.id]


def _has_placeholder(value: Any) -> bool:
    if isinstance(value, Placeholder):
        return True
    if isinstance(value, Mapping):
        return any(_has_placeholder(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_placeholder(v) for v in value)
    return False


def _plain(value: Any) -> Any:
    """A JSON-able form of a resolved value: objects become their ids."""
    if isinstance(value, (Image, Job, GoneImage)):
        return value.id
    if isinstance(value, (Path, Placeholder)):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def parse_var(text: str) -> tuple[str, str]:
    """``"K=V"`` -> ``("K", "V")`` (the command line's ``--var``)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"a var is written NAME=VALUE, got {text!r}")
    return key, value


# -- YAML with line numbers --------------------------------------------------------------------
class _Map(dict[Any, Any]):
    """A YAML mapping that remembers its line and the line of each value."""

    line: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[Any, int] = {}


def _over_limits(values: int, chars: int) -> str | None:
    """Which bound a count of values and characters passes, if any."""
    if values > _MAX_VALUES:
        return f"more than {_MAX_VALUES:,} values"
    if chars > _MAX_TEXT:
        return f"more than {_MAX_TEXT // 2**20} MiB of text"
    return None


@dataclasses.dataclass(frozen=True)
class _Extent:
    """The size of a YAML node with its aliases expanded."""

    values: int
    chars: int
    height: int  # levels of nesting, the node's own included


class _Loader(yaml.SafeLoader):
    """A safe loader whose mappings remember line numbers and reject duplicate keys.

    While it composes the document it counts the document as if every alias were expanded
    (an alias adds the extent of its anchor, so counting costs nothing extra) and refuses it
    past the bounds, before anything walks the expanded values.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._extents: dict[yaml.Node, _Extent] = {}  # of the anchored nodes
        self._depth = 0  # of the node being composed
        self._reach = 0  # the deepest level under it so far, aliases expanded
        self._values = 0
        self._chars = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        depth = self._depth + 1
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            extent = self._extents.get(node)
            if extent is None:  # an alias inside its own anchor: `&a [*a]`
                raise yaml.composer.ComposerError(
                    None, None, f"found a recursive alias *{event.anchor}", event.start_mark)
            self._count(extent, depth, event.start_mark)
            return node
        start = (self._values, self._chars)
        chars = len(event.value) if isinstance(event, yaml.ScalarEvent) else 0
        self._count(_Extent(1, chars, 1), depth, event.start_mark)
        outer_reach, self._depth, self._reach = self._reach, depth, depth
        node = super().compose_node(parent, index)
        if event.anchor is not None:
            self._extents[node] = _Extent(self._values - start[0], self._chars - start[1],
                                          self._reach - depth + 1)
        self._depth, self._reach = depth - 1, max(outer_reach, self._reach)
        return node

    def _count(self, extent: _Extent, depth: int, mark: yaml.Mark) -> None:
        """Adds a node (or an alias's expansion) at ``depth``; refuses it past the bounds."""
        self._values += extent.values
        self._chars += extent.chars
        self._reach = max(self._reach, depth + extent.height - 1)
        problem = _over_limits(self._values, self._chars)
        if self._reach > _MAX_DEPTH:
            problem = f"nested more than {_MAX_DEPTH} levels deep (aliases expanded)"
        elif problem:
            problem = f"too large: with its aliases expanded, the playbook holds {problem}"
        if problem:
            raise yaml.composer.ComposerError(None, None, problem, mark)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # A scalar Python cannot hold (an int of 5,000 digits, the date 2020-99-99) is bad
        # YAML at its line, not a ValueError from the depths of the loader.
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {shown(node.value)}: {exc}", node.start_mark) from exc


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Iterator[_Map]:
    data = _Map()
    data.line = node.start_mark.line + 1
    yield data
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError as exc:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                "found an unhashable key", key_node.start_mark) from exc
        if key in data:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found a duplicate key {key!r}", key_node.start_mark)
        data[key] = loader.construct_object(value_node, deep=True)
        data.lines[key] = key_node.start_mark.line + 1


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)


# -- references ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Ref:
    text: str
    segments: tuple[str, ...]

    @property
    def head(self) -> str:
        return self.segments[0]


def _parse_template(s: str) -> list[str | _Ref]:
    """Splits a string into literal parts and ``${...}`` references (``$${`` is a literal
    ``${``)."""
    parts: list[str | _Ref] = []
    pos = 0
    for m in _TEMPLATE_RE.finditer(s):
        parts.append(s[pos:m.start()])
        token = m.group(0)
        if token == "$${":
            parts.append("${")
        elif m.group(1) is None:
            raise ValueError(f"unterminated reference in {s!r}: a reference is ${{name...}}")
        else:
            text = m.group(1).strip()
            segments = tuple(text.split("."))
            if not text or not all(_SEGMENT_RE.match(seg) for seg in segments):
                raise ValueError(f"bad reference ${{{m.group(1)}}}: use ${{vars.NAME}} or "
                                 "${STEP_ID.attribute...} (letters, digits, '_' and '-')")
            parts.append(_Ref(text, segments))
        pos = m.end()
    parts.append(s[pos:])
    return [p for p in parts if p != ""]


def _refs_in(value: Any) -> Iterator[_Ref]:
    if isinstance(value, str):
        for part in _parse_template(value):
            if isinstance(part, _Ref):
                yield part
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _refs_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _refs_in(v)


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return shown(value)
    return f"{type(value).__name__} {shown(_plain(value))}"


def _walk(value: Any, ref: _Ref) -> Any:
    """Follows ``ref.segments[1:]`` through dict keys, list indexes and attributes."""
    for i, seg in enumerate(ref.segments[1:], start=1):
        where = ".".join(ref.segments[:i])
        if isinstance(value, Placeholder):
            value = value.child(seg)
        elif isinstance(value, Mapping):
            if seg not in value:
                keys = ", ".join(str(k) for k in value) or "none"
                raise ValueError(f"${{{ref.text}}}: {where} has no key {seg!r} "
                                 f"(keys: {keys})")
            value = value[seg]
        elif isinstance(value, (list, tuple)) and seg.isdigit():
            if int(seg) >= len(value):
                raise ValueError(f"${{{ref.text}}}: {where} has {len(value)} items, "
                                 f"no item {seg}")
            value = value[int(seg)]
        elif isinstance(value, GoneImage) and seg != "id":
            raise ValueError(f"${{{ref.text}}}: image {value.id} no longer exists; only its "
                             "id is known")
        elif not seg.startswith("_") and not isinstance(value, (str, int, float, bool)) \
                and value is not None and hasattr(value, seg):
            value = getattr(value, seg)
        else:
            raise ValueError(f"${{{ref.text}}}: {where} ({_describe(value)}) has no "
                             f"attribute or key {seg!r}")
    return value


def _check_size(size: int, where: str) -> None:
    if size > _MAX_FILE_BYTES:
        raise PlaybookError(f"{where}: the playbook is larger than "
                            f"{_MAX_FILE_BYTES // 2**20} MiB; a playbook is a short list of "
                            "steps", path=where)


# -- the playbook ----------------------------------------------------------------------------
@dataclasses.dataclass
class Step:
    """One step of a playbook as written (its arguments still hold ``${...}``)."""

    index: int
    kind: str
    args: dict[str, Any]
    line: int
    id: str | None = None
    account: Any = None  # the step's ``as:``, possibly a reference
    arg_lines: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str:
        """The step's id, or ``#<n>`` (1-based) for a step without one."""
        return self.id if self.id is not None else f"#{self.index}"


@dataclasses.dataclass
class StepLog:
    """What one step did: ``status`` is ``done``, ``skipped`` (already done by an earlier
    run, or nothing to do) or ``dry-run`` (would run)."""

    index: int
    id: str | None
    kind: str
    status: str
    detail: str
    account: str
    line: int

    @property
    def key(self) -> str:
        return self.id if self.id is not None else f"#{self.index}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return f"{self.status:8} {self.key:14} {self.kind:9} {self.detail}"


class PlaybookResult:
    """The result of :meth:`Playbook.run`.

    ``outputs`` maps each step (its id, or ``#n``) to what it produced: an :class:`Image`
    (import, share, unshare, rename, assert, wait on an image), a :class:`Job` (replicate,
    wait on a job, cancel of a job), a :class:`pathlib.Path` (export), an image id (delete,
    cancel of a copy), or a :class:`Placeholder` in a dry run. ``steps`` is the step log.
    """

    def __init__(self, name: str, *, dry_run: bool, state_path: Path) -> None:
        self.name = name
        self.dry_run = dry_run
        self.state_path = state_path
        self.outputs: dict[str, Any] = {}
        self.steps: list[StepLog] = []

    def output_ids(self) -> dict[str, Any]:
        """The outputs as ids and strings (JSON-able)."""
        return {k: _plain(v) for k, v in self.outputs.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dry_run": self.dry_run, "state_file": str(self.state_path),
                "outputs": self.output_ids(), "steps": [s.to_dict() for s in self.steps]}

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for s in self.steps:
            counts[s.status] = counts.get(s.status, 0) + 1
        parts = ", ".join(f"{n} {status}" for status, n in counts.items())
        return f"playbook {self.name}: {len(self.steps)} steps ({parts or 'none'})"

    def __repr__(self) -> str:
        return f"<PlaybookResult {self.summary()}>"


class Playbook:
    """A parsed playbook. :meth:`load` reads a file; :meth:`run` runs it against a cloud."""

    def __init__(self, name: str, steps: list[Step], *, account: str | None = None,
                 vars: dict[str, Any] | None = None, path: Path | None = None,
                 lines: dict[str, int] | None = None) -> None:
        self.name = name
        self.steps = steps
        self.account = account
        self.vars: dict[str, Any] = dict(vars or {})
        self.path = path
        self._lines = dict(lines or {})

    # -- loading ------------------------------------------------------------------------
    @property
    def base_dir(self) -> Path:
        """Relative paths (import source, export path) are relative to this folder."""
        return (self.path.parent if self.path is not None else Path.cwd()).absolute()

    @property
    def _where(self) -> str:
        return str(self.path) if self.path is not None else "<playbook>"

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Playbook:
        """Reads and checks a playbook file (``PlaybookError`` naming the file and line)."""
        p = Path(path)
        try:
            with p.open("rb") as f:
                data = f.read(_MAX_FILE_BYTES + 1)  # no more: it may be /dev/zero
        except OSError as exc:
            raise PlaybookError(f"{p}: cannot read the playbook: {exc.strerror or exc}",
                                path=str(p)) from exc
        _check_size(len(data), str(p))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PlaybookError(f"{p}: the playbook is not UTF-8 text: {exc}",
                                path=str(p)) from exc
        return cls.parse(text, path=p)

    @classmethod
    def parse(cls, text: str, *, path: str | os.PathLike[str] | None = None) -> Playbook:
        """Parses playbook text; ``path`` names it in errors and anchors relative paths."""
        p = Path(path) if path is not None else None
        where = str(p) if p is not None else "<playbook>"
        _check_size(len(text), where)
        try:
            data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            line = mark.line + 1 if mark is not None else None
            loc = f"{where}:{line}:{mark.column + 1}" if mark is not None else where
            problem = getattr(exc, "problem", None) or str(exc)
            context = getattr(exc, "context", None)
            detail = f"{context}, {problem}" if context else problem
            raise PlaybookError(f"{loc}: bad YAML: {detail}", path=where, line=line) from exc
        return cls._from_data(data, p, where)

    @classmethod
    def _from_data(cls, data: Any, path: Path | None, where: str) -> Playbook:
        def fail(line: int | None, message: str, step: Step | None = None,
                 step_label: str | None = None) -> PlaybookError:
            loc = f"{where}:{line}" if line else where
            label = step_label
            if step is not None:
                label = f"step {step.key} ({step.kind})"
            prefix = f"{loc}: {label}: " if label else f"{loc}: "
            return PlaybookError(prefix + message, path=where, line=line,
                                 step=step.key if step is not None else None)

        if not isinstance(data, _Map):
            raise fail(1, "a playbook is a mapping with name, account, vars and steps")
        known = {"name", "account", "vars", "steps", "description"}
        for key in data:
            if key not in known:
                raise fail(data.lines.get(key), f"unknown key {key!r}; a playbook has "
                                                "name, account, vars, steps, description")
        name = data.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise fail(data.lines.get("name", data.line),
                       f"name {name!r} is missing or invalid: it names the run (and its state "
                       "file): 1-128 characters, letters, digits, '-', '_', '.'")
        account = data.get("account")
        if account is not None and not isinstance(account, str):
            raise fail(data.lines.get("account"), f"account must be an account id, got "
                                                  f"{_describe(account)}")
        vars_ = data.get("vars") or {}
        if not isinstance(vars_, Mapping):
            raise fail(data.lines.get("vars"), "vars must be a mapping of names to values")
        for k in vars_:
            if not isinstance(k, str) or not _SEGMENT_RE.match(k):
                raise fail(data.lines.get("vars"), f"var name {k!r} is invalid: use letters, "
                                                   "digits, '_' and '-'")
        raw_steps = data.get("steps")
        if not isinstance(raw_steps, list) or not raw_steps:
            raise fail(data.lines.get("steps", data.line), "steps must be a non-empty list")

        steps: list[Step] = []
        ids: dict[str, int] = {}
        for index, raw in enumerate(raw_steps, start=1):
            line = raw.line if isinstance(raw, _Map) else data.lines.get("steps", 0)
            label = f"step #{index}"
            if not isinstance(raw, _Map):
                raise fail(line, f"a step is a mapping such as {{import: {{...}}}}, got "
                                 f"{_describe(raw)}", step_label=label)
            kinds = [k for k in raw if k in STEP_KINDS]
            others = [k for k in raw if k not in STEP_KINDS and k not in ("id", "as")]
            if others or len(kinds) != 1:
                step_id = raw.get("id")
                label = f"step {step_id}" if isinstance(step_id, str) else label
                if others:
                    bad = others[0]
                    raise fail(raw.lines.get(bad, line),
                               f"unknown step kind {bad!r}; use one of "
                               f"{', '.join(STEP_KINDS)} (and optional id, as)",
                               step_label=label)
                raise fail(line, "a step has exactly one kind: " + (
                    ", ".join(kinds) if kinds else "none given; use one of "
                    + ", ".join(STEP_KINDS)), step_label=label)
            kind = kinds[0]
            step_id = raw.get("id")
            if step_id is not None and (not isinstance(step_id, str)
                                        or not _STEP_ID_RE.match(step_id)
                                        or step_id == "vars"):
                raise fail(raw.lines.get("id", line),
                           f"step id {step_id!r} is invalid: a letter or '_', then letters, "
                           "digits, '_', '-' (and not 'vars')", step_label=f"{label} ({kind})")
            args_raw = raw[kind]
            if args_raw is None:
                args_raw = _Map()
            step = Step(index=index, kind=kind, args={}, line=line, id=step_id)
            if not isinstance(args_raw, _Map):
                raise fail(raw.lines.get(kind, line), f"the arguments of {kind} are a mapping "
                           f"of {', '.join(STEP_KINDS[kind].fields)}, got "
                           f"{_describe(args_raw)}", step)
            if step_id is not None:
                if step_id in ids:
                    raise fail(raw.lines.get("id", line), f"step id {step_id!r} is already "
                               f"used by step #{ids[step_id]}", step)
                ids[step_id] = index
            step.account = raw.get("as")
            if "as" in args_raw:
                if "as" in raw and raw["as"] != args_raw["as"]:
                    raise fail(args_raw.lines["as"], "as: is given twice with different "
                               "accounts", step)
                step.account = args_raw["as"]
            spec = STEP_KINDS[kind]
            for key, value in args_raw.items():
                if key == "as":
                    continue
                if key not in spec.fields:
                    raise fail(args_raw.lines.get(key, line), f"unknown field {key!r} for "
                               f"{kind}; its fields are {', '.join(spec.fields)}, as", step)
                step.args[key] = value
                step.arg_lines[key] = args_raw.lines.get(key, line)
            for key in spec.required:
                if key not in step.args:
                    raise fail(args_raw.line or line, f"missing required field {key!r} "
                               f"({kind} needs {', '.join(spec.required)})", step)
            if spec.one_of and sum(k in step.args for k in spec.one_of) != 1:
                raise fail(args_raw.line or line, f"{kind} needs exactly one of "
                           f"{', '.join(spec.one_of)}", step)
            if kind == "cancel" and "region" in step.args and "job" not in step.args:
                raise fail(args_raw.line or line, "cancel: region goes with job (a copy is "
                           "cancelled by its image, or a job's copy by job and region)", step)
            # references: to declared vars and to earlier steps only
            checks: list[tuple[Any, int]] = [(v, step.arg_lines[k]) for k, v in
                                             step.args.items()]
            if step.account is not None:
                checks.append((step.account, raw.lines.get("as") or args_raw.lines.get(
                    "as", line)))
            for value, vline in checks:
                try:
                    refs = list(_refs_in(value))
                except ValueError as exc:
                    raise fail(vline, str(exc), step) from exc
                for ref in refs:
                    problem = cls._check_ref(ref, step, ids, vars_)
                    if problem:
                        raise fail(vline, problem, step)
            steps.append(step)
        if isinstance(account, str):  # an id, or ${vars.NAME}
            try:
                for ref in _refs_in(account):
                    if ref.head != "vars":
                        raise ValueError(f"account: ${{{ref.text}}}: the account can use "
                                         "vars only")
                    problem = cls._check_ref(ref, None, ids, vars_)
                    if problem:
                        raise ValueError(problem)
            except ValueError as exc:
                raise fail(data.lines.get("account"), str(exc)) from exc
        return cls(name, steps, account=account, vars=dict(vars_), path=path,
                   lines={"account": data.lines.get("account", 0),
                          "vars": data.lines.get("vars", 0)})

    @staticmethod
    def _check_ref(ref: _Ref, step: Step | None, ids: dict[str, int],
                   vars_: Mapping[str, Any]) -> str | None:
        if ref.head == "vars":
            if len(ref.segments) < 2:
                return f"${{{ref.text}}}: name a var, as ${{vars.NAME}}"
            if ref.segments[1] not in vars_:
                declared = ", ".join(vars_) or "none"
                return (f"${{{ref.text}}} refers to var {ref.segments[1]!r}, which the "
                        f"playbook does not declare (vars: {declared})")
            return None
        if step is not None and ref.head == step.id:
            return f"${{{ref.text}}}: a step cannot use its own output"
        if ref.head not in ids:
            return (f"${{{ref.text}}} refers to step {ref.head!r}, which no earlier step is "
                    "(a step can use vars and the outputs of earlier steps with an id)")
        return None

    # -- running ------------------------------------------------------------------------
    def run(self, cloud: Cloud, *, vars: Mapping[str, Any] | None = None,
            dry_run: bool = False, progress: bool = False,
            on_step: Callable[[StepLog], None] | None = None) -> PlaybookResult:
        """Runs the steps in order, continuing an earlier run of the same ``name``.

        ``vars`` override the playbook's vars (each must be declared). ``dry_run`` checks
        every step against the catalog and changes nothing. ``progress`` shows progress bars
        while waiting for copies; ``on_step`` is called with each step's log entry as soon
        as the step is over. Raises the failing step's error (same class and code), its
        message prefixed with ``<file>:<line>: step <id> (<kind>): ``.
        """
        merged = dict(self.vars)
        for key, value in (vars or {}).items():
            if key not in self.vars:
                declared = ", ".join(self.vars) or "none"
                raise PlaybookError(f"{self._where}:{self._lines.get('vars') or 1}: var "
                                    f"{key!r} is not declared by the playbook (vars: "
                                    f"{declared})", path=self._where,
                                    line=self._lines.get("vars") or None)
            merged[key] = value
        runner = _Runner(self, cloud, merged, dry_run=dry_run, progress=progress,
                         on_step=on_step)
        return runner.run()

    def __repr__(self) -> str:
        return f"<Playbook {self.name!r} {len(self.steps)} steps from {self._where}>"


# -- run state ----------------------------------------------------------------------------------
class _State:
    """``<home>/playbooks/<name>.json``: step key -> {last, runs: {fingerprint: record}}."""

    def __init__(self, path: Path, name: str, *, writable: bool) -> None:
        self.path = path
        self.name = name
        self.writable = writable
        self.data: dict[str, Any] = {"version": _STATE_VERSION, "name": name, "steps": {}}
        if path.exists():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise PlaybookError(f"{path}: the run state of playbook {name!r} cannot be "
                                    f"read ({exc}); fix or remove it (removing it forgets what "
                                    "earlier runs did)") from exc
            if not isinstance(loaded, dict) or not isinstance(loaded.get("steps"), dict):
                raise PlaybookError(f"{path}: not a playbook run state; fix or remove it")
            self.data = loaded

    def lookup(self, key: str, fingerprint: str) -> tuple[dict[str, Any] | None, bool]:
        """(the record of this step with these arguments, whether it is the step's latest)."""
        entry = self.data["steps"].get(key) or {}
        record = (entry.get("runs") or {}).get(fingerprint)
        return record, entry.get("last") == fingerprint

    def done_outputs(self, key: str) -> list[dict[str, Any]]:
        """The outputs of this step's runs that completed, whatever their arguments."""
        runs = (self.data["steps"].get(key) or {}).get("runs") or {}
        return [r.get("output") for r in runs.values() if r.get("status") == DONE]

    def put(self, key: str, fingerprint: str, record: dict[str, Any]) -> None:
        if not self.writable:
            return
        entry = self.data["steps"].setdefault(key, {"runs": {}})
        entry["last"] = fingerprint
        record = dict(record, time=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        entry.setdefault("runs", {})[fingerprint] = record
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.data, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@dataclasses.dataclass
class _Ctx:
    """One step being run: its resolved arguments and what the state knows of it."""

    step: Step
    cloud: Cloud
    args: dict[str, Any]
    fingerprint: str
    record: dict[str, Any] | None  # the state's record for these arguments, if any
    latest: bool  # the record is the step's latest run

    @property
    def done_before(self) -> bool:
        return bool(self.record and self.latest and self.record.get("status") == DONE)


class _Runner:
    def __init__(self, book: Playbook, cloud: Cloud, vars: dict[str, Any], *, dry_run: bool,
                 progress: bool, on_step: Callable[[StepLog], None] | None) -> None:
        self.book = book
        self.base = cloud
        self.vars = vars
        self.dry_run = dry_run
        self.progress = progress
        self.on_step = on_step
        self.state_path = cloud.home / "playbooks" / f"{book.name}.json"
        self.result = PlaybookResult(book.name, dry_run=dry_run, state_path=self.state_path)
        self.clouds: dict[str, Cloud] = {}
        # False once a step of this run changed something (or, in a dry run, would): the
        # checks (assert, wait) that passed before are then done again.
        self.world_current = True
        # What the ${...} references resolved to so far (see _charge).
        self.resolved_values = 0
        self.resolved_chars = 0

    # -- driver ---------------------------------------------------------------------------
    def run(self) -> PlaybookResult:
        book = self.book
        where = f"{book._where}:{book._lines.get('account') or 1}: "
        try:
            account = self._resolve(book.account) if book.account else self.base.account
            if not isinstance(account, str) or not account:
                raise ValueError(f"account: expected an account id, got {_describe(account)}")
            self.default_cloud = self._cloud_for(account)
        except ImageRelayError as exc:
            raise _prefixed(exc, where) from exc
        except ValueError as exc:
            raise PlaybookError(where + str(exc), path=book._where) from exc
        if self.dry_run:
            self.state = _State(self.state_path, book.name, writable=False)
            self._run_steps()
            return self.result
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.state_path.with_suffix(".lock")
        with open(lock_path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                raise ConflictError(f"playbook {book.name!r} is already running in this home "
                                    f"(lock {lock_path}); wait for it to finish",
                                    code="Playbook.AlreadyRunning") from exc
            self.state = _State(self.state_path, book.name, writable=True)
            self._run_steps()
        return self.result

    def _run_steps(self) -> None:
        log.info("playbook %s: %s%d steps", self.book.name,
                 "dry run, " if self.dry_run else "", len(self.book.steps))
        for step in self.book.steps:
            prefix = f"{self.book._where}:{step.line}: step {step.key} ({step.kind}): "
            try:
                output, status, detail, account = self._run_step(step)
            except ImageRelayError as exc:
                raise _prefixed(exc, prefix) from exc
            except (ValueError, TypeError) as exc:
                raise PlaybookError(prefix + str(exc), path=self.book._where, line=step.line,
                                    step=step.key) from exc
            except OSError as exc:
                raise ValidationError(prefix + f"{exc.strerror or exc}: "
                                      f"{exc.filename or ''}".rstrip(": ")) from exc
            if status in (DONE, DRY_RUN) and step.kind not in _CHECKS:
                self.world_current = False
            self.result.outputs[step.key] = output
            entry = StepLog(index=step.index, id=step.id, kind=step.kind, status=status,
                            detail=detail, account=account, line=step.line)
            self.result.steps.append(entry)
            log.info("playbook %s: step %s (%s): %s: %s", self.book.name, step.key, step.kind,
                     status, detail)
            if self.on_step is not None:
                self.on_step(entry)

    def _cloud_for(self, account: str) -> Cloud:
        if account not in self.clouds:
            self.clouds[account] = (self.base if account == self.base.account
                                    else self.base.as_account(account))
        return self.clouds[account]

    def _run_step(self, step: Step) -> tuple[Any, str, str, str]:
        account = self.default_cloud.account
        if step.account is not None:
            resolved = self._resolve(step.account)
            if isinstance(resolved, Placeholder) or not isinstance(resolved, str) \
                    or not resolved:
                raise ValueError(f"as: must be an account id, got {_describe(resolved)}")
            account = resolved
        cloud = self._cloud_for(account)
        try:
            args = {k: self._coerce(step, k, self._resolve(v)) for k, v in step.args.items()}
        except ValueError as exc:
            # A step can remove what its own arguments point at (``delete:
            # ${copies.copies.gz.id}``: the job no longer lists the copy). If its latest run
            # is done, it stays done.
            entry = self.state.data["steps"].get(step.key) or {}
            record = (entry.get("runs") or {}).get(entry.get("last") or "")
            if isinstance(exc, _LimitError) or not record or record.get("status") != DONE \
                    or record.get("kind") != step.kind:
                raise
            log.warning("playbook %s: step %s: %s; done by an earlier run, so skipped",
                        self.book.name, step.key, exc)
            output = self._decode(cloud, record.get("output") or {})
            return output, SKIPPED, f"already done ({_describe_output(output)})", account
        fingerprint = hashlib.sha256(json.dumps(
            {"kind": step.kind, "account": account, "args": _plain(args)},
            sort_keys=True).encode()).hexdigest()[:32]
        record, latest = self.state.lookup(step.key, fingerprint)
        ctx = _Ctx(step=step, cloud=cloud, args=args, fingerprint=fingerprint, record=record,
                   latest=latest)
        handler: Callable[[_Ctx], tuple[Any, str, str]] = getattr(self, f"_do_{step.kind}")
        output, status, detail = handler(ctx)
        return output, status, detail, account

    # -- arguments ------------------------------------------------------------------------
    def _resolve(self, value: Any) -> Any:
        if isinstance(value, str):
            parts = _parse_template(value)
            if len(parts) == 1 and isinstance(parts[0], _Ref):
                return self._charge(self._lookup(parts[0]))
            out: list[str] = []
            placeholder = False
            for part in parts:
                if isinstance(part, _Ref):
                    v = self._lookup(part)
                    placeholder = placeholder or _has_placeholder(v)
                    out.append(self._charge(str(v)))
                else:
                    out.append(part)
            text = "".join(out)
            return Placeholder(text, display=text) if placeholder else text
        if isinstance(value, Mapping):
            return {k: self._resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve(v) for v in value]
        return value

    def _charge(self, value: Any) -> Any:
        """Counts what a reference resolved to against the run's bounds and returns it.

        The file's own size is bounded at load, but a reference copies a value each time it
        is used (a long var pasted 2,000 times into one string, a big list used by every
        step); every later walk of the arguments is paid for here, once.
        """
        stack = [value]
        while stack:
            item = stack.pop()
            self.resolved_values += 1
            if isinstance(item, str):
                self.resolved_chars += len(item)
            elif isinstance(item, Mapping):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, (list, tuple)):
                stack.extend(item)
            problem = _over_limits(self.resolved_values, self.resolved_chars)
            if problem:
                raise _LimitError(f"the ${{...}} references of this run resolve to {problem}")
        return value

    def _lookup(self, ref: _Ref) -> Any:
        if ref.head == "vars":
            name = ref.segments[1]
            value = self.vars.get(name)
            if value is None:
                raise ValueError(f"${{{ref.text}}}: var {name!r} has no value; give it one "
                                 f"in the playbook or with --var {name}=...")
            # walk the rest of the path from the var's value: ${vars.cfg.region}
            return _walk(value, _Ref(ref.text, ref.segments[1:]))
        return _walk(self.result.outputs[ref.head], ref)

    def _coerce(self, step: Step, key: str, value: Any) -> Any:
        """Checks and normalises one resolved argument."""
        if isinstance(value, Placeholder) or (key in _LIST_FIELDS and _has_placeholder(value)):
            return value
        if step.kind == "assert" and key != "image":
            return value  # compared as they are
        if key in ("image", "job"):
            if isinstance(value, (Image, Job, GoneImage)):
                if (key == "job") != isinstance(value, Job):
                    raise ValueError(f"{key}: expected {'a job' if key == 'job' else 'an image'}"
                                     f", got {type(value).__name__} {value.id}")
                return value.id
            if isinstance(value, str) and value:
                return value
            raise ValueError(f"{key}: expected an {key} id, got {_describe(value)}")
        if key in _LIST_FIELDS:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
                raise ValueError(f"{key}: expected an id or a list of ids, got "
                                 f"{_describe(value)}")
            return items
        if key in _STR_FIELDS:
            if isinstance(value, Path):
                value = str(value)
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ValueError(f"{key}: expected a string, got {_describe(value)}")
            value = str(value)
            if key in ("source", "path") and not (key == "source" and _URL_RE.match(value)):
                return str(self.book.base_dir / Path(value).expanduser())
            return value
        if key in ("wait", "force"):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
                return value.lower() in ("true", "yes")
            raise ValueError(f"{key}: expected true or false, got {_describe(value)}")
        if key == "timeout":
            try:
                seconds = check_timeout(float(value) if isinstance(value, str) else value)
            except (ValueError, ValidationError):  # NaN or inf would wait forever
                seconds = None
            if not seconds:
                raise ValueError(f"timeout: expected a positive number of seconds, got "
                                 f"{_describe(value)}")
            return seconds
        return value  # assert properties: compared as they are

    # -- output encoding ------------------------------------------------------------------------
    @staticmethod
    def _encode(output: Any) -> dict[str, Any]:
        if isinstance(output, _RetriedJob):
            return {"jobs": output.job_ids}
        if isinstance(output, Job):
            return {"job": output.id}
        if isinstance(output, (Image, GoneImage)):
            return {"image": output.id}
        if isinstance(output, Path):
            return {"path": str(output)}
        return {"value": _plain(output)}

    @staticmethod
    def _decode(cloud: Cloud, encoded: dict[str, Any]) -> Any:
        if "jobs" in encoded:
            jobs = [cloud.job(j) for j in encoded["jobs"]]
            return jobs[0] if len(jobs) == 1 else _RetriedJob(jobs[-1], jobs[:-1])
        if "job" in encoded:
            return cloud.job(encoded["job"])
        if "image" in encoded:
            try:
                return cloud.image(encoded["image"])
            except NotFoundError:
                return GoneImage(encoded["image"])
        if "path" in encoded:
            return Path(encoded["path"])
        return encoded.get("value")

    def _skip_done(self, ctx: _Ctx, detail: str = "already done") -> tuple[Any, str, str]:
        assert ctx.record is not None
        output = self._decode(ctx.cloud, ctx.record.get("output") or {})
        return output, SKIPPED, f"{detail} ({_describe_output(output)})"

    def _save(self, ctx: _Ctx, status: str, output: Any, **extra: Any) -> None:
        self.state.put(ctx.step.key, ctx.fingerprint,
                       {"kind": ctx.step.kind, "account": ctx.cloud.account, "status": status,
                        "output": self._encode(output), **extra})

    # -- checks of a dry run -----------------------------------------------------------------
    def _check_image(self, ctx: _Ctx, value: Any) -> Image | None:
        """The image if its id is known (not a placeholder); raises NoSuchImage if unknown."""
        if isinstance(value, Placeholder):
            return None
        return ctx.cloud.image(value)

    def _check_accounts(self, accounts: Any) -> None:
        if _has_placeholder(accounts):
            return
        known = {a.id for a in self.base.accounts}
        for a in accounts:
            if a not in known:
                raise ValidationError(f"account {a!r} does not exist; check the id or add it",
                                      code="Image.InvalidAccount")

    # -- step kinds -----------------------------------------------------------------------------
    def _do_import(self, ctx: _Ctx) -> tuple[Any, str, str]:
        c, a = ctx.cloud, ctx.args
        failed: Image | None = None
        if ctx.record and ctx.record.get("output", {}).get("image"):
            try:
                image: Image | None = c.image(ctx.record["output"]["image"])
            except NotFoundError:
                image = None
            if image is not None and image.status == "Creating" and not self.dry_run:
                image.wait()
            # Replicating: Available, with copies of it in flight
            if image is not None and image.status in ("Available", "Replicating"):
                if ctx.record.get("status") != DONE:
                    self._save(ctx, DONE, image)
                return image, SKIPPED, f"already imported: {_describe_output(image)}"
            if image is not None and image.status == "CreateFailed":
                failed = image
        if self.dry_run:
            c.region(a["region"])
            if not _URL_RE.match(a["source"]) and not Path(a["source"]).is_file():
                raise ValidationError(f"image file {a['source']} does not exist; check the path")
            again = f" (again: {failed.id} is CreateFailed)" if failed else ""
            return (Placeholder(f"{ctx.step.key}"), DRY_RUN,
                    f"would import {a['source']} into {a['region']} as {a['name']}{again}")
        if failed is not None:
            log.info("playbook %s: step %s: image %s is CreateFailed (%s); deleting it and "
                     "importing again", self.book.name, ctx.step.key, failed.id, failed.error)
            with contextlib.suppress(ImageRelayError):
                failed.delete()
        options = {k: a[k] for k in _IMPORT_OPTIONS if k in a}
        image = c.import_image(a["source"], region=a["region"], name=a["name"], wait=False,
                               **options)
        self._save(ctx, "started", image)
        image.wait()
        if image.status != "Available":
            raise TransferError(f"the import of {a['source']} as image {image.id} failed: "
                                f"{image.error or image.status}; run the playbook again to "
                                "retry")
        self._save(ctx, DONE, image)
        return image, DONE, f"imported {_describe_output(image)}"

    def _token(self, ctx: _Ctx, attempt: int) -> str:
        seed = f"{self.book.name}\0{ctx.step.key}\0{ctx.fingerprint}\0{attempt}"
        return "pb-" + hashlib.sha256(seed.encode()).hexdigest()[:40]

    def _do_replicate(self, ctx: _Ctx) -> tuple[Any, str, str]:
        c, a = ctx.cloud, ctx.args
        wait = a.get("wait", True)
        record = ctx.record or {}
        job_ids: list[str] = list(record.get("jobs") or [])
        attempt = int(record.get("attempt", 0))
        regions = a["to"]
        if job_ids:
            jobs = [c.job(j) for j in job_ids]
            job = jobs[-1] if len(jobs) == 1 else _RetriedJob(jobs[-1], jobs[:-1])
            if job.state == "Running":
                if self.dry_run:
                    return job, SKIPPED, f"job {job.id} is in flight ({job.progress:.0f}%)"
                if not wait:
                    self._save(ctx, DONE, job, jobs=job_ids, attempt=attempt)
                    return job, SKIPPED, f"job {job.id} is in flight ({job.progress:.0f}%)"
                return self._wait_job(ctx, job, job_ids, attempt, "resumed: ")
            if job.state != "Failed":
                if record.get("status") != DONE and not self.dry_run:
                    self._save(ctx, DONE, job, jobs=job_ids, attempt=attempt)
                return job, SKIPPED, f"already replicated: {_describe_output(job)}"
            # A failed job: retry the regions that have no good copy yet.
            good = {r for r, im in job.copies.items() if im.status == "Available"}
            regions = [r for r in dict.fromkeys(a["to"]) if r not in good]
            attempt += 1
            if not self.dry_run:
                for task in job.tasks.values():
                    if task.state == "Failed":
                        with contextlib.suppress(ImageRelayError):
                            c.delete_image(task.dest_image_id)
        if self.dry_run:
            image = self._check_image(ctx, a["image"])
            for r in regions:
                c.region(r)
            src = image.id if image else a["image"]
            retry = " (retrying a failed job)" if job_ids else ""
            return (Placeholder(ctx.step.key), DRY_RUN,
                    f"would replicate {src} to {', '.join(regions)}{retry}")
        job = c.replicate(a["image"], regions, name=a.get("name"),
                          client_token=self._token(ctx, attempt))
        if job.id not in job_ids:
            job_ids.append(job.id)
        if len(job_ids) > 1:
            job = _RetriedJob(job, [c.job(j) for j in job_ids[:-1]])
        if not wait:
            self._save(ctx, DONE, job, jobs=job_ids, attempt=attempt)
            return job, DONE, f"started {_describe_output(job)}"
        self._save(ctx, "started", job, jobs=job_ids, attempt=attempt)
        return self._wait_job(ctx, job, job_ids, attempt, "")

    def _wait_job(self, ctx: _Ctx, job: Job, job_ids: list[str], attempt: int, what: str
                  ) -> tuple[Any, str, str]:
        timeout = ctx.args.get("timeout")
        try:
            job.wait(timeout, progress=self.progress)
        except ReplicationFailedError:
            self._save(ctx, "failed", job, jobs=job_ids, attempt=attempt)
            raise
        self._save(ctx, DONE, job, jobs=job_ids, attempt=attempt)
        return job, DONE, f"{what}replicated {_describe_output(job)}"

    def _do_wait(self, ctx: _Ctx) -> tuple[Any, str, str]:
        c, a = ctx.cloud, ctx.args
        timeout = a.get("timeout")
        if ctx.done_before and self.world_current:
            return self._skip_done(ctx, "waited before")
        if "job" in a:
            if isinstance(a["job"], Placeholder):
                return a["job"], DRY_RUN, f"would wait for job {a['job']}"
            job = c.job(a["job"])
            if self.dry_run:
                return job, DRY_RUN, f"would wait for job {job.id} (now {job.state})"
            job.wait(timeout, progress=self.progress)
            self._save(ctx, DONE, job)
            return job, DONE, f"job {_describe_output(job)}"
        if isinstance(a["image"], Placeholder):
            return a["image"], DRY_RUN, f"would wait for image {a['image']}"
        image = c.image(a["image"])
        if self.dry_run:
            return image, DRY_RUN, f"would wait for image {image.id} (now {image.status})"
        image.wait(timeout)
        if image.status == "CreateFailed":
            raise TransferError(f"image {image.id} is CreateFailed: {image.error}")
        self._save(ctx, DONE, image)
        return image, DONE, f"image {_describe_output(image)}"

    def _do_cancel(self, ctx: _Ctx) -> tuple[Any, str, str]:
        c, a = ctx.cloud, ctx.args
        if ctx.done_before:
            return self._skip_done(ctx, "already cancelled")
        if "job" in a:
            if isinstance(a["job"], Placeholder):
                return a["job"], DRY_RUN, f"would cancel job {a['job']}"
            job = c.job(a["job"])
            region = a.get("region")
            tasks = [t for r, t in job.tasks.items() if region is None or r == region]
            if region is not None and not tasks:
                raise ValidationError(f"job {job.id} has no copy to region {region!r} "
                                      f"(regions: {', '.join(job.tasks)})",
                                      code="InvalidParameter")
            if tasks and all(t.state == "Cancelled" for t in tasks):
                if not self.dry_run:
                    self._save(ctx, DONE, job)
                return job, SKIPPED, f"already cancelled: {_describe_output(job)}"
            what = f"job {job.id}" + (f" to {region}" if region else "")
            if self.dry_run:
                return job, DRY_RUN, f"would cancel {what}"
            job.cancel(region)
            self._save(ctx, DONE, job)
            return job, DONE, f"cancelled {what}"
        image_id = a["image"]
        if isinstance(image_id, Placeholder):
            return image_id, DRY_RUN, f"would cancel the copy {image_id}"
        try:
            image = c.image(image_id)
        except NotFoundError:
            if any(e.type == "task.cancelled" for e in c.events(image_id=image_id)):
                if not self.dry_run:
                    self._save(ctx, DONE, image_id)
                return image_id, SKIPPED, f"the copy {image_id} is already cancelled"
            raise
        if self.dry_run:
            return image_id, DRY_RUN, f"would cancel the copy {image.id} (now {image.status})"
        c.cancel_copy(image_id)
        self._save(ctx, DONE, image_id)
        return image_id, DONE, f"cancelled the copy {image_id}"

    def _share_like(self, ctx: _Ctx, share: bool) -> tuple[Any, str, str]:
        c, a = ctx.cloud, ctx.args
        verb = "share" if share else "unshare"
        if ctx.done_before:
            return self._skip_done(ctx)
        accounts = list(dict.fromkeys(a["accounts"]))
        image = self._check_image(ctx, a["image"]) if self.dry_run else c.image(a["image"])
        if self.dry_run:
            self._check_accounts(accounts)
        if image is None:
            return a["image"], DRY_RUN, f"would {verb} {a['image']} with {', '.join(accounts)}"
        current = set(c.shared_users(image.id))
        todo = [x for x in accounts if (x not in current) == share]
        if not todo and accounts:
            if not self.dry_run:
                self._save(ctx, DONE, image)
            state = "shared" if share else "not shared"
            return image, SKIPPED, f"{image.id} is already {state} with {', '.join(accounts)}"
        if self.dry_run:
            return image, DRY_RUN, f"would {verb} {image.id} with {', '.join(todo)}"
        (c.share if share else c.unshare)(image.id, todo)
        self._save(ctx, DONE, image)
        return image, DONE, f"{verb}d {image.id} with {', '.join(todo)}"

    def _do_share(self, ctx: _Ctx) -> tuple[Any, str, str]:
        return self._share_like(ctx, True)

    def _do_unshare(self, ctx: _Ctx) -> tuple[Any, str, str]:
        return self._share_like(ctx, False)

    def _do_rename(self, ctx: _Ctx) -> tuple[Any, str, str]:
        c, a = ctx.cloud, ctx.args
        if ctx.done_before:
            return self._skip_done(ctx)
        image = self._check_image(ctx, a["image"]) if self.dry_run else c.image(a["image"])
        if image is None:
            return a["image"], DRY_RUN, f"would rename {a['image']} to {a['name']}"
        if image.name == a["name"]:
            if not self.dry_run:
                self._save(ctx, DONE, image)
            return image, SKIPPED, f"{image.id} is already named {a['name']}"
        if self.dry_run:
            return image, DRY_RUN, f"would rename {image.id} from {image.name} to {a['name']}"
        c.rename_image(image.id, a["name"])
        image.refresh()
        self._save(ctx, DONE, image)
        return image, DONE, f"renamed {image.id} to {a['name']}"

    def _do_delete(self, ctx: _Ctx) -> tuple[Any, str, str]:
        c, a = ctx.cloud, ctx.args
        if ctx.done_before:
            return a["image"], SKIPPED, f"already deleted {a['image']}"
        if isinstance(a["image"], Placeholder):
            return a["image"], DRY_RUN, f"would delete {a['image']}"
        try:
            image = c.image(a["image"])
        except NotFoundError:
            if not self.dry_run:
                self._save(ctx, DONE, a["image"])
            return a["image"], SKIPPED, f"{a['image']} is already gone"
        if self.dry_run:
            return image.id, DRY_RUN, f"would delete {image.id} ({image.name}, {image.region})"
        c.delete_image(image.id)
        self._save(ctx, DONE, image.id)
        return image.id, DONE, f"deleted {image.id} ({image.name}, {image.region})"

    def _do_export(self, ctx: _Ctx) -> tuple[Any, str, str]:
        c, a = ctx.cloud, ctx.args
        path = Path(a["path"])
        if ctx.done_before and path.is_file():
            try:
                size: int | None = c.image(a["image"]).size
            except NotFoundError:  # deleted since (e.g. by a later step): keep the file
                size = None
            if size is None or path.stat().st_size == size:
                return path, SKIPPED, f"already exported {a['image']} to {path}"
        image = self._check_image(ctx, a["image"]) if self.dry_run else c.image(a["image"])
        if image is None:
            return path, DRY_RUN, f"would export {a['image']} to {path}"
        if self.dry_run:
            return path, DRY_RUN, f"would export {image.id} to {path}"
        path.parent.mkdir(parents=True, exist_ok=True)
        # A file this step wrote in an earlier run (of any image) is its own to overwrite.
        own = self._encode(path) in self.state.done_outputs(ctx.step.key)
        written = c.export_image(image.id, path, force=bool(a.get("force")) or own)
        self._save(ctx, DONE, written)
        return written, DONE, f"exported {image.id} to {written} ({image.size} bytes)"

    def _do_assert(self, ctx: _Ctx) -> tuple[Any, str, str]:
        c, a = ctx.cloud, ctx.args
        expected = {k: v for k, v in a.items() if k != "image"}
        checks = ", ".join(f"{k}={_plain(v)}" for k, v in expected.items()) or "visible"
        if ctx.done_before and self.world_current:
            return self._skip_done(ctx, f"held before: {checks}")
        if self.dry_run and (not self.world_current or _has_placeholder(a)):
            # what it checks depends on steps that would run first
            output = a["image"] if isinstance(a["image"], Placeholder) else Placeholder(
                ctx.step.key, display=str(a["image"]))
            return output, DRY_RUN, f"would check {a['image']} as {c.account}: {checks}"
        image = c.image(a["image"])
        wrong = []
        for key, want in expected.items():
            have = getattr(image, key)
            if have != want and not (have is not None and want is not None
                                     and str(have) == str(want)):
                wrong.append(f"{key} is {have!r}, expected {want!r}")
        if wrong:
            raise PlaybookAssertionError(f"image {image.id} as {c.account}: "
                                         + "; ".join(wrong))
        if self.dry_run:
            return image, DRY_RUN, f"holds now: {image.id} as {c.account}: {checks}"
        self._save(ctx, DONE, image)
        return image, DONE, f"{image.id} as {c.account}: {checks}"


def _describe_output(value: Any) -> str:
    if isinstance(value, Image):
        return f"{value.id} ({value.name}, {value.region}, {value.status})"
    if isinstance(value, Job):
        copies = ", ".join(f"{r}: {t.dest_image_id} {t.state}" for r, t in value.tasks.items())
        return f"job {value.id} {value.state} ({copies})"
    if isinstance(value, GoneImage):
        return f"{value.id} (gone)"
    return str(value)


def _prefixed(exc: ImageRelayError, prefix: str) -> ImageRelayError:
    """The same error (class, code, problems, extra attributes such as ``.job``), its message
    prefixed with where it happened."""
    try:
        new = copy.copy(exc)
    except Exception:  # an exception that cannot be copied: keep its class and code
        new = ImageRelayError(exc.message, code=exc.code, http_status=exc.http_status,
                              problems=exc.problems)
    new.message = prefix + exc.message
    new.args = (f"{exc.code}: {new.message}",)
    return new
