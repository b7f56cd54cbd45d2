"""Per-user rate limiting. (Placeholder: admits everything; issue 5 fills it in.)"""

from __future__ import annotations

from sidecar.headers import Headers


class RateLimiter:
    async def admit(self, user_id: str, method: str, path: str) -> Headers:
        """Headers to add to the response; raise RateLimited when over the limit."""
        return []
