"""The run state: ``<home>/playbooks/<name>.json``, what earlier runs of a playbook did."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NotFoundError
from ..image import Image
from ..job import Job
from .errors import PlaybookError
from .result import DONE
from .retried import RetriedJob, attempts
from .values import GoneImage, plain

if TYPE_CHECKING:
    from ..cloud import Cloud

_VERSION = 1


class RunState:
    """Step key -> {last, runs: {fingerprint: record}}; a record holds the step's status and
    its output as ids (:func:`encode_output`). Written atomically after every change."""

    def __init__(self, path: Path, name: str, *, writable: bool) -> None:
        self.path = path
        self.name = name
        self.writable = writable
        self.data: dict[str, Any] = {"version": _VERSION, "name": name, "steps": {}}
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

    def latest(self, key: str) -> dict[str, Any] | None:
        """The record of this step's latest run, whatever its arguments."""
        entry = self.data["steps"].get(key) or {}
        return (entry.get("runs") or {}).get(entry.get("last") or "")

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


def encode_output(output: Any) -> dict[str, Any]:
    """A step's output as a record holds it: ids, not objects."""
    if isinstance(output, RetriedJob):
        return {"jobs": output.job_ids}
    if isinstance(output, Job):
        return {"job": output.id}
    if isinstance(output, (Image, GoneImage)):
        return {"image": output.id}
    if isinstance(output, Path):
        return {"path": str(output)}
    return {"value": plain(output)}


def decode_output(cloud: Cloud, encoded: dict[str, Any]) -> Any:
    """The output a record holds, as the catalog shows it now (a deleted image: GoneImage)."""
    if "jobs" in encoded:
        return attempts([cloud.job(j) for j in encoded["jobs"]])
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
