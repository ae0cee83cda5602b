"""fleetkeeper-sim: many simulated devices from one machine, over the real device listener
(docs/simulator.md).

Like the agent it talks HTTPS only and imports no server code; it reuses the agent's key store,
signed envelopes and certificate checks, so that its enrollment is the agent's.
"""

from fleetkeeper_agent import __version__

__all__ = ["__version__"]
