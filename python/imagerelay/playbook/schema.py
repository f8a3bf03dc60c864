"""What a playbook may hold: its keys, the step kinds and their fields, the references each
may use; and the checks of a step's arguments once their references are resolved."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._checks import check_timeout
from ..errors import ValidationError
from ..image import Image
from ..job import Job
from .errors import PlaybookError
from .loader import Map
from .template import SEGMENT_RE, Ref, refs_in
from .values import GoneImage, Placeholder, describe, has_placeholder

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_STEP_ID_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

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


IMPORT_OPTIONS = ("os_type", "os_name", "os_version", "os_arch", "format", "description")

#: The step kinds and their fields (every kind also takes ``as``).
STEP_KINDS: dict[str, _Spec] = {
    "import": _Spec(required=("source", "region", "name"), optional=IMPORT_OPTIONS),
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

_STR_FIELDS = {"source", "region", "name", "path", *IMPORT_OPTIONS}
_LIST_FIELDS = {"to", "accounts"}
_KEYS = ("name", "account", "vars", "steps", "description")


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
class Outline:
    """A checked playbook document."""

    name: str
    steps: list[Step]
    account: str | None
    vars: dict[str, Any]
    lines: dict[str, int]  # of the keys account and vars


def check(data: Any, where: str) -> Outline:
    """Checks a loaded document (``PlaybookError`` naming ``where``, the line and the step)."""

    def fail(line: int | None, message: str, step: Step | None = None,
             step_label: str | None = None) -> PlaybookError:
        loc = f"{where}:{line}" if line else where
        label = step_label
        if step is not None:
            label = f"step {step.key} ({step.kind})"
        prefix = f"{loc}: {label}: " if label else f"{loc}: "
        return PlaybookError(prefix + message, path=where, line=line,
                             step=step.key if step is not None else None)

    if not isinstance(data, Map):
        raise fail(1, "a playbook is a mapping with name, account, vars and steps")
    for key in data:
        if key not in _KEYS:
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
                                              f"{describe(account)}")
    vars_ = data.get("vars") or {}
    if not isinstance(vars_, Mapping):
        raise fail(data.lines.get("vars"), "vars must be a mapping of names to values")
    for k in vars_:
        if not isinstance(k, str) or not SEGMENT_RE.match(k):
            raise fail(data.lines.get("vars"), f"var name {k!r} is invalid: use letters, "
                                               "digits, '_' and '-'")
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise fail(data.lines.get("steps", data.line), "steps must be a non-empty list")

    steps: list[Step] = []
    ids: dict[str, int] = {}
    for index, raw in enumerate(raw_steps, start=1):
        line = raw.line if isinstance(raw, Map) else data.lines.get("steps", 0)
        label = f"step #{index}"
        if not isinstance(raw, Map):
            raise fail(line, f"a step is a mapping such as {{import: {{...}}}}, got "
                             f"{describe(raw)}", step_label=label)
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
            args_raw = Map()
        step = Step(index=index, kind=kind, args={}, line=line, id=step_id)
        if not isinstance(args_raw, Map):
            raise fail(raw.lines.get(kind, line), f"the arguments of {kind} are a mapping "
                       f"of {', '.join(STEP_KINDS[kind].fields)}, got "
                       f"{describe(args_raw)}", step)
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
                refs = list(refs_in(value))
            except ValueError as exc:
                raise fail(vline, str(exc), step) from exc
            for ref in refs:
                problem = _check_ref(ref, step, ids, vars_)
                if problem:
                    raise fail(vline, problem, step)
        steps.append(step)
    if isinstance(account, str):  # an id, or ${vars.NAME}
        try:
            for ref in refs_in(account):
                if ref.head != "vars":
                    raise ValueError(f"account: ${{{ref.text}}}: the account can use "
                                     "vars only")
                problem = _check_ref(ref, None, ids, vars_)
                if problem:
                    raise ValueError(problem)
        except ValueError as exc:
            raise fail(data.lines.get("account"), str(exc)) from exc
    return Outline(name, steps, account, dict(vars_),
                   {"account": data.lines.get("account", 0), "vars": data.lines.get("vars", 0)})


def _check_ref(ref: Ref, step: Step | None, ids: dict[str, int],
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


def coerce(step: Step, key: str, value: Any, base_dir: Path) -> Any:
    """Checks and normalises one resolved argument; relative paths are taken from
    ``base_dir``."""
    if isinstance(value, Placeholder) or (key in _LIST_FIELDS and has_placeholder(value)):
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
        raise ValueError(f"{key}: expected an {key} id, got {describe(value)}")
    if key in _LIST_FIELDS:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise ValueError(f"{key}: expected an id or a list of ids, got "
                             f"{describe(value)}")
        return items
    if key in _STR_FIELDS:
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"{key}: expected a string, got {describe(value)}")
        value = str(value)
        if key in ("source", "path") and not (key == "source" and URL_RE.match(value)):
            return str(base_dir / Path(value).expanduser())
        return value
    if key in ("wait", "force"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise ValueError(f"{key}: expected true or false, got {describe(value)}")
    if key == "timeout":
        try:
            seconds = check_timeout(float(value) if isinstance(value, str) else value)
        except (ValueError, ValidationError):  # NaN or inf would wait forever
            seconds = None
        if not seconds:
            raise ValueError(f"timeout: expected a positive number of seconds, got "
                             f"{describe(value)}")
        return seconds
    return value  # assert properties: compared as they are
