"""What one domain registers with another, done here so that importing a domain does nothing.

Access asks devices which device groups cannot scope a permission (devices/scope_fitness.py);
releases asks deployments whether a release is still in use before deleting it
(deployments/release_use.py). Any process that gives scopes or deletes releases builds the
management app, whose routers wire these (`management_routers` in server/app.py)."""

from __future__ import annotations


def wire_domains() -> None:
    """Idempotent: a check registered twice is kept once."""
    from fleetkeeper.deployments import release_use
    from fleetkeeper.devices import scope_fitness

    scope_fitness.register()
    release_use.register()
