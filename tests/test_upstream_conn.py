"""The upstream connection's pure parts: the request head, chunk framing, and how the
protocol reads responses (fed bytes directly, no socket)."""

from __future__ import annotations

import asyncio

import httptools
import pytest

from sidecar.proxy.connection import LAST_CHUNK, UpstreamConnection, chunk, request_head


def test_the_head_keeps_the_callers_order_and_content_length_in_place() -> None:
    head = request_head(
        "POST",
        b"/a%20b?x=1",
        b"up:8080",
        [(b"Content-Type", b"text/plain"), (b"Content-Length", b"5"), (b"X-A", b"1")],
        5,
        False,
    )
    assert head == (
        b"POST /a%20b?x=1 HTTP/1.1\r\nhost: up:8080\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 5\r\nX-A: 1\r\n\r\n"
    )


def test_a_chunked_body_drops_the_callers_framing_and_says_chunked() -> None:
    head = request_head(
        "PUT",
        b"/",
        b"h",
        [(b"content-length", b"9"), (b"Transfer-Encoding", b"gzip"), (b"x", b"y")],
        9,
        True,
    )
    assert head == b"PUT / HTTP/1.1\r\nhost: h\r\nx: y\r\ntransfer-encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("method", "length", "framing"),
    [
        ("GET", None, b""),
        ("POST", None, b"content-length: 0\r\n"),
        ("DELETE", 3, b"content-length: 3\r\n"),
    ],
)
def test_framing_is_added_when_the_caller_gave_none(
    method: str, length: int | None, framing: bytes
) -> None:
    head = request_head(method, b"/", b"h", [(b"a", b"b")], length, False)
    assert head == method.encode() + b" / HTTP/1.1\r\nhost: h\r\na: b\r\n" + framing + b"\r\n"


@pytest.mark.parametrize("value", [b"x\r\nEvil: 1", b"x\nEvil: 1", b"x\rEvil", b"x\0"])
def test_a_header_value_smuggling_a_line_break_is_refused(value: bytes) -> None:
    with pytest.raises(ValueError, match="line break"):
        request_head("GET", b"/", b"h", [(b"x-user-id", value)], None, False)


def test_chunk_framing() -> None:
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"z" * 26) == b"1a\r\n" + b"z" * 26 + b"\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"


def read(
    responses: list[bytes], *, head_only: bool = False, eof: bool = False
) -> UpstreamConnection:
    """A connection that was fed ``responses`` (and then EOF), its body read whole."""

    async def run() -> UpstreamConnection:
        conn = UpstreamConnection(asyncio.get_running_loop())
        conn.begin(head_only=head_only)
        for data in responses:
            conn.data_received(data)
        if eof:
            conn.connection_lost(None)
        await conn.response_head(1)
        conn.body = await conn.read_all(1)  # type: ignore[attr-defined]
        return conn

    return asyncio.run(run())


def test_interim_responses_are_skipped_and_headers_stay_bytes() -> None:
    conn = read(
        [
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nX-Raw: caf\xe9\r\n\r\nab",
            b"c",
        ]
    )
    assert conn.status == 201
    assert conn.headers == [(b"Content-Length", b"3"), (b"X-Raw", b"caf\xe9")]
    assert conn.body == b"abc"  # type: ignore[attr-defined]
    assert conn.complete and conn.keep_alive


def test_a_chunked_response_is_decoded() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    conn = read([head + b"3\r\nabc\r\n", b"0\r\n\r\n"])
    assert conn.body == b"abc" and conn.complete and conn.keep_alive  # type: ignore[attr-defined]


def test_a_response_without_length_ends_with_the_connection_and_is_not_reused() -> None:
    conn = read([b"HTTP/1.1 200 OK\r\n\r\nall of ", b"it"], eof=True)
    assert conn.body == b"all of it"  # type: ignore[attr-defined]
    assert conn.complete and not conn.keep_alive


def test_a_response_to_head_has_no_body_whatever_its_length() -> None:
    conn = read([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"], head_only=True)
    assert conn.body == b"" and conn.complete and conn.keep_alive  # type: ignore[attr-defined]


def test_a_connection_lost_mid_body_is_an_error() -> None:
    with pytest.raises(ConnectionResetError):
        read([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], eof=True)


def test_connection_close_is_honoured() -> None:
    conn = read([b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"])
    assert conn.complete and not conn.keep_alive


def test_trailers_and_bytes_after_the_response_never_touch_the_head() -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Real: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    conn = read([head + b"2\r\nok\r\n0\r\nSet-Cookie: t=1\r\nContent-Length: 1\r\n\r\n"])
    assert conn.headers == [(b"X-Real", b"1"), (b"Transfer-Encoding", b"chunked")]
    assert conn.body == b"ok" and conn.complete  # type: ignore[attr-defined]
    conn = read(
        [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nX-Evil: 1\r\n\r\n"]
    )
    assert conn.headers == [(b"Content-Length", b"2")]
    assert conn.body == b"ok" and not conn.keep_alive  # type: ignore[attr-defined]


def test_a_transfer_coding_without_final_chunked_runs_until_close() -> None:
    conn = read([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc", b"def"], eof=True)
    assert conn.body == b"abcdef" and conn.complete  # type: ignore[attr-defined]


@pytest.mark.parametrize("status", [b"600", b"999"])
def test_a_status_over_599_is_an_invalid_response(status: bytes) -> None:
    with pytest.raises(httptools.HttpParserError):
        read([b"HTTP/1.1 " + status + b" X\r\nContent-Length: 0\r\n\r\n"])
