"""`fleetkeeper-agent`: the device side. Later issues add enroll, run, install."""

from __future__ import annotations

import argparse

from fleetkeeper_agent import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleetkeeper-agent", description="fleetkeeper device agent")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("version", help="print the version")
    parser.parse_args(argv)
    print(__version__)
    return 0
