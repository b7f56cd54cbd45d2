"""How the sidecar runs: the hardened HTTP/1.1 protocol of the public listener (uvicorn's
httptools protocol with head limits and the take-over hook), the read timeouts every
listener has, the listeners and their sockets, the single-process run with graceful
shutdown, and the supervisor of ``--workers N``. The top of the stack below the CLI: it
builds the app and serves it.
"""

__all__ = ["compat", "protocol", "read_timeouts", "run", "serving", "supervisor"]
