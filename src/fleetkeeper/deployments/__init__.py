"""Deployments: rollouts to groups with phases, thresholds and maintenance windows.

Importing the domain tells releases to keep the release of a deployment that has not ended
(release_use.py): any process that deletes releases imports it (the management app's routers do)."""

from fleetkeeper.deployments import release_use

release_use.register()
