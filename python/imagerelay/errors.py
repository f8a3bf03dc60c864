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
    "error_for_kind",
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


# The core says which kind each stable code is (cpp/src/base/error.cpp, the one table of codes);
# here each kind has its class.
_CLASS_BY_KIND: dict[str, type[ImageRelayError]] = {
    "Validation": ValidationError,
    "NotFound": NotFoundError,
    "PermissionDenied": PermissionDeniedError,
    "ImageBusy": ImageBusyError,
    "Conflict": ConflictError,
    "QuotaExceeded": QuotaExceededError,
    "Transfer": TransferError,
    "Integrity": IntegrityError,
    "ReplicationFailed": ReplicationFailedError,
    "Timeout": TimeoutError,
}


def error_for_kind(
    kind: str, code: str, message: str, problems: list[tuple[str, str]] | None = None,
    http_status: int | None = None,
) -> ImageRelayError:
    """Builds the exception of an error of ``kind`` (the C++ core's error translation)."""
    cls = _CLASS_BY_KIND.get(kind, TransferError)
    return cls(message, code=code, http_status=http_status,
               problems=[tuple(p) for p in problems] if problems else None)  # type: ignore[misc]


def error_for_code(
    code: str, message: str, problems: list[tuple[str, str]] | None = None,
    http_status: int | None = None,
) -> ImageRelayError:
    """Builds the exception of ``code``: its class and HTTP status as the core says."""
    from . import _core

    status = http_status if http_status is not None else _core.error_http_status(code)
    return error_for_kind(_core.error_kind(code), code, message, problems, status)
