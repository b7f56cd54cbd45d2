"""``POST /api/v1/secret-scanning/``: GitHub's secret-scanning partner contract.

GitHub posts a JSON array of ``{"token", "type", "url", "source"}`` found in public
code, signed with ECDSA P-256 / SHA-256 over the raw body (headers
``Github-Public-Key-Identifier`` and ``Github-Public-Key-Signature``). Every reported
token that is one of our keys, active, is revoked through the store's revocation
script (the one DELETE uses: every instance evicts it at once), with reason
``leaked`` and the report's url. The answer labels each token ``true_positive`` (a key
that is or was ours) or ``false_positive``.

The whole batch costs two pipelined round trips to Redis (look every token up, then
revoke the active ones), not one per token, so 1,000 tokens are answered well within
GitHub's 30 s. A replayed report finds the keys already revoked and changes nothing.
No credential: the signature is the authentication, checked before the body is parsed.

Until it is verified a report is anyone's, so it costs little: what cannot be valid is
refused before its body is read (no identifier or signature header, a signature that
is not base64 DER, an identifier we do not know, a declared length over
``MAX_REPORT_BYTES``), and the connection is then closed rather than drained. At most
``max_concurrent_reports`` bodies are read at once (per process; beyond that 503 with
``Retry-After``, which GitHub retries), each within ``body_timeout_seconds`` (else
408), and a body is counted as it arrives, so memory stays within about
``max_concurrent_reports`` times ``MAX_REPORT_BYTES`` whatever is sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from sidecar.api.scanning_source import ScanningKeySource
from sidecar.core.bodies import read_body
from sidecar.core.clientaddr import TrustedProxies
from sidecar.core.domain import LEAKED, SECRET_SCANNING, AuditContext, VerifiedKey
from sidecar.core.errors import (
    MethodNotAllowed,
    PayloadTooLarge,
    ReportInvalid,
    ReportsBusy,
    ReportSignatureInvalid,
    ReportTooSlow,
)
from sidecar.core.timeutil import now_iso
from sidecar.core.types import REQUEST_ID
from sidecar.crypto import scanning_signatures as scanning_keys
from sidecar.keys import format as keyformat
from sidecar.keys.calls import Revocation
from sidecar.keys.hashing import KeyHasher
from sidecar.keys.store import KeyStore

log = logging.getLogger("sidecar.secret_scanning")

# A report of 1,000 tokens with 200-character URLs is about 0.3 MiB.
MAX_REPORT_BYTES = 5 * 1024 * 1024
TRUE_POSITIVE, FALSE_POSITIVE = "true_positive", "false_positive"
_IDENTIFIER = b"github-public-key-identifier"
_SIGNATURE = b"github-public-key-signature"


class SecretScanning:
    def __init__(
        self,
        *,
        keys: ScanningKeySource,
        store: KeyStore,
        hasher: KeyHasher,
        on_revoked: Callable[[str], None],
        max_concurrent: int = 4,
        body_timeout: float = 10.0,
        proxies: TrustedProxies | None = None,
    ) -> None:
        self._keys = keys
        self._proxies = proxies or TrustedProxies(())
        self._max_reading = max_concurrent
        self._reading = 0  # report bodies being read and verified now
        self._body_timeout = body_timeout
        self._store = store
        self._hasher = hasher
        # This instance forgets a revoked key at once, not when its pub/sub message returns.
        self._on_revoked = on_revoked
        self.leaked = 0  # keys revoked as leaked, for sidecar_leaked_keys_total

    async def close(self) -> None:
        await self._keys.close()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            raise MethodNotAllowed("POST")
        identifier = signature = agent = None
        declared = None
        for name, value in scope["headers"]:
            lowered = name.lower()
            if lowered == b"user-agent":
                agent = value.decode("latin-1")
            elif lowered == _IDENTIFIER:
                identifier = value.decode("latin-1")
            elif lowered == _SIGNATURE:
                signature = value.decode("latin-1")
            elif lowered == b"content-length" and value.isdigit():
                declared = int(value)
        if not identifier or not signature:
            raise ReportSignatureInvalid(
                "Missing Github-Public-Key-Identifier or Github-Public-Key-Signature",
                body_unread=True,
            )
        if declared is not None and declared > MAX_REPORT_BYTES:
            raise PayloadTooLarge(MAX_REPORT_BYTES, body_unread=True)
        if scanning_keys.decoded_signature(signature) is None:
            raise ReportSignatureInvalid("Invalid signature", body_unread=True)
        key = await self._keys.key(identifier)
        if key is None:
            raise ReportSignatureInvalid("Unknown Github-Public-Key-Identifier", body_unread=True)
        if self._reading >= self._max_reading:
            raise ReportsBusy()
        self._reading += 1
        try:
            try:
                async with asyncio.timeout(self._body_timeout):
                    body = await read_body(receive, MAX_REPORT_BYTES)
            except TimeoutError:
                raise ReportTooSlow() from None
            except PayloadTooLarge:
                raise PayloadTooLarge(MAX_REPORT_BYTES, body_unread=True) from None
            if not scanning_keys.signature_valid(key, signature, body):
                raise ReportSignatureInvalid("Invalid signature")
        finally:
            self._reading -= 1
        reports = _parse(body)
        client = scope.get("client")
        context = AuditContext(
            SECRET_SCANNING,
            None,
            self._proxies.client(client[0] if client else None, scope["headers"]),
            agent,
            scope.get(REQUEST_ID),
        )
        answer = await self._process(reports, context)
        payload = orjson.dumps(answer)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _process(
        self, reports: list[dict[str, Any]], context: AuditContext
    ) -> list[dict[str, Any]]:
        candidates: dict[str, tuple[keyformat.ParsedKey, str, str | None]] = {}
        for report in reports:
            token: str = report["token"]
            if token in candidates:
                continue
            parsed = keyformat.parse(token)
            if parsed is not None:
                url = report.get("url")
                candidates[token] = (parsed, self._hasher.hash(token), _text_or_none(url))
        lookups = [(parsed, key_hash) for parsed, key_hash, _ in candidates.values()]
        verified = await self._store.verify_many(lookups)
        found: dict[str, VerifiedKey | None] = dict(zip(candidates, verified, strict=True))
        now = now_iso()
        moment = time.time()
        to_revoke: list[tuple[VerifiedKey, Revocation]] = []
        for token, key in found.items():
            if key is None:
                continue
            _, key_hash, url = candidates[token]
            if key.canary:  # our tripwire going off, not a key to retire: it never works anyway
                log.warning("canary key reported leaked", extra={"context": _context(key, url)})
            elif key.usable_at(moment):  # an expired key is a true positive with nothing to do
                audit = {"revoked_url": url} if url else {}
                to_revoke.append((key, Revocation(key, key_hash, LEAKED, audit)))
        if to_revoke:
            await self._store.revoke_many([r for _, r in to_revoke], context)
            for key, revocation in to_revoke:
                self._on_revoked(revocation.key_hash)
                self.leaked += 1
                found_at = _context(key, revocation.audit.get("revoked_url"))
                log.warning("leaked key revoked", extra={"context": {**found_at, "at": now}})
        return [
            {
                "token_raw": report["token"],
                "token_type": report.get("type"),
                "label": TRUE_POSITIVE if found.get(report["token"]) else FALSE_POSITIVE,
            }
            for report in reports
        ]


def _context(key: VerifiedKey, url: str | None) -> dict[str, Any]:
    return {"key_prefix": key.prefix, "key_id": key.id, "user_id": key.user_id, "url": url}


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _parse(body: bytes) -> list[dict[str, Any]]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ReportInvalid("Body is not valid JSON") from None
    if not isinstance(data, list):
        raise ReportInvalid('Body must be a JSON array of {"token", "type", "url", "source"}')
    for index, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("token"), str):
            raise ReportInvalid(f'Item {index} has no "token" string')
    return data
