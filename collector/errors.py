"""The error hierarchy.

Every error the collector raises on purpose is a `CollectorError`. Each one carries the intent
the caller needs to answer correctly: the HTTP status to send, a short machine-readable code and
a message written for the person who has to fix the request. Anything else that escapes a
handler is a bug and is logged with its traceback.
"""

from __future__ import annotations


class CollectorError(Exception):
    """Base of every deliberate error of the collector."""


class ProtocolError(CollectorError):
    """The bytes on the wire are not an HTTP/1.1 request we accept.

    `status_hint` is the status of the response to send before closing (400, 413, 414, 431, 501
    ...); `code` is the short error code of the JSON error body.
    """

    def __init__(self, message: str, status_hint: int = 400, code: str = "bad_request") -> None:
        super().__init__(message)
        self.message = message
        self.status_hint = status_hint
        self.code = code


class BadEvent(CollectorError):
    """One event failed validation; `message` says which field and how to fix it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HTTPError(CollectorError):
    """A request that parsed but cannot be served; rendered as the JSON error shape of SPEC §3."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or []


class StorageUnavailable(CollectorError):
    """The segment directory cannot take writes (disk full, directory gone, I/O error).

    The writer enters a refuse-writes state and the server answers 503 until a probe write
    succeeds again; nothing half-written stays behind.
    """


class ConfigError(CollectorError):
    """The configuration file, an environment override or a flag has a bad value."""
