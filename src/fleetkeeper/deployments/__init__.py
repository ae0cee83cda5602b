"""Deployments: rollouts to groups with phases, thresholds and maintenance windows."""
