"""Deployments: rollouts to groups with phases, thresholds and maintenance windows.

It tells releases to keep the release of a deployment that has not ended (release_use.py
`register`), when the composition root wires the domains (server/wiring.py)."""
