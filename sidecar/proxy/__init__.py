"""The request path for everything the sidecar does not own: the authorisation decision,
the forwarding with its header rules, the upstream client and its connections, and the
WebSocket relay.
"""

__all__ = ["connection", "decision", "gateway", "headers", "upstream", "websocket"]
