"""The agent, killed with SIGKILL at its CRASH_AT_SAVE-th state write: just before it
(CRASH_WHEN=before: the step's action ran, its outcome is not recorded) or just after it
(CRASH_WHEN=after: the step is announced, its action has not run). For the kill test."""

import os
import signal
import sys

from fleetkeeper_agent import update_state
from fleetkeeper_agent.cli import main

target = int(os.environ["CRASH_AT_SAVE"])
when = os.environ["CRASH_WHEN"]
saves = 0
original_save = update_state.UpdateState.save


def crashing_save(self: update_state.UpdateState, data_dir: "os.PathLike[str]") -> None:
    global saves
    saves += 1
    if saves == target and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    original_save(self, data_dir)  # type: ignore[arg-type]
    if saves == target and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)


update_state.UpdateState.save = crashing_save  # type: ignore[method-assign]
sys.exit(main())
