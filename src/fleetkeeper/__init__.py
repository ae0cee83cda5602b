"""fleetkeeper: keeps fleets of IoT and edge Linux devices secure for their whole life."""

__version__ = "0.1.0"
