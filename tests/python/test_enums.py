"""Statuses and states are enums of the core's values that compare equal to their strings
(scripts written against API.md compare strings)."""
from __future__ import annotations

import json
from pathlib import Path

import imagerelay as ir
from imagerelay import _core
from conftest import CHUNK, make_dense


def test_the_enums_are_the_cores_lists() -> None:
    assert [s.value for s in ir.ImageStatus] == _core.image_statuses()
    assert [s.value for s in ir.TaskState] == _core.task_states()
    assert [s.value for s in ir.JobState] == _core.job_states()


def test_statuses_compare_and_show_as_their_strings(cloud: ir.Cloud, files: Path) -> None:
    image = cloud.import_image(make_dense(files / "a.raw", 2 * CHUNK), region="bj", name="a")
    assert image.status == "Available" and image.status is ir.ImageStatus.AVAILABLE
    assert f"{image.status}" == "Available" and str(image.status) == "Available"
    assert json.dumps({"status": image.status}) == '{"status": "Available"}'
    job = image.replicate("gz")
    job.wait(timeout=60)
    assert job.state == ir.JobState.COMPLETED == "Completed"
    assert job.tasks["gz"].state == "Completed" and isinstance(job.tasks["gz"].state, str)
