"""The failed-authentication limit: a client that failed ``requests`` times within
``per_seconds`` is refused any credential that would need a Redis lookup.

Per instance, in memory (docs/security, "When a key leaks", says why): checking costs a dict
lookup and never a Redis round trip, and it keeps working while Redis is down. The
window slides: a client is refused while its ``requests``-th latest failure is younger
than ``per_seconds``. Refusals are not failures, so a refused client is let back in
``per_seconds`` after the failures that got it refused, whatever it sends meanwhile.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from sidecar.core.clientaddr import client_group
from sidecar.core.errors import TooManyFailedAuth

# Clients tracked at once; past it the oldest-tracked is forgotten. A failure record is
# ~200 bytes plus 8 per failure kept, so this bounds the table near 50 MB.
MAX_CLIENTS = 100_000


class FailedAuthLimiter:
    def __init__(
        self,
        *,
        requests: int,
        per_seconds: float,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._requests = requests
        self._window = per_seconds
        self._max_clients = max_clients
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self.limited = 0  # refusals, for sidecar_failed_auth_limited_total

    def admit(self, client: str | None) -> None:
        """Raise TooManyFailedAuth when ``client`` is over the limit."""
        failures = self._failures.get(client_group(client))
        if failures is None or len(failures) < self._requests:
            return
        wait = failures[0] + self._window - self._clock()
        if wait <= 0:
            return
        self.limited += 1
        raise TooManyFailedAuth(max(1, math.ceil(wait)))

    def failed(self, client: str | None) -> None:
        group = client_group(client)
        failures = self._failures.get(group)
        if failures is None:
            if len(self._failures) >= self._max_clients:
                del self._failures[next(iter(self._failures))]
            failures = self._failures[group] = deque(maxlen=self._requests)
        failures.append(self._clock())
