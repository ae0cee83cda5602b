"""The deployments domain's time. Every module of the domain reads it as `clock.now()`, so that a
test can move through phases, schedules and windows by replacing `now` here, without waiting."""

from __future__ import annotations

from fleetkeeper.core.db import utcnow

now = utcnow
