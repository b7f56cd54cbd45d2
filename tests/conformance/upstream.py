"""A scripted raw-socket upstream: answers each request with the bytes its case says.

Requests name their case in the path (``/c/<case>``). Every arrival is recorded (method,
target, headers, body, trailers); the case's replies are used in turn, the last one
repeated. A reply is sent once the request's head (``after="head"``) or whole body
arrived, then the connection is kept, closed, closed lingering (RFC 9112 §9.6), or
reset. ``only_reused`` replies apply
only on a connection that already served a request (a pooled connection the upstream
drops), otherwise the case's ``fresh`` reply is sent.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Literal

import httptools


@dataclass(frozen=True)
class Reply:
    data: bytes = b""
    after: Literal["head", "body"] = "body"
    then: Literal["keep", "close", "linger", "reset"] = "keep"
    # Sent in pieces with a flush between them (a head, then body parts).
    pieces: tuple[bytes, ...] = ()


@dataclass
class Arrival:
    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    complete: bool = False


@dataclass(frozen=True)
class Script:
    replies: tuple[Reply, ...]
    only_reused: bool = False  # replies[0] only on a reused connection; else ``fresh``
    fresh: Reply = Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")


class _Request:
    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.head_done = False
        self.done = False

    def on_message_begin(self) -> None:
        self.__init__()  # type: ignore[misc]

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        (self.trailers if self.head_done else self.headers).append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


class ScriptedUpstream:
    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.arrivals: dict[str, list[Arrival]] = {}
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self._open.add(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        served = 0
        request = _Request()
        parser = httptools.HttpRequestParser(request)
        answered_head = recorded = False
        with contextlib.suppress(OSError), sock:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                try:
                    parser.feed_data(data)
                except httptools.HttpParserUpgrade:
                    pass
                except httptools.HttpParserError:
                    return
                if not request.head_done:
                    continue
                case = request.url.split(b"?")[0].rstrip(b"/").rsplit(b"/", 1)[-1].decode()
                script = self.scripts.get(case)
                if script is None:
                    sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    return
                with self._lock:
                    arrivals = self.arrivals.setdefault(case, [])
                    if not recorded:
                        recorded = True
                        arrivals.append(
                            Arrival(parser.get_method().decode(), request.url, request.headers)
                        )
                    arrival = arrivals[-1]
                    arrival.body, arrival.trailers = bytes(request.body), request.trailers
                    arrival.complete = request.done
                    index = len(arrivals) - 1
                reply = script.replies[min(index, len(script.replies) - 1)]
                if script.only_reused and not served and index == 0:
                    reply = script.fresh
                if reply.after == "body" and not request.done:
                    continue
                if answered_head and not request.done:
                    continue
                if not answered_head:
                    for piece in reply.pieces or (reply.data,):
                        sock.sendall(piece)
                    if reply.then != "keep":
                        if reply.then == "reset":
                            sock.setsockopt(
                                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                            )
                        elif reply.then == "linger":
                            _lingering_close(sock)
                        return
                if not request.done:
                    answered_head = True
                    continue
                answered_head = recorded = False
                served += 1

    def close(self) -> None:
        self._listener.close()
        for sock in list(self._open):
            with contextlib.suppress(OSError):
                sock.close()


def _lingering_close(sock: socket.socket) -> None:
    """Close as RFC 9112 §9.6 asks of a server that answered before reading the whole
    request: stop writing, then read and discard what the client still sends, so the
    kernel does not reset the connection (and discard the answer) over unread bytes."""
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(5)
    with contextlib.suppress(OSError):
        while sock.recv(65536):
            pass
