"""`python -m fleetkeeper_agent`."""

import sys

from fleetkeeper_agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
