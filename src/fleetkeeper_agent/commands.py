"""The device owner's commands: the busy hook and the health checks. No shell runs them; each gets
a timeout, and what it printed is kept (its tail) to be reported."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

TAIL_CHARACTERS = 4000


@dataclass(frozen=True)
class Outcome:
    ok: bool
    tail: str


def run_command(command: Sequence[str], *, timeout: float) -> Outcome:
    """Exit status 0 within `timeout` is success; anything else (including a missing program) is not."""
    try:
        finished = subprocess.run(  # noqa: S603 - the device owner's own command, never a shell
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.output.decode("utf-8", "replace") if isinstance(exc.output, bytes) else ""
        return Outcome(False, _tail(f"{output}\n{command[0]}: no answer within {timeout:g} s"))
    except OSError as exc:
        return Outcome(False, f"{command[0]}: {exc.strerror or exc}")
    output = finished.stdout.decode("utf-8", "replace")
    if finished.returncode != 0:
        output += f"\n{command[0]}: exit status {finished.returncode}"
    return Outcome(finished.returncode == 0, _tail(output))


def run_health_checks(commands: Sequence[Sequence[str]], *, timeout: float) -> Outcome:
    """Every command must pass; the first failure ends the check with its output."""
    tails = []
    for command in commands:
        outcome = run_command(command, timeout=timeout)
        tails.append(outcome.tail)
        if not outcome.ok:
            return Outcome(False, _tail("\n".join(tails)))
    return Outcome(True, _tail("\n".join(tails)))


def _tail(text: str) -> str:
    return text.strip()[-TAIL_CHARACTERS:]
