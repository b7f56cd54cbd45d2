"""The request path for everything the sidecar does not own: the request-target as every
listener reads it, the authorisation decision, the forwarding with its header rules, the
upstream client and its connections, and the WebSocket relay (its sockets, each socket's
byte relay, the frames it reads).
"""

__all__ = [
    "connection",
    "decision",
    "gateway",
    "headers",
    "target",
    "upstream",
    "websocket",
    "websocket_frames",
    "websocket_tunnel",
]
