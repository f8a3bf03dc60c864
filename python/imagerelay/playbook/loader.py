"""Reading a playbook file: safe YAML whose mappings remember their lines, within bounds."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .._checks import shown
from .errors import PlaybookError
from .limits import MAX_DEPTH, MAX_FILE_BYTES, over_limits


class Map(dict[Any, Any]):
    """A YAML mapping that remembers its line and the line of each value."""

    line: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[Any, int] = {}


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
        problem = over_limits(self._values, self._chars)
        if self._reach > MAX_DEPTH:
            problem = f"nested more than {MAX_DEPTH} levels deep (aliases expanded)"
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


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Iterator[Map]:
    data = Map()
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


def check_size(size: int, where: str) -> None:
    if size > MAX_FILE_BYTES:
        raise PlaybookError(f"{where}: the playbook is larger than "
                            f"{MAX_FILE_BYTES // 2**20} MiB; a playbook is a short list of "
                            "steps", path=where)


def read_file(path: Path) -> str:
    """The text of a playbook file (``PlaybookError`` if unreadable, too large or not UTF-8)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # no more: it may be /dev/zero
    except OSError as exc:
        raise PlaybookError(f"{path}: cannot read the playbook: {exc.strerror or exc}",
                            path=str(path)) from exc
    check_size(len(data), str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlaybookError(f"{path}: the playbook is not UTF-8 text: {exc}",
                            path=str(path)) from exc


def load_yaml(text: str, where: str) -> Any:
    """The document in ``text``, its mappings as :class:`Map`; bad YAML is a
    ``PlaybookError`` naming ``where``, the line and the column."""
    check_size(len(text), where)
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        loc = f"{where}:{line}:{mark.column + 1}" if mark is not None else where
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{context}, {problem}" if context else problem
        raise PlaybookError(f"{loc}: bad YAML: {detail}", path=where, line=line) from exc
