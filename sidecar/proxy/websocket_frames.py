"""The little of the WebSocket framing (RFC 6455 §5) the relay needs: its close codes, the
close frames it sends itself, and where frame boundaries fall in a relayed byte stream.
Messages are never parsed: payloads are skipped by their length.
"""

from __future__ import annotations

import os

POLICY_VIOLATION = 1008  # the credential that opened the socket is no longer valid
GOING_AWAY = 1001  # the sidecar shuts down


def server_close(code: int) -> bytes:
    """A close frame as a server sends it (unmasked): FIN + close opcode, the code."""
    return b"\x88\x02" + code.to_bytes(2, "big")


def client_close(code: int) -> bytes:
    """A close frame as a client sends it (masked), for the upstream."""
    mask = os.urandom(4)
    payload = code.to_bytes(2, "big")
    return b"\x88\x82" + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Frames:
    """Where frame boundaries fall in a byte stream of WebSocket frames."""

    __slots__ = ("_head", "_need")

    def __init__(self) -> None:
        self._need = 0  # payload bytes still to come in the current frame
        self._head = bytearray()  # a frame header received in part

    @property
    def at_boundary(self) -> bool:
        return not self._need and not self._head

    def consume(self, data: bytes, stop_at_boundary: bool = False) -> int:
        """Advance over ``data``; with ``stop_at_boundary``, stop at the first frame
        boundary. The number of bytes advanced over."""
        i, n = 0, len(data)
        while i < n:
            if stop_at_boundary and self.at_boundary:
                return i
            if self._need:
                take = min(self._need, n - i)
                self._need -= take
                i += take
                continue
            head = self._head
            head.append(data[i])
            i += 1
            if len(head) < 2:
                continue
            short = head[1] & 0x7F
            extended = 2 if short == 126 else 8 if short == 127 else 0
            size = 2 + extended + (4 if head[1] & 0x80 else 0)
            if len(head) == size:
                self._need = int.from_bytes(head[2 : 2 + extended]) if extended else short
                head.clear()
        return i
