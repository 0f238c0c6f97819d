"""Exceptions raised by :class:`selm_client.Client`.

Every failure is a :class:`SelmError`. Errors the server sent carry its ``code`` (the
``selm.v1.ErrorCode`` number), ``code_name`` (``"INVALID_ARGUMENT"``), ``message`` and ``field`` (the
offending request field as a proto path, e.g. ``"sampling.top_p"`` or ``"rows[0].chosen.text"``, or
``""``). Each code has its own subclass, so callers can ``except InvalidArgument`` or
``except NotFound``. Failures of the connection itself are :class:`ConnectionClosed` and
:class:`Timeout`.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

__all__ = [
    "SelmError",
    "InvalidArgument",
    "Unauthenticated",
    "NotFound",
    "ResourceExhausted",
    "FrameTooLarge",
    "Malformed",
    "UnknownBody",
    "UnsupportedVersion",
    "PermissionDenied",
    "Cancelled",
    "Internal",
    "Unavailable",
    "OutOfRange",
    "ConnectionClosed",
    "Timeout",
    "ProtocolError",
    "error_from_code",
    "error_like",
]


class SelmError(Exception):
    """Base class of every error of this package.

    Attributes:
        code: the ``selm.v1.ErrorCode`` number (0 for client-side failures without a server code).
        code_name: the code's name without its prefix (``"INVALID_ARGUMENT"``), or ``"CLIENT"``.
        message: human-readable reason (the server's, when the server sent it).
        field: the offending request field as a proto path, or ``""``.
        request_id: the id of the request the error ended, when known.
    """

    code: int = 0
    code_name: str = "CLIENT"

    def __init__(self, message: str, *, field: str = "", request_id: Optional[int] = None,
                 code: Optional[int] = None) -> None:
        if code is not None:
            self.code = code
            self.code_name = _CODE_NAMES.get(code, "CODE_%d" % code)
        self.message = message
        self.field = field
        self.request_id = request_id
        super().__init__(str(self))

    def __str__(self) -> str:
        text = "%s: %s" % (self.code_name, self.message)
        if self.field and self.field not in self.message:
            text += " (field %s)" % self.field
        return text

    def __repr__(self) -> str:
        return "%s(code=%d, message=%r, field=%r, request_id=%r)" % (
            type(self).__name__, self.code, self.message, self.field, self.request_id)


class InvalidArgument(SelmError):
    """A request field is missing or out of range; ``field`` names it."""
    code, code_name = 1, "INVALID_ARGUMENT"


class Unauthenticated(SelmError):
    """No Hello yet, or a wrong auth token."""
    code, code_name = 2, "UNAUTHENTICATED"


class NotFound(SelmError):
    """A version, checkpoint or request id does not exist."""
    code, code_name = 3, "NOT_FOUND"


class ResourceExhausted(SelmError):
    """The server's queue, KV cache or the connection's output buffer is full."""
    code, code_name = 4, "RESOURCE_EXHAUSTED"


class FrameTooLarge(SelmError):
    """A frame exceeds the receiver's limit (the server's ``max_frame_bytes``, or this client's)."""
    code, code_name = 5, "FRAME_TOO_LARGE"


class Malformed(SelmError):
    """A frame is not a valid ``selm.v1.Envelope``."""
    code, code_name = 6, "MALFORMED"


class UnknownBody(SelmError):
    """The envelope had no body, or one the receiver does not know or accept."""
    code, code_name = 7, "UNKNOWN_BODY"


class UnsupportedVersion(SelmError):
    """The server does not speak this client's protocol version."""
    code, code_name = 8, "UNSUPPORTED_VERSION"


class PermissionDenied(SelmError):
    """The request is not allowed (for example a path outside the server's data directory)."""
    code, code_name = 9, "PERMISSION_DENIED"


class Cancelled(SelmError):
    """The request was cancelled before it produced a result."""
    code, code_name = 10, "CANCELLED"


class Internal(SelmError):
    """A bug or an I/O failure on the server."""
    code, code_name = 11, "INTERNAL"


class Unavailable(SelmError):
    """The server is shutting down or not ready."""
    code, code_name = 12, "UNAVAILABLE"


class OutOfRange(SelmError):
    """A value exceeds a model limit (token id ≥ vocab size, prompt longer than the context)."""
    code, code_name = 13, "OUT_OF_RANGE"


class ConnectionClosed(SelmError):
    """The connection is closed (by the server, by a network failure, or by :meth:`Client.close`);
    requests still running on it are ended with this error."""
    code_name = "CONNECTION_CLOSED"


class Timeout(SelmError, TimeoutError):
    """No reply arrived within the client's ``timeout``."""
    code_name = "TIMEOUT"


class ProtocolError(SelmError):
    """The server sent something this client did not expect (a reply of the wrong kind)."""
    code_name = "PROTOCOL"


_BY_CODE: Dict[int, Type[SelmError]] = {
    cls.code: cls for cls in (
        InvalidArgument, Unauthenticated, NotFound, ResourceExhausted, FrameTooLarge, Malformed,
        UnknownBody, UnsupportedVersion, PermissionDenied, Cancelled, Internal, Unavailable, OutOfRange)
}
_CODE_NAMES: Dict[int, str] = {code: cls.code_name for code, cls in _BY_CODE.items()}


def error_from_code(code: int, message: str, field: str = "", request_id: Optional[int] = None) -> SelmError:
    """The exception for a server ``Error`` message: the subclass of its code (a :class:`SelmError`
    carrying the raw number for codes this client does not know)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return SelmError(message, field=field, request_id=request_id, code=code)
    return cls(message, field=field, request_id=request_id)


def error_like(error: SelmError, request_id: Optional[int]) -> SelmError:
    """A fresh exception of ``error``'s class and content for another request (one failure of the
    connection ends many requests; each raises its own exception object)."""
    copy = type(error).__new__(type(error))
    copy.__dict__.update(error.__dict__)
    copy.request_id = request_id
    Exception.__init__(copy, str(copy))
    return copy
