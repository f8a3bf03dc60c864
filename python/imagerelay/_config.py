"""The home's ``config.json``: settings of this host's home that every command uses.

Two keys (docs/scale-out.md): ``catalog``, the ``postgresql://`` URI of a catalog shared by
several hosts (keep the password out of it: ``~/.pgpass`` or ``$PGPASSWORD``), and
``worker_regions``, the regions this host reaches: every worker of the home takes only copies
between them (``imagerelay worker``, the background worker a command starts, ``--wait``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ValidationError

_EXAMPLE = '{"catalog": "postgresql://imagerelay@db.example.com/imagerelay"}'


def home_config(home: Path) -> dict[str, Any]:
    """The home's config.json ({} if it has none); ValidationError if it is unreadable."""
    path = home / "config.json"
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as e:
        raise ValidationError(f"cannot read {path}: {e.strerror}") from None
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ValidationError(f"{path} is not valid JSON ({e}); it holds e.g. {_EXAMPLE}") \
            from None
    if not isinstance(config, dict) or not isinstance(config.get("catalog", ""), str):
        raise ValidationError(f"{path} must hold a JSON object whose \"catalog\" is a string, "
                              f"e.g. {_EXAMPLE}")
    reach = config.get("worker_regions")
    if reach is not None and (not isinstance(reach, list) or not reach
                              or not all(isinstance(r, str) for r in reach)):
        raise ValidationError(f"{path}: \"worker_regions\" must be a non-empty list of region "
                              f"ids, e.g. [\"bj\", \"gz\"]")
    return config
