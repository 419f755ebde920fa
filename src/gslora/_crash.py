"""A test-only hook: ``GSLORA_CRASH_AT=<point>`` makes the process SIGKILL itself at that named point, so the resume
tests can stop a run at exact places without sleeps. Points: ``task<i>.step<n>`` (after step n of task i) and
``after-task<i>`` (once task i's resume state is saved)."""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    if os.environ.get("GSLORA_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
