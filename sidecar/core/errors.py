"""The sidecar's exception tree, and the one table that maps it to HTTP responses.

    SidecarError
    ├── NotAuthenticated        401  credentials missing, malformed, unknown, revoked, expired
    ├── KeyLimitReached         400  the user already has the maximum of active keys
    ├── Forbidden               403  the key endpoints asked about through forward auth
    ├── KeyRestricted           403  a key outside what it may do (SPEC Part 3)
    │   ├── AddressNotAllowed        used from an address outside its allowed_ips
    │   └── ScopeNotGranted          none of its scopes allows this method and path
    ├── AmbiguousPath           400  a path the upstream might read differently (paths.py)
    ├── MalformedRequest        400  a request the HTTP parser refused (httpserver.py)
    ├── HostInvalid             400  no Host header (HTTP/1.1), or more than one
    ├── UpgradeNotGet           400  a WebSocket upgrade with a method other than GET
    ├── DecisionRequestInvalid  400  a forward-auth request without its dialect's original request
    ├── KeyNotFound             404  unknown id, or another user's key
    ├── KeyConflict             409  the key's state forbids the action
    │   ├── KeyNotActive             revoked or expired
    │   ├── KeyAlreadyRotated        rotated, still in its grace period
    │   └── KeyChangedMeanwhile      changed by concurrent requests on every attempt
    ├── MethodNotAllowed        405  a method an endpoint of the sidecar's own does not serve
    ├── ReportSignatureInvalid  401  a secret-scanning report without a valid signature
    ├── ReportInvalid           422  a secret-scanning report that is not an array of tokens
    ├── RequestInvalid          422  FastAPI-shaped validation errors
    ├── PayloadTooLarge         413  request body over server.max_body_bytes (or a report's bound)
    ├── ReportTooSlow           408  a secret-scanning report body slower than its timeout
    ├── TargetTooLong           414  request-target over server.limits (httpserver.py)
    ├── HeadersTooLarge         431  request headers over server.limits (httpserver.py)
    ├── RateLimited             429  over the matching rate-limit rule
    ├── TooManyFailedAuth       429  the client failed authentication too often (with Retry-After)
    ├── StoreUnavailable        503  Redis could not be reached (with Retry-After)
    ├── TooManyWebSockets       503  server.max_websockets open already (with Retry-After)
    ├── ScanningKeysUnavailable 503  the secret-scanning public keys URL cannot be read
    ├── ReportsBusy             503  too many secret-scanning reports being read (with Retry-After)
    ├── UnsupportedCoding       501  a request Transfer-Encoding other than chunked
    ├── UpstreamUnavailable     502  upstream refused or unreachable
    └── UpstreamTimeout         504  upstream did not answer in time

``ClientGone`` stands apart: the client disconnected before its request body was
complete, so there is nobody to answer (recorded as 499, never sent).

Third-party exceptions (redis, httptools, PyJWT) are translated where they are raised.
"""

from __future__ import annotations

from typing import Any

import orjson

# The process's exit status (``callcov-sidecar``): success, a runtime failure (a port in
# use, Redis unreachable for an operator command), a usage error or invalid config.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

UNAUTHENTICATED_DETAIL = "Could not validate credentials"
# On an answer sent before the request body was read: the rest is not worth draining.
CLOSE = (b"connection", b"close")
ACCEPTED_SCOPES = b"x-callcov-accepted-scopes"
# Recorded (never sent) when the client went away before its response was complete, as nginx.
CLIENT_CLOSED = 499


class SidecarError(Exception):
    status = 500
    detail: Any = "Internal server error"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return []

    def body(self) -> bytes:
        return orjson.dumps({"detail": self.detail})


