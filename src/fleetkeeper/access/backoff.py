"""The growing wait after wrong passwords and codes.

Each counter names whom a wait holds back. After its free failures in a row (counted from the
first one, for `MEMORY_SECONDS`), the counter waits `FIRST_WAIT_SECONDS`, then twice as long after
each further failure, up to `LONGEST_WAIT_SECONDS`; while it waits, no answer is even checked, the
right one included (else the wait could be probed for the password).

An attempt is counted as a failure before its answer is checked (`reserve`), atomically, and
taken back when the answer was right: so however many attempts come at once, no more than the
free failures are checked before the first wait, and one attempt per wait after it. Sign-in counts
an account from one network, one network at any accounts, and one account from everywhere
(signin.py); a password or code checked outside sign-in counts the account (reauth.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fleetkeeper.core.ratelimit import RateLimitedError, RateLimiter, Reservation

FREE_FAILURES = 3
FIRST_WAIT_SECONDS = 1.0
LONGEST_WAIT_SECONDS = 900.0
MEMORY_SECONDS = 3600.0


@dataclass(frozen=True)
class Counter:
    key: str
    free_failures: int = FREE_FAILURES
    # A right answer forgets this counter's failures (the account's owner proved who they are);
    # any other counter only takes back the attempt itself.
    forgotten_on_success: bool = False


class Attempt:
    """One answer about to be checked, already counted as a failure by each of its counters. It
    stays counted unless `succeeded` or `withdrawn`."""

    def __init__(self, limiter: RateLimiter, held: list[tuple[Counter, Reservation]]) -> None:
        self._limiter = limiter
        self._held = held

    async def succeeded(self) -> None:
        """The answer was right."""
        for counter, reservation in self._settle():
            if counter.forgotten_on_success:
                await self._limiter.clear_failures(counter.key)
            else:
                await self._limiter.release_failure(counter.key, reservation)

    async def withdraw(self) -> None:
        """No wrong answer was given after all (nothing was checked, or what was, was right)."""
        for counter, reservation in self._settle():
            await self._limiter.release_failure(counter.key, reservation)

    def _settle(self) -> list[tuple[Counter, Reservation]]:
        held, self._held = self._held, []
        return held


async def reserve(limiter: RateLimiter, counters: Iterable[Counter], detail: str) -> Attempt:
    """Counts an attempt against every counter before its answer is checked; raises 429 with
    Retry-After, counting nothing, while any of them waits."""
    counters = list(counters)
    held: list[tuple[Counter, Reservation]] = []
    for counter in counters:
        reservation = await limiter.reserve_failure(
            counter.key,
            free_failures=counter.free_failures,
            base_delay=FIRST_WAIT_SECONDS,
            max_delay=LONGEST_WAIT_SECONDS,
            memory=MEMORY_SECONDS,
        )
        if not reservation.granted:
            await Attempt(limiter, held).withdraw()
            waits = [reservation.retry_after] + [await limiter.blocked_for(c.key) for c in counters]
            raise RateLimitedError(detail, retry_after=max(waits))
        held.append((counter, reservation))
    return Attempt(limiter, held)
