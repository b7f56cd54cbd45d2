"""A raw-socket client: sends a case's bytes as written, reads the answer with h11."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

import h11

# Headers that differ by design between proxies (or carry no end-to-end meaning).
IGNORED = frozenset(
    {b"date", b"server", b"connection", b"keep-alive", b"x-request-id", b"transfer-encoding"}
)


@dataclass
class Response:
    interim: list[int] = field(default_factory=list)
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    framing: str = ""  # "length", "chunked", "close" (HEAD/204/304: "length" or "")
    complete: bool = False

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]

    def view(self) -> tuple[object, ...]:
        """What is compared between the sidecar and nginx."""
        return (self.interim, self.status, self.headers, self.body, self.trailers, self.complete)


def exchange(
    port: int, parts: tuple[bytes, ...], methods: tuple[str, ...], timeout: float = 8.0
) -> list[Response]:
    """Send ``parts`` (waiting for an answer between them, as a client that expects 100
    Continue), read one response per method in ``methods``."""
    conn = h11.Connection(h11.CLIENT)
    _ask(conn, methods[0])  # h11 needs to know what was asked (HEAD)
    responses: list[Response] = []
    current = Response()
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for index, part in enumerate(parts):
            sock.sendall(part)
            if index < len(parts) - 1:
                sock.settimeout(1.0)
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    data = b""
                sock.settimeout(timeout)
                if data:
                    conn.receive_data(data)
        while len(responses) < len(methods) and time.monotonic() < deadline:
            event = _next_event(conn, sock)
            if event is None:
                break
            if isinstance(event, h11.InformationalResponse):
                current.interim.append(event.status_code)
            elif isinstance(event, h11.Response):
                current.status = event.status_code
                current.headers = [(n, v) for n, v in event.headers if n not in IGNORED]
                names = {n for n, _ in event.headers}
                current.framing = (
                    "chunked"
                    if b"transfer-encoding" in names
                    else "length"
                    if b"content-length" in names
                    else "close"
                )
            elif isinstance(event, h11.Data):
                current.body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                current.trailers = list(event.headers)
                current.complete = True
                responses.append(current)
                current = Response()
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    if len(responses) == len(methods):
                        break
                    try:
                        conn.start_next_cycle()
                    except h11.LocalProtocolError:
                        break
                    _ask(conn, methods[len(responses)])
                else:
                    break
            elif isinstance(event, h11.ConnectionClosed):
                break
    if current.status is not None or current.interim:
        responses.append(current)
    return responses


def _ask(conn: h11.Connection, method: str) -> None:
    conn.send(h11.Request(method=method, target="/", headers=[("host", "t")]))
    conn.send(h11.EndOfMessage())


def _next_event(conn: h11.Connection, sock: socket.socket) -> h11.Event | None:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return None
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            data = b""
        conn.receive_data(data)
        if not data and conn.their_state is not h11.SEND_BODY:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return None
            return None if event is h11.NEED_DATA else event  # type: ignore[return-value]
