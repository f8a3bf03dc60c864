"""The ``${...}`` language: ``${vars.NAME...}`` and ``${STEP_ID.attribute...}`` in strings,
``$${`` for a literal ``${``."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from typing import Any

from .errors import LimitError
from .limits import over_limits
from .values import GoneImage, Placeholder, describe, has_placeholder

SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_TEMPLATE_RE = re.compile(r"\$\$\{|\$\{([^{}]*)\}|\$\{")


@dataclasses.dataclass(frozen=True)
class Ref:
    text: str
    segments: tuple[str, ...]

    @property
    def head(self) -> str:
        return self.segments[0]


def parse_template(s: str) -> list[str | Ref]:
    """Splits a string into literal parts and ``${...}`` references (``$${`` is a literal
    ``${``)."""
    parts: list[str | Ref] = []
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
            if not text or not all(SEGMENT_RE.match(seg) for seg in segments):
                raise ValueError(f"bad reference ${{{m.group(1)}}}: use ${{vars.NAME}} or "
                                 "${STEP_ID.attribute...} (letters, digits, '_' and '-')")
            parts.append(Ref(text, segments))
        pos = m.end()
    parts.append(s[pos:])
    return [p for p in parts if p != ""]


def refs_in(value: Any) -> Iterator[Ref]:
    if isinstance(value, str):
        for part in parse_template(value):
            if isinstance(part, Ref):
                yield part
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from refs_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from refs_in(v)


def _walk(value: Any, ref: Ref) -> Any:
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
            raise ValueError(f"${{{ref.text}}}: {where} ({describe(value)}) has no "
                             f"attribute or key {seg!r}")
    return value


class Resolver:
    """Substitutes the references of one run: to its vars and to the outputs of the steps
    so far (``outputs``, filled in by the runner as steps end)."""

    def __init__(self, vars: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        self.vars = vars
        self.outputs = outputs
        # What the references resolved to so far (see _charge).
        self.values = 0
        self.chars = 0

    def resolve(self, value: Any) -> Any:
        """``value`` with its references substituted: a string that is one reference becomes
        what it refers to (an Image, a list...), one with text around references a string."""
        if isinstance(value, str):
            parts = parse_template(value)
            if len(parts) == 1 and isinstance(parts[0], Ref):
                return self._charge(self._lookup(parts[0]))
            out: list[str] = []
            placeholder = False
            for part in parts:
                if isinstance(part, Ref):
                    v = self._lookup(part)
                    placeholder = placeholder or has_placeholder(v)
                    out.append(self._charge(str(v)))
                else:
                    out.append(part)
            text = "".join(out)
            return Placeholder(text, display=text) if placeholder else text
        if isinstance(value, Mapping):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
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
            self.values += 1
            if isinstance(item, str):
                self.chars += len(item)
            elif isinstance(item, Mapping):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, (list, tuple)):
                stack.extend(item)
            problem = over_limits(self.values, self.chars)
            if problem:
                raise LimitError(f"the ${{...}} references of this run resolve to {problem}")
        return value

    def _lookup(self, ref: Ref) -> Any:
        if ref.head == "vars":
            name = ref.segments[1]
            value = self.vars.get(name)
            if value is None:
                raise ValueError(f"${{{ref.text}}}: var {name!r} has no value; give it one "
                                 f"in the playbook or with --var {name}=...")
            # walk the rest of the path from the var's value: ${vars.cfg.region}
            return _walk(value, Ref(ref.text, ref.segments[1:]))
        return _walk(self.outputs[ref.head], ref)
