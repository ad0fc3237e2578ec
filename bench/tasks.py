"""The jobs every system runs: a no-op, and one that reports when it started."""

from __future__ import annotations

import time
from typing import Any


def noop(payload: Any = None) -> None:
    """Do nothing: the job whose cost is the queue's own."""


def stamp(payload: Any = None) -> float:
    """Return the time (epoch seconds) at which the job's code started."""
    return time.time()
