"""The wiring: every component built once from the config (``build``), and the ASGI
dispatch of the public listener (``dispatch``): the key endpoints to the keys API,
everything else through the gateway.
"""

__all__ = ["build", "dispatch"]
