"""Run the gslora command line and SIGKILL the process at a named point, for the resume tests (the hook lives here,
not in the shipped code):

    python tests/crash_hook.py POINT gslora-arguments...

``task<i>.step<n>``: once step n of task i's training is done (counted per trial; the process dies when step n + 1
has computed its loss, so every state saved at step n, such as an epoch checkpoint, is on disk and nothing later is);
``task<i>.trial<k>.step<n>``: the same inside the k-th trial of task i;
``after-task<i>``: once the run folder saved its resume state after task i.
"""

from __future__ import annotations

import os
import re
import signal
import sys

import gslora.engine as engine
import gslora.forget as forget
from gslora.cli import main
from gslora.rundir import RunFolder


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
    step_point = re.fullmatch(r"task(\d+)(?:\.trial(\d+))?\.step(\d+)", point)
    task_point = re.fullmatch(r"after-task(\d+)", point)
    if task_point:
        after = int(task_point.group(1))
        save = RunFolder.save_task_state

        def save_then_die(self, completed, state):
            path = save(self, completed, state)
            if completed == after:
                die()
            return path

        RunFolder.save_task_state = save_then_die
    elif step_point:
        task, trial, step = int(step_point.group(1)), int(step_point.group(2) or 0), int(step_point.group(3))
        count = {"steps": 0, "trials": 0}
        train_task, check_finite = forget.train_task, engine.check_finite

        def counting_train_task(model, method, ctx, state=None, **kw):
            count["steps"] = state["step"] if state is not None else 0
            count["trials"] += ctx.task.index == task
            return train_task(model, method, ctx, state=state, **kw)

        def check_then_die(logs, task_index, epoch):
            check_finite(logs, task_index, epoch)
            if task_index == task and (not trial or count["trials"] == trial):
                count["steps"] += 1
                if count["steps"] == step + 1:
                    die()

        forget.train_task = counting_train_task
        engine.check_finite = check_then_die
    else:
        raise SystemExit(f"unknown crash point {point!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
