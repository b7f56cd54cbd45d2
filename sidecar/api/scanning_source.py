"""Where secret-scanning signature keys come from: ``secret_scanning.public_keys_file``
(read once at start) and, optionally, ``secret_scanning.public_keys_url``.

The URL is fetched only when a report names a key identifier not known yet, at most
once per ``REFRESH_SECONDS`` (GitHub rotates its keys rarely; anyone may send a made-up
identifier, and must not be able to make us fetch on every request). What it returned
is kept and added to the file's keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.config.model import SecretScanningConfig
from sidecar.core.errors import ScanningKeysUnavailable
from sidecar.crypto import scanning_signatures as scanning_keys

log = logging.getLogger("sidecar.secret_scanning")

REFRESH_SECONDS = 60.0
FETCH_TIMEOUT_SECONDS = 5.0
MAX_DOCUMENT_BYTES = 1024 * 1024


class ScanningKeySource:
    def __init__(
        self,
        config: SecretScanningConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys: scanning_keys.PublicKeys = {}
        if config.public_keys_file:
            self._keys.update(scanning_keys.parse(Path(config.public_keys_file).read_bytes()))
        self._url = config.public_keys_url
        self._clock = clock
        self._fetched_at: float | None = None
        self._fetch_failed = False
        self._lock = asyncio.Lock()
        self._http: httpx.AsyncClient | None = None
        self.fetches = 0

    async def key(self, identifier: str) -> ec.EllipticCurvePublicKey | None:
        """The key with this identifier; None when neither source has it. Raises
        ScanningKeysUnavailable when it might be at the URL but the URL cannot be read."""
        found = self._keys.get(identifier)
        if found is not None or self._url is None:
            return found
        async with self._lock:  # one fetch at a time; the others then find its answer
            found = self._keys.get(identifier)
            if found is None and self._may_fetch():
                await self._fetch(self._url)
            found = self._keys.get(identifier)
        if found is None and self._fetch_failed:
            raise ScanningKeysUnavailable()
        return found

    def _may_fetch(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= REFRESH_SECONDS

    async def _fetch(self, url: str) -> None:
        self._fetched_at = self._clock()
        self.fetches += 1
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS)
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            if len(response.content) > MAX_DOCUMENT_BYTES:
                raise ValueError("document larger than 1 MiB")
            fetched = scanning_keys.parse(response.content)
        except (httpx.HTTPError, ValueError) as exc:
            self._fetch_failed = True
            log.warning("cannot fetch the secret-scanning public keys from %s: %s", url, exc)
            return
        self._fetch_failed = False
        self._keys.update(fetched)
        log.info("fetched %d secret-scanning public keys from %s", len(fetched), url)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
