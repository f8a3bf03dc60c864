"""Images, jobs and events as BCC's API writes them: camelCase, times as
``2026-11-30T08:00:00Z`` (UTC, seconds), sizes of disks in whole GB."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .._types import Event
from ..image import Image
from ..job import Job

_GIB = 2**30


def bcc_time(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when is not None else ""


def image_model(image: Image, shared_to: int | None = None,
                share_limit: int | None = None) -> dict[str, Any]:
    """BCC's ImageModel (Go ``api.ImageModel``, Java ``ImageModel``), plus imagerelay's
    own fields after BCC's: region, progress, size, digest, format, source."""
    disk_gb = max(1, -(-max(image.virtual_size, image.size) // _GIB))
    model: dict[str, Any] = {
        "id": image.id,
        "name": image.name,
        "type": image.type,
        "osType": image.os_type,
        "osVersion": image.os_version,
        "osArch": image.os_arch,
        "osName": image.os_name,
        "osBuild": "",
        "osLang": "",
        "createTime": bcc_time(image.created_at),
        "status": str(image.status),
        "desc": image.description,
        "specialVersion": "",
        "package": False,
        "encrypted": False,
        "minDiskGb": disk_gb,
        "diskSize": disk_gb,
        "snapshots": [],
        "region": image.region,
        "progress": image.progress,
        "size": image.size,
        "digest": image.digest,
        "format": image.format,
        "sourceImageId": image.source_image_id,
        "sourceRegion": image.source_region,
    }
    if image.error:
        model["errorMessage"] = image.error
    if shared_to is not None:
        model["sharedToUserNum"] = shared_to
    if share_limit is not None:
        model["shareToUserNumLimit"] = share_limit
    return model


def job_model(job: Job) -> dict[str, Any]:
    """A job with each destination region's progress (the extras' ``/jobs``)."""
    return {
        "jobId": job.id,
        "sourceImageId": job.source_image_id,
        "sourceRegion": job.source_region,
        "state": str(job.state),
        "createTime": bcc_time(job.created_at),
        "progress": round(job.progress, 2),
        "tasks": [{
            "region": t.region,
            "imageId": t.dest_image_id,
            "state": str(t.state),
            "bytesTotal": t.bytes_total,
            "bytesDone": t.bytes_done,
            "progress": round(100.0 * t.bytes_done / t.bytes_total, 2) if t.bytes_total
            else (100.0 if t.state == "Completed" else 0.0),
            "rate": t.rate,
            "errorCode": t.error_code,
            "errorMessage": t.error,
            "startTime": bcc_time(t.started_at),
            "finishTime": bcc_time(t.finished_at),
        } for t in job.tasks.values()],
    }


def event_model(event: Event) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "time": event.time.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "type": event.type,
        "account": event.account,
        "imageId": event.image_id,
        "jobId": event.job_id,
        "region": event.region,
        "detail": event.detail,
    }
