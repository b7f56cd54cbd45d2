"""Which uvicorn the public listener's protocol was built and tested against.

protocol.py subclasses uvicorn's httptools protocol and relies on its internals
(``RequestResponseCycle``, the parser callbacks, ``STATUS_LINE``), and swaps the
class of a live protocol object for the take-over; a minor release may change any of
them. So the dependency is pinned to the tested minor, and ``serve`` refuses to start
on another one, with this message, rather than fail open on a request.
"""

from __future__ import annotations

TESTED_UVICORN = (0, 54)


def untested_uvicorn(version: str) -> str | None:
    """Why uvicorn ``version`` cannot run the sidecar's protocol, or None when it can."""
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return f"cannot read uvicorn's version {version!r}"
    if (major, minor) != TESTED_UVICORN:
        tested = ".".join(map(str, TESTED_UVICORN))
        return (
            f"uvicorn {version} is installed, but the sidecar's HTTP protocol is built on "
            f"uvicorn {tested}.x internals; install the pinned version "
            f"(pip install -c requirements.lock .) or a release of the sidecar that supports it"
        )
    return None
