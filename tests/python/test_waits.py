"""Waits: Image.wait, Job.wait, `await job`, wait_idle and wait_digest are engine waits,
woken by the change they wait for; a timeout, Ctrl-C, or a cancelled asyncio task ends them
and the copies go on."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CHUNK, interrupt_when, make_dense

import imagerelay as ir

SLOW = 256 * 1024  # bytes/s: a 4 MiB copy stays in flight for 16 s


def _copying(open_cloud: Callable[..., ir.Cloud], files: Path) -> tuple[ir.Cloud, ir.Image,
                                                                        ir.Job]:
    """A cloud whose image `a` is Replicating for seconds, and the job copying it."""
    cloud = open_cloud(bandwidth=SLOW)
    image = cloud.import_image(make_dense(files / "a.raw", 64 * CHUNK), region="bj", name="a")
    job = image.replicate("gz")
    assert image.refresh().status == "Replicating"
    return cloud, image, job


def test_image_wait_returns_as_soon_as_the_status_is_reached(
        open_cloud: Callable[..., ir.Cloud], files: Path) -> None:
    _, image, job = _copying(open_cloud, files)

    def cancel_soon() -> None:
        time.sleep(0.5)
        job.cancel()  # the source is Available again

    thread = threading.Thread(target=cancel_soon)
    thread.start()
    assert image.wait(timeout=30) is image  # woken by the change (the engine's wait)
    thread.join()
    assert image.status == "Available"


def test_image_wait_times_out_as_before(open_cloud: Callable[..., ir.Cloud],
                                        files: Path) -> None:
    _, image, job = _copying(open_cloud, files)
    with pytest.raises(ir.TimeoutError) as excinfo:
        image.wait(timeout=0.1)
    assert excinfo.value.code == "Timeout"
    assert excinfo.value.message == f"image {image.id} is still Replicating after 0.1 s"
    with pytest.raises(ir.TimeoutError, match=r"still running after 0\.1 s; its copies go on"):
        job.wait(timeout=0.1)
    assert job.state == "Running" and image.status == "Replicating"
    job.cancel()


@pytest.mark.serial  # Ctrl-C: xdist workers ignore SIGINT, and their children inherit that
def test_ctrl_c_ends_an_image_wait(open_cloud: Callable[..., ir.Cloud], files: Path) -> None:
    _, image, job = _copying(open_cloud, files)
    interrupt_when(lambda: job.refresh().tasks["gz"].bytes_transferred > 0)
    with pytest.raises(KeyboardInterrupt):
        image.wait()
    assert image.refresh().status == "Replicating"  # the wait ended, not the copy
    job.cancel()


def test_a_cancelled_await_ends_its_wait(open_cloud: Callable[..., ir.Cloud],
                                         files: Path) -> None:
    cloud, _, job = _copying(open_cloud, files)

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(job, 0.2)

    # asyncio.run returns once its executor's threads ended: the engine's wait did.
    runner = threading.Thread(target=asyncio.run, args=(main(),))
    runner.start()
    runner.join(120)
    assert not runner.is_alive(), "the cancelled await's wait went on"
    assert job.refresh().state == "Running"
    job.cancel()
    assert cloud.wait_idle(30)
