"""The background copy worker of a home: ``imagerelay worker`` and its supervision.

A CLI command that queues copies and returns leaves them to one worker process per home,
started here if none runs; ``<home>/worker.lock`` says whether one does.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

from .cloud import Cloud


def _lock_path(home: Path) -> Path:
    return home / "worker.lock"


def worker_running(home: Path) -> bool:
    """Whether an ``imagerelay worker`` of this home holds its lock (its engine is open and
    its copy workers run)."""
    lock_path = _lock_path(home)
    if not lock_path.exists():
        return False
    with open(lock_path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def ensure_background_worker(home: Path, catalog: str = "") -> bool:
    """Starts ``imagerelay worker --until-idle`` for this home (and its catalog) unless one
    already runs; True if it started one."""
    if worker_running(home):
        return False
    with open(home / "worker.log", "ab") as log:  # the child keeps its own copy
        # The catalog's URI goes in the environment, not the command line that ps shows.
        subprocess.Popen(
            [sys.executable, "-m", "imagerelay", "--home", str(home), "worker", "--until-idle"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            env=dict(os.environ, IMAGERELAY_CATALOG=catalog))
    return True


def run_worker(cloud: Cloud, *, until_idle: bool) -> int:
    """Runs copies for the home; holds the worker lock so that only one is started for it.

    SIGTERM stops it cleanly: copies in flight are handed back and resume at the next open.
    """

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        with open(_lock_path(cloud.home), "a+") as lock:
            while True:
                fcntl.flock(lock, fcntl.LOCK_EX)
                while not (cloud.wait_idle(timeout=1.0) and until_idle):
                    pass
                fcntl.flock(lock, fcntl.LOCK_UN)
                # A command that queued a copy while we held the lock saw it taken and left
                # the copy to us: look once more now that the lock is free.
                if cloud.wait_idle(timeout=0):
                    return 0
    except KeyboardInterrupt:
        return 0
