"""What the soak checks beyond the answers themselves: every line the upstream recorded
against the ledger (who arrived, with which credential, and when), and after the load
that every key created is listed in the state the ledger says."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import orjson

from bench.soak_ledger import KEYS, PATH, Ledger, Report
from bench.soak_rig import Pool


class UpstreamRecord:
    """The upstream's record (a JSON line per request it got), read on from where the
    last check stopped."""

    def __init__(self, path: Path, ledger: Ledger, report: Report) -> None:
        self.path = path
        self.ledger = ledger
        self.report = report
        self.offset = 0

    def check(self) -> None:
        try:
            with open(self.path, "rb") as record:
                record.seek(self.offset)
                data = record.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self.offset += end
        for raw in data[:end].splitlines():
            self.report.upstream_lines += 1
            self._check_line(orjson.loads(raw))

    def _check_line(self, line: dict[str, Any]) -> None:
        tag = line.get("tag") or ""
        bad = "no_unauthenticated_upstream"
        if line.get("api_key_header"):
            self.report.violate(bad, "an X-API-Key header reached the upstream")
        if tag.startswith("k:"):
            key = self.ledger.keys.get(tag[2:])
            if key is None:
                self.report.violate(bad, f"unknown key tag {tag} reached the upstream")
                return
            if (line["user"], line["method"], line["key"]) != (key.user, "api_key", key.id):
                self.report.violate(
                    bad,
                    f"key {key.id} of {key.user} arrived as user={line['user']} "
                    f"method={line['method']} key={line['key']}",
                )
            if key.revoked is not None and self.report.counts_against_revocation(
                key.revoked, line["t"]
            ):
                self.report.violate(
                    "revoked_within_1s",
                    f"revoked key {key.id} reached the upstream "
                    f"{line['t'] - key.revoked:.2f}s after its DELETE",
                )
        elif tag.startswith("j:"):
            if (line["user"], line["method"], line["key"]) != (tag[2:], "jwt", None):
                self.report.violate(bad, f"JWT of {tag[2:]} arrived as {line['user']}")
        else:
            self.report.violate(bad, f"request tagged {tag!r} reached the upstream")

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.check()
            await asyncio.sleep(1.0)


async def final_checks(port: int, ledger: Ledger, report: Report, record: UpstreamRecord) -> None:
    """Every key created exists (listed with include_expired), in the state the ledger
    says; active ones still authenticate (asked on the sidecar at ``port``)."""
    pool = Pool(port, 8)
    listed: dict[str, dict[str, Any]] = {}
    for user in ledger.users:
        status, body = await pool.request(
            "GET",
            KEYS + "?include_expired=true",
            [("Authorization", f"Bearer {ledger.tokens[user]}")],
        )
        if status != 200:
            report.violate("created_keys_exist", f"listing {user} answered {status}")
            continue
        for item in orjson.loads(body)["api_keys"]:
            listed[item["id"]] = item
    for key in ledger.keys.values():
        item = listed.get(key.id)
        if item is None:
            report.violate("created_keys_exist", f"key {key.id} ({key.kind}) is gone")
        elif not key.uncertain and item["is_active"] != (key.revoked is None):
            report.violate(
                "created_keys_exist",
                f"key {key.id} is_active={item['is_active']}, ledger says "
                f"{'revoked' if key.revoked else 'active'}",
            )
    report.keys_checked = len(ledger.keys)
    active = [k for k in ledger.keys.values() if k.revoked is None and not k.uncertain]
    sample = random.sample(active, min(300, len(active)))
    for key in sample:
        status, _ = await pool.request(
            "GET", PATH, [("X-API-Key", key.api_key), ("X-Soak-Tag", f"k:{key.id}")]
        )
        if status != 200:
            report.violate(
                "valid_key_never_401", f"after the soak, active key {key.id} got {status}"
            )
    report.active_checked = len(sample)
    record.check()
