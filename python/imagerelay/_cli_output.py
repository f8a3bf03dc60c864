"""What the command line prints: tables for people, JSON with ``--json``, and whether
progress bars show (``Output.bars``). Every text the CLI writes is made here."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ._types import Account, Event, Region
from .access_keys import AccessKey
from .collections import human_size as size
from .errors import ImageRelayError
from .image import Image
from .job import Job, Task
from .scrub import ScrubReport


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    @property
    def bars(self) -> bool:
        """Progress and notes go to stderr: bars for a person at a terminal; without one (a
        log, CI) a line every 10 s of long work (``_progress.LineBar``). Not with ``--json``
        at a terminal."""
        return not (self.as_json and sys.stderr.isatty())

    def emit(self, data: Any, human: Callable[[], str]) -> None:
        if self.as_json:
            print(json.dumps(_jsonable(data), indent=2, sort_keys=True))
        else:
            text = human()
            if text:
                print(text)

    def step_printer(self) -> Callable[[Any], None] | None:
        """What prints each step of a playbook as it ends: nothing with ``--json``."""
        return None if self.as_json else lambda step: print(step, flush=True)

    def note(self, text: str) -> None:
        """A note beside the progress, on stderr."""
        if self.bars:
            print(text, file=sys.stderr, flush=True)


def error(text: str) -> None:
    """The error line on stderr: ``error: <code>: <message>``."""
    print(f"error: {text}", file=sys.stderr)


def failed(e: ImageRelayError, *, as_json: bool) -> None:
    """A request that failed: one error line per problem on stderr (every rule it broke, the
    first one first); with ``--json`` also the error as JSON on stdout."""
    error(f"{e.code}: {e.message}")
    for code, message in e.problems[1:]:
        error(f"{code}: {message}")
    if as_json:
        print(json.dumps({"error": {
            "code": e.code, "message": e.message, "http_status": e.http_status,
            "problems": [{"code": c, "message": m} for c, m in e.problems]}},
            indent=2, sort_keys=True))


def warning(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def no_region_credentials(region_id: str) -> str:
    return (f"region {region_id} keeps no credentials: every command that reaches it uses "
            "the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY of its own environment; to keep "
            f"them with the region, remove it and add it again with --access-key-id and "
            "--secret-access-key (or --credentials-from-env)")


def interrupted() -> None:
    print("interrupted", file=sys.stderr)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (Image, Job)):
        return _jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain text table for people."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def regions_table(regions: list[Region]) -> str:
    return table([[r.id, r.name, r.store] for r in regions], ["REGION", "NAME", "STORE"])


def accounts_table(accounts: list[Account]) -> str:
    return table([[a.id, a.name] for a in accounts], ["ACCOUNT", "NAME"])


def new_access_key(key: AccessKey) -> str:
    return (f"access key of {key.account}:\n"
            f"  access key id:     {key.access_key_id}\n"
            f"  secret access key: {key.secret_access_key}\n"
            "The secret is shown this once: keep it now (`--json` prints both as JSON).")


def access_keys_table(keys: list[AccessKey]) -> str:
    return table([[k.access_key_id, k.created_at.isoformat(timespec="seconds")] for k in keys],
                 ["ACCESS KEY ID", "CREATED"])


def images_table(images: Sequence[Image], waiting: Waiting | None = None) -> str:
    def status(i: Image) -> str:
        text = i.status if i.progress is None else f"{i.status} {i.progress:.0f}%"
        return text + (WAITING if waiting and i.id in waiting.copies else "")

    return table([[i.id, i.name, i.region, i.type, status(i), i.format, size(i.virtual_size),
                   size(i.size), i.owner or "-", (i.digest or "")[:19]] for i in images],
                 ["ID", "NAME", "REGION", "TYPE", "STATUS", "FORMAT", "DISK", "STORED", "OWNER",
                  "DIGEST"])


def image_details(image: Image) -> str:
    return "\n".join(f"{k:16} {v}" for k, v in image.to_dict().items())


def imported(image: Image) -> str:
    disk = "" if image.format == "raw" else f" {image.format} of a {size(image.virtual_size)} disk,"
    return (f"imported {image.id} ({image.name}) in {image.region}:{disk} {size(image.size)}, "
            f"{image.digest}")


WAITING = " (waiting for a worker)"


@dataclasses.dataclass(frozen=True)
class Waiting:
    """The copies no live worker runs (``cloud.copies_waiting_for_a_worker()``), and
    whether this command started a background worker for them."""

    copies: set[str]
    worker_started: bool
    home: Path

    def task_state(self, task: Task) -> str:
        return task.state + (WAITING if task.dest_image_id in self.copies else "")

    def job_state(self, job: Job) -> str:
        waits = any(t.dest_image_id in self.copies for t in job.tasks.values())
        return job.state + (WAITING if waits else "")

    def hints(self, jobs: Sequence[Job]) -> str:
        """What resumes each job's waiting copies, one line per job, after a blank line;
        "" when none waits."""
        lines = []
        for job in jobs:
            regions = [r for r, t in job.tasks.items() if t.dest_image_id in self.copies]
            if not regions:
                continue
            one = len(regions) == 1
            it = "it" if one else "them"
            copies = (f"the copy to {regions[0]} waits" if one
                      else f"the copies to {', '.join(regions)} wait")
            now = (f"a background `imagerelay worker` was started to resume {it} (log: "
                   f"{self.home / 'worker.log'})" if self.worker_started
                   else f"run `imagerelay worker` to resume {it}")
            lines.append(f"{job.id}: {copies} for a worker (the one running {it} stopped, or "
                         f"none runs); {now}, or `imagerelay jobs wait {job.id}` to resume "
                         f"{it} and wait")
        return "\n\n" + "\n".join(lines) if lines else ""


def job_json(job: Job, waiting: Waiting | None = None) -> dict[str, Any]:
    """The job as ``--json`` shows it: ``Job.to_dict()``, each task with
    ``waiting_for_worker``."""
    data = job.to_dict()
    for task in data["tasks"].values():
        task["waiting_for_worker"] = bool(waiting and task["dest_image_id"] in waiting.copies)
    return data


def jobs_table(jobs: Sequence[Job], waiting: Waiting | None = None) -> str:
    return table([[j.id, j.source_image_id, j.source_region, ",".join(j.tasks),
                   waiting.job_state(j) if waiting else j.state, f"{j.progress:.0f}%"]
                  for j in jobs],
                 ["JOB", "SOURCE", "FROM", "TO", "STATE", "PROGRESS"])


def job_copies(job: Job) -> str:
    """The job, then its copies (what ``replicate`` prints)."""
    return jobs_table([job]) + "\n\n" + table(
        [[t.region, t.dest_image_id, t.state, t.error or ""] for t in job.tasks.values()],
        ["REGION", "COPY", "STATE", "ERROR"])


def job_details(job: Job, waiting: Waiting | None = None) -> str:
    """The job, then its copies with their bytes (what ``jobs show`` and ``jobs wait``
    print)."""
    return jobs_table([job], waiting) + "\n\n" + table(
        [[t.region, t.dest_image_id, waiting.task_state(t) if waiting else t.state,
          size(t.bytes_done), size(t.bytes_transferred), size(t.bytes_sent), t.worker or "",
          t.error or ""]
         for t in job.tasks.values()],
        ["REGION", "COPY", "STATE", "DONE", "MOVED", "SENT", "WORKER", "ERROR"])


def job_failed(job: Job) -> str:
    reasons = "; ".join(f"{t.region}: {t.error_code}: {t.error}"
                        for t in job.tasks.values() if t.state == "Failed")
    return f"Job.Failed: job {job.id} failed ({reasons})"


def scrub_reports(reports: list[ScrubReport]) -> str:
    return "\n".join(
        f"{r.region}: not scrubbed: {r.unavailable}" if r.unavailable else
        f"{r.region}: {r.chunks_checked} chunks checked, {len(r.quarantined)} quarantined, "
        f"{r.chunks_repaired} repaired from other regions"
        + (f"; repaired {', '.join(r.images_repaired)}" if r.images_repaired else "")
        + (f"; still damaged {', '.join(r.images_damaged)}" if r.images_damaged else "")
        for r in reports)


def still_damaged(damaged: list[str]) -> str:
    return (f"Transfer.IntegrityError: {len(damaged)} image(s) remain damaged "
            f"({', '.join(damaged)}): no region holds the bytes they lack; delete them, "
            "or import or replicate them again")


_EVENT_HEADERS = ["SEQ", "TIME (UTC)", "TYPE", "ACCOUNT", "IMAGE", "JOB", "REGION"]


def _event_row(e: Event) -> list[Any]:
    return [e.seq, e.time.strftime("%Y-%m-%d %H:%M:%S"), e.type, e.account, e.image_id or "",
            e.job_id or "", e.region or ""]


def events_table(events: list[Event]) -> str:
    return table([_event_row(e) for e in events], _EVENT_HEADERS)


class EventFollower:
    """``events --follow``: prints events as they come, in columns of fixed width for
    people (the header once), or one JSON object a line with ``--json``."""

    _WIDTHS = (7, 19, 19, 12, 10, 10, 0)

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._header = not as_json

    def _line(self, cells: Sequence[Any]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, self._WIDTHS)).rstrip()

    def show(self, events: list[Event]) -> None:
        if self._header:
            print(self._line(_EVENT_HEADERS))
            print(self._line(["-" * max(w, len(h)) for w, h in zip(self._WIDTHS,
                                                                  _EVENT_HEADERS)]))
            self._header = False
        for e in events:
            print(json.dumps(_jsonable(e), sort_keys=True) if self.as_json
                  else self._line(_event_row(e)))
        sys.stdout.flush()
