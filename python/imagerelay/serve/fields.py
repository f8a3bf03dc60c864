"""Reading a request's JSON body and query as BCC's calls define them: each field of its
type, unknown fields refused, every answer naming the field (``InvalidParameter``)."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

from .api_error import MALFORMED_JSON, ApiError, invalid


def json_object(body: bytes, allowed: Collection[str]) -> dict[str, Any]:
    """The body as a JSON object with no field outside ``allowed`` (an empty body: {})."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(MALFORMED_JSON, f"the body is not well-formed JSON ({e})") from None
    except RecursionError:  # nested deeper than the parser goes: no call takes such a body
        raise ApiError(MALFORMED_JSON, "the body is nested too deeply") from None
    if not isinstance(value, dict):
        raise ApiError(MALFORMED_JSON, "the body must be a JSON object")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise invalid(unknown[0], f"is not a field of this call (its fields: "
                                  f"{', '.join(sorted(allowed)) or 'none'})")
    return value


def digits(value: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes "²", which ``int`` then refuses."""
    return value.isascii() and value.isdigit()


def text(body: dict[str, Any], field: str, *, required: bool = False) -> str | None:
    value = body.get(field)
    if value is None:
        if required:
            raise invalid(field, "is required")
        return None
    if not isinstance(value, str):
        raise invalid(field, f"must be a string, not {_json_type(value)}")
    return value


def text_list(body: dict[str, Any], field: str) -> list[str]:
    value = body.get(field)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid(field, "must be a list of strings")
    return value


def query(params: Sequence[tuple[str, str]], allowed: Collection[str]) -> dict[str, str]:
    """The query as a dict; a name given twice or outside ``allowed`` is refused."""
    out: dict[str, str] = {}
    for name, value in params:
        if name not in allowed:
            raise invalid(name, "is not a query parameter of this call")
        if name in out:
            raise invalid(name, "is given twice")
        out[name] = value
    return out


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", list: "a list",
             dict: "an object"}
    return names.get(type(value), type(value).__name__)
