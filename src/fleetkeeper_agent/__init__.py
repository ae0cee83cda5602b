"""The fleetkeeper device agent. It never imports server code."""

__version__ = "0.1.0"
