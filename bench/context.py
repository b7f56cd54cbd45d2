"""One bench run's shared state: its options, the servers it started, its load
generator, the bench key, and what it found so far (which the report renders)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import new_work_dir
from bench.load import Load, Scenario
from bench.options import Options
from bench.otlp_sink import OtlpSink
from bench.services import Services, Sidecar


@dataclass
class Results:
    """What the run measured and noticed, part by part."""

    scenarios: list[Scenario] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    revocation: dict[str, Any] = field(default_factory=dict)
    cached_revocation: dict[str, Any] = field(default_factory=dict)
    websocket: dict[str, Any] = field(default_factory=dict)
    profile: str = ""
    profile_files: list[Path] = field(default_factory=list)
    instructions: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # part -> why


class Run:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.services = Services(new_work_dir(), options.source)
        self.load = Load(shutil.which("wrk"), options.threads)
        self.results = Results()
        self.sidecars: dict[str, Sidecar] = {}  # the throughput scenarios', by name
        self.api_key = ""
        self.api_key_id = ""
        self.otlp_sink: OtlpSink | None = None  # the traced scenarios' collector
        self.started = time.monotonic()

    @property
    def work(self) -> Path:
        return self.services.work

    def log(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.1f}s] {message}", flush=True)

    def wanted(self, part: str) -> bool:
        return part not in self.o.skip

    def selected(self, key: str) -> bool:
        return self.o.only is None or key.removesuffix("_c1") in self.o.only
