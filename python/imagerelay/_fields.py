"""A wrapper's fields, declared once: each is a read-only, typed ``CoreField`` over the core
record in ``self._info``; the declarations are the field list that ``to_dict``,
``to_pandas``, the notebook tables and the docs check read (``fields_of``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, NoReturn, TypeVar, overload

T = TypeVar("T")


class CoreField(Generic[T]):
    """``instance._info.<source>`` (the field's own name by default), through ``convert``."""

    def __init__(self, doc: str = "", *, source: str | None = None,
                 convert: Callable[[Any], T] | None = None) -> None:
        self.__doc__ = doc
        self._source = source
        self._convert = convert
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self._source = self._source or name

    @overload
    def __get__(self, instance: None, owner: type) -> CoreField[T]: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...

    def __get__(self, instance: object | None, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = getattr(instance._info, self._source or self.name)  # type: ignore[attr-defined]
        return self._convert(value) if self._convert is not None else value

    # Read-only: no value is of type NoReturn, so type checkers reject every assignment too.
    def __set__(self, instance: object, value: NoReturn) -> None:
        raise AttributeError(f"{self.name} is read-only")


def fields_of(cls: type) -> tuple[str, ...]:
    """The names of ``cls``'s fields, in the order they are declared."""
    return tuple(name for name, value in vars(cls).items() if isinstance(value, CoreField))
