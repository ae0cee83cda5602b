"""Rate limits and failure back-off on the `limits` library: in memory by default, in Redis when
configured so that every replica counts against the same limits."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
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
        """Seconds left of a back-off wait on `key` (0: not waiting)."""
        if await self.storage.get(f"block/{key}") <= 0:
            return 0.0
        expiry: float = await self.storage.get_expiry(f"block/{key}")
        return max(0.0, expiry - time.time())

    async def reserve_failure(
        self, key: str, *, free_failures: int, base_delay: float, max_delay: float, memory: float
    ) -> Reservation:
        """Counts a failure on `key` before the answer it stands for is checked, so that attempts
        made at once see each other: each increment is atomic (in memory and in Redis alike).

        The `free_failures`-th failure in a row starts a wait of `base_delay`, each further one a
        wait twice as long, up to `max_delay`; failures are remembered for `memory` seconds from
        the first. The attempt that would start a wait claims it at once (the first to create the
        wait's key): it is checked, and until the wait ends no other attempt is. An attempt
        refused is not counted (`Reservation.granted` false, with the wait's seconds left)."""
        failures = await self.storage.incr(f"fail/{key}", math.ceil(memory))
        if failures < free_failures:
            return Reservation(granted=True)
        delay = min(max_delay, base_delay * 2 ** (failures - free_failures))
        if await self.storage.incr(f"block/{key}", math.ceil(delay)) == 1:
            return Reservation(granted=True, claimed_wait=True)
        waiting = await self.blocked_for(key)
        await self._uncount(key)
        return Reservation(granted=False, retry_after=waiting)

    async def release_failure(self, key: str, reservation: Reservation) -> None:
        """Takes back a failure counted by `reserve_failure` (the answer was right, or none was
        checked), and the wait it claimed."""
        await self._uncount(key)
        if reservation.claimed_wait:
            await self.storage.clear(f"block/{key}")

    async def _uncount(self, key: str) -> None:
        if await self.storage.get(f"fail/{key}") > 0:
            await self.storage.incr(f"fail/{key}", 1, amount=-1)

    async def clear_failures(self, key: str) -> None:
        await self.storage.clear(f"fail/{key}")
        await self.storage.clear(f"block/{key}")


@dataclass(frozen=True)
class Reservation:
    """A failure counted ahead of its check (`RateLimiter.reserve_failure`)."""

    granted: bool
    claimed_wait: bool = False
    retry_after: float = 0.0
