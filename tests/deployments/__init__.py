"""Deployments: maintenance windows (pure unit tests)."""
