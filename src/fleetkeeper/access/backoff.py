"""The growing wait after wrong passwords and codes.

Each counter names whom a wait holds back. Past its free failures (counted from the first one, for
`MEMORY_SECONDS`), the counter waits `FIRST_WAIT_SECONDS`, then twice as long after each further
failure, up to `LONGEST_WAIT_SECONDS`; while it waits, no answer is even checked, the right one
included (else the wait could be probed for the password). Sign-in counts an account from one
address, one address at any accounts, and one account from all addresses (signin.py); a password
or code checked outside sign-in counts the account (reauth.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fleetkeeper.core.ratelimit import RateLimitedError, RateLimiter

FREE_FAILURES = 3
FIRST_WAIT_SECONDS = 1.0
LONGEST_WAIT_SECONDS = 900.0
MEMORY_SECONDS = 3600.0


@dataclass(frozen=True)
class Counter:
    key: str
    free_failures: int = FREE_FAILURES


async def ensure_not_waiting(limiter: RateLimiter, counters: Iterable[Counter], detail: str) -> None:
    """Raises 429 with Retry-After while any of the counters waits."""
    wait = max([await limiter.blocked_for(counter.key) for counter in counters], default=0.0)
    if wait > 0:
        raise RateLimitedError(detail, retry_after=wait)


async def count_failure(limiter: RateLimiter, counters: Iterable[Counter]) -> None:
    for counter in counters:
        await limiter.record_failure(
            counter.key,
            free_failures=counter.free_failures,
            base_delay=FIRST_WAIT_SECONDS,
            max_delay=LONGEST_WAIT_SECONDS,
            memory=MEMORY_SECONDS,
        )


async def forget_failures(limiter: RateLimiter, counter: Counter) -> None:
    await limiter.clear_failures(counter.key)
