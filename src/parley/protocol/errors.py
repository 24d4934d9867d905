"""One exception tree for everything a peer may be told.

Library errors are translated into these at the boundary; a peer never sees an
internal exception text.
"""

from __future__ import annotations


class ParleyError(Exception):
    """An error with a stable `code` and an HTTP status, safe to show to a peer."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class MalformedJSON(ParleyError):
    status, code = 400, "malformed_json"


class InvalidRequest(ParleyError):
    """The JSON parsed but a field is missing, of the wrong type or out of range."""

    status, code = 422, "validation_error"


class UnknownFrameType(ParleyError):
    status, code = 400, "unknown_frame_type"


class Unauthorized(ParleyError):
    status, code = 401, "unauthorized"


class Forbidden(ParleyError):
    status, code = 403, "forbidden"


class NotFound(ParleyError):
    status, code = 404, "not_found"


class Conflict(ParleyError):
    status, code = 409, "conflict"


class CursorExpired(ParleyError):
    status, code = 410, "cursor_expired"


class TooLarge(ParleyError):
    status, code = 413, "request_too_large"


class RateLimited(ParleyError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ParleyError):
    """Storage or another dependency cannot serve right now; the client should retry."""

    status, code = 503, "unavailable"
