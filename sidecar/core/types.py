"""Value types shared across the layers: header lists and the markers the public
listener's protocol and the app use to talk to each other."""

from __future__ import annotations

# A header list as ASGI carries it: raw (name, value) pairs, order and duplicates kept.
Headers = list[tuple[bytes, bytes]]

# In ``scope["extensions"]``: hands the raw connection over to the app (WebSocket relay).
TAKE_OVER = "sidecar.take_over"
# In an ``http.response.start`` message: the next message is the whole body, at once.
BODY_FOLLOWS = "sidecar.body_follows"

# Statuses whose responses never carry a body, whatever their headers say (RFC 9110 §6.4.1).
NO_BODY_STATUSES = frozenset({204, 304})

__all__ = ["BODY_FOLLOWS", "NO_BODY_STATUSES", "TAKE_OVER", "Headers"]
