"""Rate limits and failure back-off on the `limits` library: in memory by default, in Redis when
configured so that every replica counts against the same limits."""

from __future__ import annotations

import math
import time
from typing import cast

from limits import RateLimitItem, parse
from limits.aio.storage import Storage as AsyncStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from fleetkeeper.core.errors import ProblemError


class RateLimitedError(ProblemError):
    status = 429
    code = "rate_limited"

    def __init__(self, detail: str, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(detail, headers={"Retry-After": str(seconds)}, retry_after=seconds)


class RateLimiter:
    def __init__(self, storage_uri: str = "memory://", key_prefix: str = "fleetkeeper") -> None:
        uri = storage_uri if storage_uri.startswith("async+") else f"async+{storage_uri}"
        # Redis through redis-py (already a dependency), with keys of our own prefix.
        options: dict[str, str] = (
            {"implementation": "redispy", "key_prefix": key_prefix} if "redis" in uri.split("://")[0] else {}
        )
        self.storage = cast(AsyncStorage, storage_from_string(uri, **options))
        self.strategy = MovingWindowRateLimiter(self.storage)

    async def hit(self, limit: str | RateLimitItem, *key: str, detail: str = "too many requests") -> None:
        """Counts one request against `limit` for `key`; raises RateLimitedError past it."""
        item = parse(limit) if isinstance(limit, str) else limit
        if await self.strategy.hit(item, *key):
            return
        stats = await self.strategy.get_window_stats(item, *key)
        raise RateLimitedError(detail, retry_after=stats.reset_time - time.time())

    async def blocked_for(self, key: str) -> float:
        """Seconds left of a back-off set by `record_failure` (0: not blocked)."""
        if await self.storage.get(f"block/{key}") <= 0:
            return 0.0
        expiry: float = await self.storage.get_expiry(f"block/{key}")
        return max(0.0, expiry - time.time())

    async def record_failure(
        self, key: str, *, free_failures: int, base_delay: float, max_delay: float, memory: float
    ) -> float:
        """Counts a failure; past `free_failures` in a row, blocks `key` for a delay that doubles
        with each further failure, up to `max_delay`. Returns that delay (0 while still free)."""
        failures = await self.storage.incr(f"fail/{key}", math.ceil(memory))
        if failures <= free_failures:
            return 0.0
        delay = min(max_delay, base_delay * 2 ** (failures - free_failures - 1))
        await self.storage.clear(f"block/{key}")
        await self.storage.incr(f"block/{key}", math.ceil(delay))
        return float(delay)

    async def clear_failures(self, key: str) -> None:
        await self.storage.clear(f"fail/{key}")
        await self.storage.clear(f"block/{key}")
