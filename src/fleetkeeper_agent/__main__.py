import sys

from fleetkeeper_agent.cli import main

sys.exit(main())
