"""Devices: identity, enrollment, certificates, inventory and groups.

It tells access which device groups cannot scope a permission (scope_fitness.py `register`), when
the composition root wires the domains (server/wiring.py)."""
