"""The corpus: each case is the client's bytes, the upstream's script, and what the
client and the upstream are expected to see. ``{p}`` in a request is the case's path
(``/c/<name>``, a public path; ``/p/<name>`` when ``protected``)."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.conformance.client import Response
from tests.conformance.upstream import Arrival, Reply, Script

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
GZ = gzip.compress(b"compressed body " * 20, mtime=0)
BIG = bytes(range(256)) * 800  # 200 KiB, over the "read whole" size


def get(extra: bytes = b"", method: bytes = b"GET", version: bytes = b"1.1") -> bytes:
    return b"%b {p} HTTP/%b\r\nHost: t\r\n%b\r\n" % (method, version, extra)


def post(body: bytes, method: bytes = b"POST", extra: bytes = b"") -> bytes:
    return b"%b {p} HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%b\r\n%b" % (
        method,
        len(body),
        extra,
        body,
    )


def chunked_post(body: bytes, trailer: bytes = b"", te: bytes = b"chunked") -> bytes:
    return (
        b"POST {p} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: %b\r\n\r\n%x\r\n%b\r\n0\r\n%b\r\n"
        % (te, len(body), body, trailer)
    )


ClientCheck = Callable[[list[Response]], None]
UpstreamCheck = Callable[[list[Arrival]], None]


@dataclass(frozen=True)
class Case:
    name: str
    request: tuple[bytes, ...]
    script: Script
    client: ClientCheck
    upstream: UpstreamCheck
    methods: tuple[str, ...] = ("GET",)
    protected: bool = False
    sequential: bool = False  # needs a warm pooled connection: run alone
    why: str = ""  # the table row or topic it covers
    nginx: bool = True  # compared with nginx (False: the case tests the sidecar's auth)
    extra: dict[str, object] = field(default_factory=dict)


def status(code: int | None, body: bytes | None = None, **want: object) -> ClientCheck:
    """The single response has ``code`` (and ``body``); ``has``: headers present as
    (name, [values]); ``lacks``: names absent; ``framing``; ``interim``; ``complete``."""

    def check(responses: list[Response]) -> None:
        assert responses, "no response at all"
        response = responses[0]
        assert response.status == code, (response.status, response.body[:200])
        if body is not None:
            assert response.body == body, response.body[:200]
        for name, values in want.get("has", ()):  # type: ignore[attr-defined]
            assert response.header(name) == values, (name, response.headers)
        for name in want.get("lacks", ()):  # type: ignore[attr-defined]
            assert not response.header(name), (name, response.headers)
        if "framing" in want:
            assert response.framing == want["framing"], response.framing
        if "interim" in want:
            assert response.interim == want["interim"], response.interim
        if "complete" in want:
            assert response.complete == want["complete"]

    return check


def statuses(*codes: int) -> ClientCheck:
    def check(responses: list[Response]) -> None:
        assert [r.status for r in responses] == list(codes), [r.status for r in responses]

    return check


def seen(count: int, body: bytes | None = None, **want: object) -> UpstreamCheck:
    """The upstream saw ``count`` requests; the first with ``body``; ``lacks``: header
    names it did not get; ``target``: the request-target it got."""

    def check(arrivals: list[Arrival]) -> None:
        assert len(arrivals) == count, [a.method for a in arrivals]
        if not arrivals:
            return
        first = arrivals[0]
        if body is not None:
            assert first.body == body, first.body[:200]
        names = {n.lower() for n, _ in first.headers}
        for name in want.get("lacks", ()):  # type: ignore[attr-defined]
            assert name not in names, (name, first.headers)
        if "target" in want:
            assert first.target == want["target"], first.target

    return check


def case(
    name: str,
    request: bytes | tuple[bytes, ...],
    replies: Reply | tuple[Reply, ...],
    client: ClientCheck,
    upstream: UpstreamCheck,
    **options: object,
) -> Case:
    parts = request if isinstance(request, tuple) else (request,)
    # Neither proxy resends a POST or PATCH, so in the concurrent phase one could take a
    # pooled connection another case's upstream is closing at that moment, and get a 502
    # without reaching the upstream by chance. Alone after the warm-up, it goes on a
    # live connection.
    if any(_NOT_RESENT.search(part) for part in parts):
        options["sequential"] = True
    script = options.pop("script", None) or Script(
        replies if isinstance(replies, tuple) else (replies,)
    )
    return Case(name, parts, script, client, upstream, **options)  # type: ignore[arg-type]


_NOT_RESENT = re.compile(rb"(?:^|\r\n)(?:POST|PATCH) ")


def r(data: bytes, **options: object) -> Reply:
    return Reply(data, **options)  # type: ignore[arg-type]


TRAILER_KEY = b"X-API-Key: {key}\r\n"  # a valid key, created by the test

CASES: list[Case] = [
    # --- basics
    case("get", get(), r(OK), status(200, b"ok"), seen(1, b"")),
    case("post", post(b"hello"), r(OK), status(200, b"ok"), seen(1, b"hello")),
    case("post-big", post(BIG), r(OK), status(200, b"ok"), seen(1, BIG)),
    case("chunked-post", chunked_post(b"hello"), r(OK), status(200), seen(1, b"hello")),
    case("get-with-body", post(b"abc", b"GET"), r(OK), status(200), seen(1, b"abc")),
    case(
        "query",
        b"GET {p}?a=1&b=%20x&c HTTP/1.1\r\nHost: t\r\n\r\n",
        r(OK),
        status(200),
        seen(1, target=b"/c/query?a=1&b=%20x&c"),
    ),
    case(
        "status-404-body",
        get(),
        r(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope"),
        status(404, b"nope"),
        seen(1),
    ),
    case(
        "no-reason", get(), r(b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok"), status(200), seen(1)
    ),
    case(
        "latin1-header",
        get(),
        r(b"HTTP/1.1 200 OK\r\nX-Raw: caf\xe9\r\nContent-Length: 0\r\n\r\n"),
        status(200, b"", has=[(b"x-raw", [b"caf\xe9"])]),
        seen(1),
    ),
    case("empty-chunked", get(), r(CHUNKED + b"0\r\n\r\n"), status(200, b""), seen(1)),
    # --- row 3: bytes after the response never touch its head
    case(
        "cl-longer",
        get(),
        r(b"HTTP/1.1 200 OK\r\nX-Real: 1\r\nContent-Length: 2\r\n\r\nokEXTRA"),
        status(200, b"ok", has=[(b"x-real", [b"1"])]),
        seen(1),
        why="row 3",
    ),
    case(
        "cl-longer-head-lookalike",
        get(),
        r(
            b"HTTP/1.1 200 OK\r\nX-Real: 1\r\nContent-Length: 2\r\n\r\n"
            b"okHTTP/1.1 200 OK\r\nX-Evil: 1\r\nContent-Length: 0\r\n\r\n"
        ),
        status(200, b"ok", has=[(b"x-real", [b"1"])], lacks=[b"x-evil"]),
        seen(1),
        why="row 3",
    ),
    case(
        "204-with-body",
        get(),
        r(b"HTTP/1.1 204 No Content\r\nX-Real: 1\r\n\r\nHTTP/1.1 200 OK\r\nX-Evil: 1\r\n\r\n"),
        status(204, b"", has=[(b"x-real", [b"1"])], lacks=[b"x-evil"]),
        seen(1),
        why="row 3",
    ),
    case(
        "304-with-body",
        get(),
        r(b'HTTP/1.1 304 Not Modified\r\nETag: "e"\r\n\r\nsurplus body'),
        status(304, b"", has=[(b"etag", [b'"e"'])]),
        seen(1),
        why="row 3",
    ),
    # --- row 4 and 12: trailers
    case(
        "trailers-one-read",
        get(),
        r(CHUNKED + b"2\r\nok\r\n0\r\nSet-Cookie: t=1\r\nX-T: 1\r\n\r\n"),
        status(200, b"ok", lacks=[b"set-cookie", b"x-t"]),
        seen(1),
        why="row 4",
    ),
    case(
        "trailers-split",
        get(),
        r(b"", pieces=(CHUNKED + b"2\r\nok\r\n", b"0\r\nX-T: 1\r\n\r\n")),
        status(200, b"ok", lacks=[b"x-t"]),
        seen(1),
        why="row 4",
    ),
    case(
        "trailer-content-length",
        get(),
        r(CHUNKED + b"b\r\nhello world\r\n0\r\nContent-Length: 1\r\n\r\n"),
        status(200, b"hello world", lacks=[b"content-length"]),
        seen(1),
        why="row 12",
    ),
    # --- row 5: 204/304 with Content-Length
    case(
        "304-with-cl",
        get(),
        r(b'HTTP/1.1 304 Not Modified\r\nETag: "e"\r\nContent-Length: 100\r\n\r\n'),
        status(304, b"", complete=True),
        seen(1),
        why="row 5",
    ),
    case(
        "204-with-cl",
        get(),
        r(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"),
        status(204, b"", complete=True),
        seen(1),
        why="row 5",
    ),
    case(
        "204-then-next",
        get() + get(),
        (r(b"HTTP/1.1 204 No Content\r\n\r\n"), r(OK)),
        statuses(204, 200),
        seen(2),
        methods=("GET", "GET"),
    ),
    # --- row 7: Transfer-Encoding other than chunked
    case(
        "te-gzip-alone",
        get(),
        r(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + GZ, then="close"),
        status(200, GZ),
        seen(1),
        why="row 7",
    ),
    # --- row 8: request codings other than chunked
    case(
        "request-te-gzip-chunked",
        chunked_post(b"hello", te=b"gzip, chunked"),
        r(OK),
        status(501),
        seen(0),
        why="row 8",
    ),
    case(
        "request-te-identity",
        b"POST {p} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n"
        b"Content-Length: 2\r\n\r\nab",
        r(OK),
        status(400),
        seen(0),
    ),
    # --- row 9: HTTP/1.0 clients
    case(
        "http10-unknown-length",
        get(version=b"1.0"),
        r(CHUNKED + b"5\r\nhello\r\n0\r\n\r\n"),
        status(200, b"hello", framing="close"),
        seen(1),
        why="row 9",
    ),
    case(
        "http10-length",
        get(version=b"1.0"),
        r(OK),
        status(200, b"ok", framing="length"),
        seen(1),
    ),
    # --- row 10: request trailers
    case(
        "request-trailers",
        chunked_post(b"hello", b"X-Trailer: 1\r\n"),
        r(OK),
        status(200),
        seen(1, b"hello", lacks=[b"x-trailer"]),
        why="row 10",
    ),
    case(
        "request-trailer-api-key",
        chunked_post(b"hello", TRAILER_KEY),
        r(OK),
        status(401),
        seen(0),
        protected=True,
        nginx=False,
        why="row 10",
    ),
    # --- row 11: invalid status codes
    case(
        "status-600",
        get(),
        r(b"HTTP/1.1 600 X\r\nContent-Length: 0\r\n\r\n"),
        status(502),
        seen(1),
        why="row 11",
    ),
    case(
        "status-999",
        get(),
        r(b"HTTP/1.1 999 X\r\nContent-Length: 0\r\n\r\n"),
        status(502),
        seen(1),
        why="row 11",
    ),
    case("status-101-unasked", get(), r(b"HTTP/1.1 101 Switching\r\n\r\n"), status(502), seen(1)),
    # --- 1xx
    case(
        "100-then-200",
        get(),
        r(b"HTTP/1.1 100 Continue\r\n\r\n" + OK),
        status(200, b"ok", interim=[]),
        seen(1),
    ),
    case(
        "103-early-hints",
        get(),
        r(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + OK),
        status(200, b"ok", interim=[]),
        seen(1),
    ),
    case(
        "1xx-several",
        get(),
        r(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n" + OK),
        status(200, b"ok"),
        seen(1),
    ),
    # --- HEAD
    case(
        "head-cl",
        get(method=b"HEAD"),
        r(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"),
        status(200, b"", has=[(b"content-length", [b"100"])]),
        seen(1),
        methods=("HEAD",),
    ),
    case(
        "head-chunked",
        get(method=b"HEAD"),
        r(CHUNKED),
        status(200, b""),
        seen(1),
        methods=("HEAD",),
    ),
    case(
        "head-then-get",
        get(method=b"HEAD") + get(),
        (r(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"), r(OK)),
        statuses(200, 200),
        seen(2),
        methods=("HEAD", "GET"),
    ),
    # --- framing
    case(
        "chunk-extensions",
        get(),
        r(CHUNKED + b'2;ext=1;q="a"\r\nok\r\n0;last\r\n\r\n'),
        status(200, b"ok"),
        seen(1),
    ),
    case(
        "close-delimited",
        get(),
        r(b"HTTP/1.1 200 OK\r\n\r\nall of it", then="close"),
        status(200, b"all of it"),
        seen(1),
    ),
    case(
        "close-delimited-big",
        get(),
        r(b"HTTP/1.1 200 OK\r\n\r\n" + BIG, then="close"),
        status(200, BIG),
        seen(1),
    ),
    case(
        "http10-response",
        get(),
        r(b"HTTP/1.0 200 OK\r\n\r\nold server", then="close"),
        status(200, b"old server"),
        seen(1),
    ),
    case(
        "cl-shorter-small",
        get(),
        r(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", then="close"),
        status(502),
        seen(1),
        why="Content-Length mismatch",
    ),
    case(
        "cl-shorter-big",
        get(),
        r(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + BIG, then="close"),
        status(200, complete=False),
        seen(1),
    ),
    case(
        "cl-and-te",
        get(),
        r(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\n\r\n"
        ),
        status(502),
        seen(1),
    ),
    case(
        "cl-conflicting",
        get(),
        r(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"),
        status(502),
        seen(1),
    ),
    # --- headers
    case(
        "duplicate-headers",
        get(b"X-Dup: a\r\nX-Dup: b\r\n"),
        r(b"HTTP/1.1 200 OK\r\nX-Dup: 1\r\nX-Dup: 2\r\nContent-Length: 0\r\n\r\n"),
        status(200, has=[(b"x-dup", [b"1", b"2"])]),
        seen(1),
    ),
    case(
        "set-cookies",
        get(),
        r(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/\r\nSet-Cookie: b=2, c=3\r\n"
            b"Set-Cookie: d=4; Expires=Wed, 21 Oct 2026 07:28:00 GMT\r\nContent-Length: 0\r\n\r\n"
        ),
        status(
            200,
            has=[
                (
                    b"set-cookie",
                    [b"a=1; Path=/", b"b=2, c=3", b"d=4; Expires=Wed, 21 Oct 2026 07:28:00 GMT"],
                )
            ],
        ),
        seen(1),
    ),
    case(
        "obs-fold-response",
        get(),
        r(b"HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: 0\r\n\r\n"),
        status(502),
        seen(1),
    ),
    case("obs-fold-request", get(b"X-Fold: a\r\n b\r\n"), r(OK), status(400), seen(0)),
    # Host (issue 24): HTTP/1.1 needs exactly one; HTTP/1.0 may go without.
    case("host-missing", b"GET {p} HTTP/1.1\r\n\r\n", r(OK), status(400), seen(0)),
    case("host-duplicate", get(b"Host: u\r\n"), r(OK), status(400), seen(0)),
    case("host-duplicate-http10", get(b"Host: u\r\n", version=b"1.0"), r(OK), status(400), seen(0)),
    case("host-missing-http10", b"GET {p} HTTP/1.0\r\n\r\n", r(OK), status(200, b"ok"), seen(1)),
    case(
        "long-response-header",
        get(),
        r(b"HTTP/1.1 200 OK\r\nX-Long: " + b"v" * 16000 + b"\r\nContent-Length: 0\r\n\r\n"),
        status(200, b""),
        seen(1),
    ),
    case(
        "long-request-header", get(b"X-Long: " + b"v" * 7000 + b"\r\n"), r(OK), status(200), seen(1)
    ),
    case(
        "request-header-line-over-limit",
        get(b"X-Long: " + b"v" * 9000 + b"\r\n"),
        r(OK),
        status(431),
        seen(0),
    ),
    case(
        "request-headers-over-limit",
        get(b"".join(b"X-L%d: %b\r\n" % (i, b"v" * 7000) for i in range(5))),
        r(OK),
        status(431),
        seen(0),
    ),
    case(
        "request-too-many-headers",
        get(b"".join(b"X-N%d: 1\r\n" % i for i in range(150))),
        r(OK),
        status(431),
        seen(0),
    ),
    case(
        "request-target-over-limit",
        b"GET {p}?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
        r(OK),
        status(414),
        seen(0),
    ),
    case(
        "content-encoding",
        get(b"Accept-Encoding: gzip\r\n"),
        r(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b"
            % (len(GZ), GZ)
        ),
        status(200, GZ, has=[(b"content-encoding", [b"gzip"])]),
        seen(1),
    ),
    case(
        "sse",
        get(b"Accept: text/event-stream\r\n"),
        r(
            b"",
            pieces=(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n",
                b"9\r\ndata: 1\n\n\r\n",
                b"9\r\ndata: 2\n\n\r\n0\r\n\r\n",
            ),
        ),
        status(200, b"data: 1\n\ndata: 2\n\n", has=[(b"content-type", [b"text/event-stream"])]),
        seen(1),
    ),
    # --- pipelining, Expect, HTTP/1.0
    case(
        "pipelined-gets",
        get() + get(),
        (
            r(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1"),
            r(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"),
        ),
        statuses(200, 200),
        seen(2),
        methods=("GET", "GET"),
    ),
    case(
        "pipelined-post-get",
        post(b"abc") + get(),
        r(OK),
        statuses(200, 200),
        seen(2, b"abc"),
        methods=("POST", "GET"),
    ),
    case(
        "expect-100-continue",
        (
            b"POST {p} HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            b"hello",
        ),
        r(OK),
        status(200, b"ok", interim=[100]),
        seen(1, b"hello"),
        methods=("POST",),
    ),
    case(
        "early-answer",
        post(BIG),
        r(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig",
            after="head",
            then="linger",  # a close with unread bytes is a reset: the answer may be lost
        ),
        status(413, b"big"),
        seen(1),
        methods=("POST",),
    ),
    # --- upstream resets at every stage (a POST: sequential, see case())
    *(
        case(name, post(b"x"), r(reply, then=how), status(502), seen(1))
        for name, reply, how in (
            ("close-before-head", b"", "close"),
            ("reset-before-head", b"", "reset"),
            ("reset-mid-head", b"HTTP/1.1 200 OK\r\nX-Par", "reset"),
        )
    ),
    case(
        "reset-mid-small-body",
        get(),
        r(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", then="reset"),
        status(502),
        seen(1),
    ),
    case(
        "reset-mid-big-body",
        get(),
        r(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + BIG, then="reset"),
        status(200, complete=False),
        seen(1),
    ),
    case(
        "close-mid-chunked",
        get(),
        r(b"", pieces=(CHUNKED, b"2\r\nok\r\n"), then="close"),
        status(200, complete=False),
        seen(1),
    ),
    # Sequential: the pooled connection it leaves behind dies a moment later, and a
    # concurrent POST taking it would (rightly) get 502 without reaching the upstream.
    case(
        "reset-after-response",
        get(),
        r(OK, then="reset"),
        status(200, b"ok"),
        seen(1),
        sequential=True,
    ),
    case(
        "reset-while-body-sent",
        post(BIG * 4),
        r(b"", after="head", then="reset"),
        status(502),
        seen(1),
        methods=("POST",),
        sequential=True,
    ),
]

# Row 2: a pooled connection the upstream drops after reading the request.
_DROP = Script(
    (Reply(b"", then="close"), Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nretry")),
    only_reused=True,
)
CASES += [
    case(
        "replay-get",
        get(),
        (),
        status(200, b"retry"),
        seen(2),
        script=_DROP,
        sequential=True,
        why="row 2",
    ),
    case(
        "replay-post-bodiless",
        post(b""),
        (),
        status(502),
        seen(1),
        script=_DROP,
        sequential=True,
        methods=("POST",),
        why="row 2",
    ),
    case(
        "replay-patch-bodiless",
        post(b"", b"PATCH"),
        (),
        status(502),
        seen(1),
        script=_DROP,
        sequential=True,
        methods=("PATCH",),
        why="row 2",
    ),
    case(
        "replay-put",
        post(b"x", b"PUT"),
        (),
        status(502),
        seen(1),
        script=_DROP,
        sequential=True,
        methods=("PUT",),
    ),
    case(
        "replay-post-idempotency-key",
        post(b"", extra=b"Idempotency-Key: k1\r\n"),
        (),
        status(200, b"retry"),
        seen(2),
        script=_DROP,
        sequential=True,
        methods=("POST",),
    ),
]

# Where the sidecar differs from nginx 1.22 on purpose. Also in docs/proxying.md.
DELIBERATE = {
    "103-early-hints": "nginx 1.22 relays a 103 as the final response; we drop interim responses",
    "100-then-200": "nginx 1.22 relays an unasked 100 as the final response; we drop it",
    "1xx-several": "nginx 1.22 relays the first 1xx as the final response; we drop them",
    "cl-shorter-small": (
        "we read small responses whole before answering, so one cut short becomes a clean "
        "502; nginx has sent the head and cuts the body off"
    ),
    "long-response-header": (
        "nginx refuses a response head over proxy_buffer_size (4/8 KiB) with 502; we relay it"
    ),
    "request-header-line-over-limit": "nginx answers 400; we answer 431 (RFC 6585)",
    "request-headers-over-limit": "nginx answers 400; we answer 431 (RFC 6585)",
    "request-too-many-headers": (
        "nginx limits the head's bytes only; we also cap the number of fields (431)"
    ),
    "replay-put": (
        "nginx resends PUT and DELETE on a fresh connection (it only protects POST, LOCK and "
        "PATCH); we follow Go's rule: safe methods or an Idempotency-Key only"
    ),
    "replay-post-idempotency-key": (
        "nginx never resends a POST; we do when it carries Idempotency-Key and no body "
        "was consumed (Go's rule)"
    ),
    "status-101-unasked": "nginx relays an unasked 101; we answer 502",
    "status-600": "nginx 1.22 relays a status over 599; we answer 502 (RFC 9110 §15: 100-599)",
    "status-999": "nginx 1.22 relays a status over 599; we answer 502 (RFC 9110 §15: 100-599)",
    "cl-and-te": (
        "a response with both Content-Length and Transfer-Encoding gets 502 (a smuggling "
        "vector, RFC 9112 §6.1); nginx 1.22 relays it as chunked"
    ),
    "cl-conflicting": (
        "conflicting Content-Length values get 502 (RFC 9112 §6.3: unrecoverable); nginx "
        "1.22 relays the head and the client gets a cut body"
    ),
    "reset-mid-small-body": (
        "small responses are read whole before answering, so one cut off becomes a clean "
        "502; nginx has sent the head and cuts the body off"
    ),
    "request-te-identity": (
        "a request the parser cannot frame (Transfer-Encoding other than chunked together "
        "with Content-Length) gets 400 from the parser; nginx answers 501"
    ),
}
