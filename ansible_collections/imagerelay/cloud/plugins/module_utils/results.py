# -*- coding: utf-8 -*-
"""Module results as plain JSON: imagerelay's objects hold aware datetimes and str enums."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import os


def to_json(value):
    """``value`` with datetimes as ISO 8601 strings, enums and paths as plain strings."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, str):
        return str(value)  # an ImageStatus, TaskState or JobState shows as its value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def image_json(image, shared_with=None):
    """An image as a module returns it: ``Image.to_dict()``, plus ``shared_with`` (the
    accounts it is shared with) when known."""
    out = to_json(image.to_dict())
    if shared_with is not None:
        out["shared_with"] = sorted(shared_with)
    return out
