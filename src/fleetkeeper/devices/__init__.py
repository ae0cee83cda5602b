"""Devices: identity, enrollment, certificates, inventory and groups."""
