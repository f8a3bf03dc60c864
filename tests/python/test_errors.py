"""One vocabulary of errors: the core's table (cpp/src/base/error.cpp) says the kind and HTTP
status of every stable code; Python maps the kind to its class, with no table of its own."""
from __future__ import annotations

import pytest

import imagerelay as ir
from imagerelay import _core
from imagerelay.errors import error_for_code

CLASS_OF_KIND = {
    "Validation": ir.ValidationError,
    "NotFound": ir.NotFoundError,
    "PermissionDenied": ir.PermissionDeniedError,
    "ImageBusy": ir.ImageBusyError,
    "Conflict": ir.ConflictError,
    "QuotaExceeded": ir.QuotaExceededError,
    "Transfer": ir.TransferError,
    "Integrity": ir.IntegrityError,
    "ReplicationFailed": ir.ReplicationFailedError,
    "Timeout": ir.TimeoutError,
}


@pytest.mark.parametrize("code", _core.error_codes())
def test_every_code_of_the_core_raises_the_class_of_its_kind(code: str) -> None:
    cls = CLASS_OF_KIND[_core.error_kind(code)]
    with pytest.raises(ir.ImageRelayError) as e:
        _core._raise_for_test(code, "what went wrong")
    assert type(e.value) is cls
    assert e.value.code == code
    assert e.value.message == "what went wrong"
    assert e.value.http_status == _core.error_http_status(code)
    made = error_for_code(code, "m")
    assert type(made) is cls and made.http_status == e.value.http_status


def test_the_codes_and_classes_of_api_md_hold() -> None:
    # API.md "Errors": a few codes and the class a user's script catches them by.
    assert _core.error_kind("Image.ImageStatusForbidden") == "ImageBusy"
    assert _core.error_kind("Transfer.IntegrityError") == "Integrity"
    assert issubclass(ir.IntegrityError, ir.TransferError)
    assert _core.error_http_status("NoSuchImage") == 404
    # Every class's default code is one the core knows, of that class's kind.
    for kind, cls in CLASS_OF_KIND.items():
        assert cls.default_code in _core.error_codes()
        assert _core.error_kind(cls.default_code) == kind


def test_an_unknown_code_is_a_transfer_error() -> None:
    with pytest.raises(ir.TransferError) as e:
        _core._raise_for_test("Something.New", "m")
    assert e.value.code == "Something.New" and e.value.http_status == 500