def rendered(exc: SidecarError, request_id: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The one way an error goes out: its status, headers and JSON body."""
    body = exc.body()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"x-request-id", request_id),
        *exc.headers(),
    ]
    return exc.status, headers, body


class NotAuthenticated(SidecarError):
    status = 401
    detail = UNAUTHENTICATED_DETAIL

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # machine-readable, for logs and metrics; never sent

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"www-authenticate", b"Bearer")]


class KeyLimitReached(SidecarError):
    status = 400

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.detail = f"Maximum number of API keys ({limit}) reached. Please expire unused keys."


class Forbidden(SidecarError):
    status = 403
    detail = "The API-key endpoints are served by the sidecar itself, never through forward auth"


class KeyRestricted(SidecarError):
    status = 403


class AddressNotAllowed(KeyRestricted):
    detail = "API key is not allowed from this address"


class ScopeNotGranted(KeyRestricted):
    detail = "API key does not have the required scope"

    def __init__(self, accepted: tuple[str, ...]) -> None:
        super().__init__(accepted)
        self.accepted = accepted  # the configured scopes that would allow it, sorted

    def headers(self) -> list[tuple[bytes, bytes]]:
        if not self.accepted:
            return []
        return [(ACCEPTED_SCOPES, ",".join(self.accepted).encode())]


class AmbiguousPath(SidecarError):
    status = 400
    detail = "Ambiguous request path"


class MalformedRequest(SidecarError):
    status = 400
    detail = "Invalid HTTP request"


class HostInvalid(SidecarError):
    """As nginx: an HTTP/1.1 request must name its Host once; any request at most once."""

    status = 400

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.detail = "Missing Host header" if not count else "More than one Host header"


class UpgradeNotGet(SidecarError):
    status = 400
    detail = "A WebSocket upgrade must use GET"


class DecisionRequestInvalid(SidecarError):
    status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class KeyNotFound(SidecarError):
    status = 404
    detail = "API key not found"


class KeyConflict(SidecarError):
    status = 409


class KeyNotActive(KeyConflict):
    detail = "API key is not active"


class KeyAlreadyRotated(KeyConflict):
    detail = "API key has already been rotated"


class KeyChangedMeanwhile(KeyConflict):
    detail = "API key was changed by another request meanwhile; retry"


class MethodNotAllowed(SidecarError):
    status = 405
    detail = "Method Not Allowed"

    def __init__(self, allowed: str) -> None:
        super().__init__(allowed)
        self.allowed = allowed

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"allow", self.allowed.encode())]


class ReportSignatureInvalid(SidecarError):
    status = 401

    def __init__(self, detail: str, *, body_unread: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.body_unread = body_unread

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [CLOSE] if self.body_unread else []


class ReportInvalid(SidecarError):
    status = 422

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class RequestInvalid(SidecarError):
    status = 422

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("request validation failed")
        self.detail = errors


class PayloadTooLarge(SidecarError):
    status = 413

    def __init__(self, limit: int, *, body_unread: bool = False) -> None:
        super().__init__(limit)
        self.detail = f"Request body exceeds the maximum of {limit} bytes"
        self.body_unread = body_unread

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [CLOSE] if self.body_unread else []


class ReportTooSlow(SidecarError):
    status = 408
    detail = "The report body did not arrive in time"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [CLOSE]


class TargetTooLong(SidecarError):
    status = 414
    detail = "Request-target too long"


class HeadersTooLarge(SidecarError):
    status = 431
    detail = "Request header fields too large"


class RateLimited(SidecarError):
    status = 429
    detail = "Rate limit exceeded"

    def __init__(self, retry_after: int, rate_headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after
        self.rate_headers = rate_headers

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(self.retry_after).encode()), *self.rate_headers]


class TooManyFailedAuth(SidecarError):
    status = 429
    detail = "Too many failed authentication attempts"

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after
        # The NotAuthenticated reason this answer stands in for, when the key cache knew
        # it ("canary": still reported to the operator); None: decided before any lookup.
        self.instead_of: str | None = None
        self.canary: Any = None  # the canary key (a VerifiedKey) when it stands in for one

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(self.retry_after).encode())]


class StoreUnavailable(SidecarError):
    status = 503
    detail = "Authentication store unavailable, retry later"

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after  # redis.retry_after_seconds

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(self.retry_after).encode())]


class ScanningKeysUnavailable(SidecarError):
    status = 503
    detail = "The secret-scanning public keys cannot be fetched, retry later"
    retry_after = 60

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(self.retry_after).encode())]


class ReportsBusy(SidecarError):
    status = 503
    detail = "Too many secret-scanning reports being received, retry later"
    retry_after = 5

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(self.retry_after).encode()), CLOSE]


class TooManyWebSockets(SidecarError):
    status = 503
    detail = "Too many open WebSocket connections, retry later"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"1")]


class UnsupportedCoding(SidecarError):
    status = 501
    detail = "Transfer-Encoding not implemented"


class UpstreamUnavailable(SidecarError):
    status = 502
    detail = "Upstream unavailable"


class UpstreamTimeout(SidecarError):
    status = 504
    detail = "Upstream timed out"


class ClientGone(Exception):
    """The client disconnected before the request body was complete."""
