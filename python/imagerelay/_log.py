"""The core's diagnostics (a copy worker that failed, a pack set aside, a sweep that stopped)
go to the ``logging`` logger ``"imagerelay"``, at their level; configure it as any other.
With no logging configured, Python's last-resort handler prints warnings and errors."""

from __future__ import annotations

import atexit

from . import _core

_core._log_to_python(True)
# Registered before the engines' own exit handler (cloud.py), so that it runs after it: the
# engines' last messages still reach logging, and none is sent once the interpreter goes.
atexit.register(_core._log_to_python, False)
