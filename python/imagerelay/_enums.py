"""Image statuses and task and job states: ``str`` enums, so that they compare equal to the
strings scripts already use (``image.status == "Available"``) and show as them. The core's
enums (cpp/include/imagerelay/model.hpp) are the source: tests/python/test_enums.py checks these
lists against ``_core.image_statuses()``, ``task_states()`` and ``job_states()``."""

from __future__ import annotations

import enum


class _StrEnum(str, enum.Enum):
    """enum.StrEnum, which Python 3.10 lacks: shown and formatted as its value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class ImageStatus(_StrEnum):
    CREATING = "Creating"
    AVAILABLE = "Available"
    REPLICATING = "Replicating"
    CREATE_FAILED = "CreateFailed"
    DELETED = "Deleted"
    NOT_AVAILABLE = "NotAvailable"


class TaskState(_StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


class JobState(_StrEnum):
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    PARTIALLY_COMPLETED = "PartiallyCompleted"
