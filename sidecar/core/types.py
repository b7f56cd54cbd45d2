"""Value types shared across the layers: header lists and the markers the public
listener's protocol and the app use to talk to each other."""

from __future__ import annotations

from typing import Literal

# A header list as ASGI carries it: raw (name, value) pairs, order and duplicates kept.
Headers = list[tuple[bytes, bytes]]

# In ``scope["extensions"]``: hands the raw connection over to the app (WebSocket relay).
TAKE_OVER = "sidecar.take_over"
# In an ``http.response.start`` message: the next message is the whole body, at once.
BODY_FOLLOWS = "sidecar.body_follows"

# How a caller authenticated, as the identity headers and the access log name it.
AuthMethod = Literal["api_key", "jwt"]
# Which part of the sidecar answered a request, as the access log and metrics name it.
Route = Literal[
    "proxy", "public", "api_keys", "secret_scanning", "console", "refused", "forward_auth"
]

# In the scope of a request the sidecar answers itself: its X-Request-ID (text), for
# the audit events of the changes it makes.
REQUEST_ID = "sidecar.request_id"

# Statuses whose responses never carry a body, whatever their headers say (RFC 9110 §6.4.1).
NO_BODY_STATUSES = frozenset({204, 304})

__all__ = [
    "BODY_FOLLOWS",
    "NO_BODY_STATUSES",
    "REQUEST_ID",
    "TAKE_OVER",
    "AuthMethod",
    "Headers",
    "Route",
]
