"""Devices: identity, enrollment, certificates, inventory and groups.

Importing the domain tells access which device groups cannot scope a permission
(scope_fitness.py): any process that gives scopes imports it (the management app's routers and the
console's pages do)."""

from fleetkeeper.devices import scope_fitness

scope_fitness.register()
