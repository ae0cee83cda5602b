"""The `fleetkeeper` command line."""
