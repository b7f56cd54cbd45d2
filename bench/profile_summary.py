"""Summarise a py-spy ``--format raw --full-filenames`` profile by component.

Each sample is charged to one component: walking from the innermost frame outwards,
the first frame whose file belongs to a component wins. Standard-library helpers
(hmac, re, uuid, asyncio futures, ...) are neutral, so their time goes to the code
that called them; a sample that only ever touches neutral frames (the event loop
waiting or running C callbacks) is "event loop".
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

# (component, path fragments), checked in order for each frame.
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "sidecar: access log (observability/accesslog.py, logs.py, core/timeutil.py)",
        (
            "/sidecar/observability/accesslog.py",
            "/sidecar/observability/logs.py",
            "/sidecar/core/timeutil.py",
        ),
    ),
    ("sidecar: metrics (observability/metrics.py)", ("/sidecar/observability/metrics.py",)),
    (
        "tracing (observability/tracing.py, OpenTelemetry SDK + OTLP exporter)",
        (
            "/sidecar/observability/tracing.py",
            "/opentelemetry/",
            "/google/protobuf/",
            "/requests/",
            "/urllib3/",
        ),
    ),
    (
        "sidecar: rate limiter (ratelimit/, redisconn/autopipeline.py)",
        ("/sidecar/ratelimit/", "/sidecar/redisconn/autopipeline.py"),
    ),
    ("sidecar: upstream hop (proxy/upstream.py)", ("/sidecar/proxy/upstream.py",)),
    ("sidecar: dispatch, gateway, auth, headers", ("/sidecar/",)),
    ("logging (stdlib)", ("/logging/",)),
    ("prometheus_client", ("/prometheus_client/",)),
    ("redis-py (+hiredis)", ("/redis/", "/hiredis/")),
    ("aiohttp client (+yarl, multidict)", ("/aiohttp/", "/yarl/", "/multidict/", "/propcache/")),
    ("uvicorn + httptools", ("/uvicorn/", "/httptools/")),
    ("starlette", ("/starlette/",)),
)
# Entry points that sit at the root of every stack: never charged.
NEUTRAL = (
    "/sidecar/server/run.py",
    "/sidecar/server/serving.py",
    "/sidecar/cli.py",
    "/sidecar/__main__.py",
)
EVENT_LOOP = "event loop (asyncio/uvloop, C callbacks)"
TRACING = next(fragments for name, fragments in COMPONENTS if name.startswith("tracing"))
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Summary:
    total: int
    by_component: list[tuple[str, int]]
    by_sidecar_module: list[tuple[str, int]]
    top_functions: list[tuple[str, int]]


def _parse(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame, ""
    return match.group("func"), match.group("file")


def _component(path: str) -> str | None:
    if any(fragment in path for fragment in NEUTRAL):
        return None
    for name, fragments in COMPONENTS:
        if any(fragment in path for fragment in fragments):
            return name
    return None


def _samples(raw: str) -> Iterator[tuple[list[tuple[str, str]], int]]:
    """Each line of a raw py-spy profile: its frames (function, file), outermost first,
    and how many samples had that stack."""
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            yield [_parse(f) for f in stack.split(";")], int(count_text)


def summarise(raw: str, top: int = 15) -> Summary:
    components: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    total = 0
    for frames, count in _samples(raw):
        total += count
        leaf_func, leaf_file = frames[-1]
        functions[f"{leaf_func} ({_short(leaf_file)})"] += count
        charged = EVENT_LOOP
        for _, path in reversed(frames):
            component = _component(path)
            if component is not None:
                charged = component
                break
        components[charged] += count
        for _, path in reversed(frames):
            if "/sidecar/" in path and not any(f in path for f in NEUTRAL):
                modules[_short(path)] += count
                break
        else:
            modules["(no sidecar frame: server, event loop)"] += count
    return Summary(
        total=total,
        by_component=components.most_common(),
        by_sidecar_module=modules.most_common(),
        top_functions=functions.most_common(top),
    )


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3."):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3." else tail
    if "/sidecar/" in path:
        return "sidecar/" + path.rsplit("/sidecar/", 1)[1]
    return path


def markdown(summary: Summary) -> str:
    def pct(n: int) -> str:
        return f"{100 * n / summary.total:.1f} %" if summary.total else "-"

    out = [
        f"Samples: {summary.total} (CPU samples of the sidecar process; idle time excluded).",
        "",
        "| component | share of CPU samples |",
        "|---|---:|",
        *(f"| {name} | {pct(n)} |" for name, n in summary.by_component),
        "",
        "Where the sidecar's own code is on the stack (innermost sidecar module, any depth):",
        "",
        "| sidecar module | share |",
        "|---|---:|",
        *(f"| {name} | {pct(n)} |" for name, n in summary.by_sidecar_module),
        "",
        f"Top {len(summary.top_functions)} functions by self time (innermost Python frame):",
        "",
        "| function | self |",
        "|---|---:|",
        *(f"| `{name}` | {pct(n)} |" for name, n in summary.top_functions),
    ]
    return "\n".join(out)


def tracing_functions(raw: str, top: int = 12) -> list[tuple[str, int, int]]:
    """(function, samples, total samples): the innermost tracing frame of each sample
    (the sidecar's tracing module, OpenTelemetry, the exporter's HTTP and protobuf),
    so a tracing function is charged what it calls in the standard library too."""
    functions: Counter[str] = Counter()
    total = 0
    for frames, count in _samples(raw):
        total += count
        for func, path in reversed(frames):
            if any(fragment in path for fragment in TRACING):
                functions[f"{func} ({_short(path)})"] += count
                break
    return [(name, n, total) for name, n in functions.most_common(top)]
