"""imagerelay: replicate VM images between regions and share them between accounts.

    import imagerelay as ir
    with ir.open() as cloud:
        golden = cloud.import_image("golden.raw", region="bj", name="golden")
        job = golden.replicate(["gz", "su"])
        job.wait(progress=True)
        for copy in job.copies.values():
            copy.share("team-b")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _core
from . import _log  # noqa: F401 - the core logs through `logging` from now on
from ._enums import ImageStatus as ImageStatus
from ._enums import JobState as JobState
from ._enums import TaskState as TaskState
from ._types import Account as Account
from .access_keys import AccessKey as AccessKey
from ._types import Event as Event
from ._types import Handle as Handle
from ._types import Limits as Limits
from ._types import Region as Region
from .cloud import Cloud as Cloud
from .cloud import PolicyRequest as PolicyRequest
from .cloud import open as open  # noqa: A004 - API.md name
from .collections import ImageList as ImageList
from .collections import JobList as JobList
from .errors import ConflictError as ConflictError
from .errors import ImageBusyError as ImageBusyError
from .errors import ImageRelayError as ImageRelayError
from .errors import IntegrityError as IntegrityError
from .errors import NotFoundError as NotFoundError
from .errors import PermissionDeniedError as PermissionDeniedError
from .errors import QuotaExceededError as QuotaExceededError
from .errors import ReplicationFailedError as ReplicationFailedError
from .errors import TimeoutError as TimeoutError  # noqa: A004 - API.md name
from .errors import TransferError as TransferError
from .errors import ValidationError as ValidationError
from .image import Image as Image
from .job import Job as Job
from .job import Task as Task
from .scrub import ScrubReport as ScrubReport

__version__: str = getattr(_core, "__version__", "0.0.0")

if TYPE_CHECKING:
    from .playbook import Playbook as Playbook


def __getattr__(name: str) -> Any:
    # The playbook runner (PyYAML, asyncio) loads on first use: a CLI command or a script
    # that runs no playbook starts without it (PEP 562).
    if name == "Playbook":
        from .playbook import Playbook

        return Playbook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AccessKey", "Account", "Cloud", "ConflictError", "Event", "Handle", "Image", "ImageBusyError",
    "ImageList", "ImageRelayError", "ImageStatus", "IntegrityError", "Job", "JobList",
    "JobState", "Limits",
    "NotFoundError", "PermissionDeniedError", "Playbook", "PolicyRequest", "QuotaExceededError",
    "Region", "ReplicationFailedError", "ScrubReport", "Task", "TaskState", "TimeoutError",
    "TransferError", "ValidationError",
    "open",
]
