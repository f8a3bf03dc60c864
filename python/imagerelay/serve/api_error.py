"""The errors the server answers with: BCC's body ``{requestId, code, message}`` and the
HTTP status BCC gives each code (docs/serve.md "Errors")."""

from __future__ import annotations

from ..errors import ImageRelayError

# BCE's common codes (the ones every BCE service answers), with their statuses.
ACCESS_DENIED = ("AccessDenied", 403)
INVALID_ACCESS_KEY_ID = ("InvalidAccessKeyId", 403)
INVALID_AUTH_HEADER = ("InvalidHTTPAuthHeader", 400)
SIGNATURE_DOES_NOT_MATCH = ("SignatureDoesNotMatch", 400)
REQUEST_EXPIRED = ("RequestExpired", 400)
MALFORMED_JSON = ("MalformedJSON", 400)
INVALID_PARAMETER = ("InvalidParameter", 400)
INVALID_URI = ("InvalidURI", 400)
INVALID_VERSION = ("InvalidVersion", 404)
METHOD_NOT_ALLOWED = ("MethodNotAllowed", 405)
BODY_TOO_LARGE = ("EntityTooLarge", 413)
BAD_DIGEST = ("BadDigest", 400)
INTERNAL_ERROR = ("InternalError", 500)

# The engine's codes that BCC spells otherwise (docs/errors.md): every other code is BCC's
# own already (Image.*, NoSuchImage...) and is answered as it is, with its own status.
_ENGINE_TO_BCC = {
    # A transfer failure reaches the client only through an import or a read; it is the
    # server's trouble (500), under BCE's name for it.
    "Transfer.Failed": INTERNAL_ERROR,
    "Transfer.IntegrityError": INTERNAL_ERROR,
}


class ApiError(Exception):
    """A request refused: BCC's code, HTTP status and a message for the client."""

    def __init__(self, kind: tuple[str, int], message: str) -> None:
        super().__init__(message)
        self.code, self.status = kind
        self.message = message


def from_engine(error: ImageRelayError) -> ApiError:
    """The answer to an engine error: its code and status, or BCC's equivalent."""
    kind = _ENGINE_TO_BCC.get(error.code, (error.code, error.http_status))
    return ApiError(kind, error.message)


def invalid(field: str, problem: str) -> ApiError:
    """InvalidParameter naming the field."""
    return ApiError(INVALID_PARAMETER, f"{field}: {problem}")
