"""Exceptions of imagerelay: every one carries a stable ``code`` (API.md "Errors")."""

from __future__ import annotations

import builtins
from typing import Any

__all__ = [
    "ImageRelayError",
    "ValidationError",
    "NotFoundError",
    "PermissionDeniedError",
    "ImageBusyError",
    "ConflictError",
    "QuotaExceededError",
    "TransferError",
    "IntegrityError",
    "ReplicationFailedError",
    "TimeoutError",
    "error_for_code",
]


class ImageRelayError(Exception):
    """Base of every imagerelay error.

    Attributes: ``code`` (stable, e.g. ``Image.ImageStatusForbidden``), ``message``,
    ``http_status`` and ``problems``: a list of ``(code, message)``, one per failed rule.
    """

    default_code = "Transfer.Failed"
    default_status = 500

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        http_status: int | None = None,
        problems: list[tuple[str, str]] | None = None,
    ) -> None:
        self.code: str = code or self.default_code
        self.message: str = message
        self.http_status: int = http_status or self.default_status
        self.problems: list[tuple[str, str]] = list(problems or [(self.code, message)])
        super().__init__(f"{self.code}: {message}")


class ValidationError(ImageRelayError):
    default_code = "InvalidParameter"
    default_status = 400


class NotFoundError(ImageRelayError):
    default_code = "NoSuchImage"
    default_status = 404


class PermissionDeniedError(ImageRelayError):
    default_code = "AccessDenied"
    default_status = 403


class ImageBusyError(ImageRelayError):
    default_code = "Image.ImageStatusForbidden"
    default_status = 409


class ConflictError(ImageRelayError):
    default_code = "AlreadyExists"
    default_status = 409


class QuotaExceededError(ImageRelayError):
    default_code = "Image.ExceedSharedToUserNumQuota"
    default_status = 413


class TransferError(ImageRelayError):
    default_code = "Transfer.Failed"
    default_status = 500


class IntegrityError(TransferError):
    default_code = "Transfer.IntegrityError"
    default_status = 500


class ReplicationFailedError(ImageRelayError):
    """A job's copy failed; ``.job`` is the job (its copies that could go on, went on)."""

    default_code = "Job.Failed"
    default_status = 500

    def __init__(self, message: str = "", *, job: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.job = job


class TimeoutError(ImageRelayError, builtins.TimeoutError):  # noqa: A001 - API.md name
    default_code = "Timeout"
    default_status = 504


_CLASS_BY_CODE: dict[str, type[ImageRelayError]] = {}
for _cls, _codes in {
    ValidationError: [
        "InvalidParameter", "PolicyViolation", "Image.ImageNotSupportCopy",
        "Image.LargeImageCopyForbidden", "Image.LargeImageImportForbidden",
        "Image.RegionNotSupportCopy", "Image.DestRegionIsEmpty",
        "Image.UnCustomImageCannotBeShared", "Image.AccountListIsEmpty",
        "Image.InvalidAccount", "Image.CannotShareToOwner",
        "Image.UnCustomImageCannotBeDeleted",
    ],
    NotFoundError: ["NoSuchImage", "NoSuchRegion", "NoSuchAccount", "NoSuchJob"],
    PermissionDeniedError: ["AccessDenied"],
    ImageBusyError: ["Image.ImageStatusForbidden", "Image.CreatingImageCannotBeDeleted"],
    ConflictError: [
        "Image.AccountHasBeenShared", "Image.AccountNotShared",
        "Image.ImageHasBeenSharedToOthers", "IdempotentParameterMismatch", "AlreadyExists",
    ],
    QuotaExceededError: [
        "Image.ExceedSharedToUserNumQuota", "Image.ExceedAcceptSharedImageNumQuota",
    ],
    TransferError: ["Transfer.Failed", "Region.StoreUnavailable"],
    IntegrityError: ["Transfer.IntegrityError"],
    ReplicationFailedError: ["Job.Failed"],
    TimeoutError: ["Timeout"],
}.items():
    for _code in _codes:
        _CLASS_BY_CODE[_code] = _cls


def error_for_code(
    code: str, message: str, problems: list[tuple[str, str]] | None = None,
    http_status: int | None = None,
) -> ImageRelayError:
    """Builds the exception of ``code`` (used by the C++ core's error translation)."""
    cls = _CLASS_BY_CODE.get(code, TransferError)
    return cls(message, code=code, http_status=http_status,
               problems=[tuple(p) for p in problems] if problems else None)  # type: ignore[misc]
