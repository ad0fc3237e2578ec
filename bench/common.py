"""What every section shares: the plan (sizes and durations), statistics, logging."""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.servers import ROOT

RESULTS: Final = ROOT / "bench" / "results"
LOGS: Final = RESULTS / "logs"
PAYLOAD: Final = {"data": "hello"}
"""The JSON body of every job: the same small body the HTTP rows POST."""

_T0 = time.monotonic()


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes and durations of one run."""

    rounds: int = 3
    submit_seconds: float = 10.0
    warmup_seconds: float = 1.0
    connections: int = 32
    pickup_jobs: int = 100
    pickup_gap_seconds: float = 0.02
    drain_jobs: int = 5000
    drain_cap_seconds: float = 8.0
    cost_trickle_jobs: int = 100
    cost_burst_jobs: int = 1000
    idle_seconds: float = 10.0
    e2e_seconds: float = 10.0
    e2e_cap_seconds: float = 60.0


FULL: Final = Plan()
QUICK: Final = Plan(
    rounds=1,
    submit_seconds=3.0,
    warmup_seconds=1.0,
    pickup_jobs=30,
    drain_jobs=1000,
    drain_cap_seconds=4.0,
    cost_trickle_jobs=30,
    cost_burst_jobs=300,
    idle_seconds=3.0,
    e2e_seconds=3.0,
)


def log(message: str) -> None:
    """A progress line on stderr, with the seconds since the run started."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values."""
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def log_path(name: str) -> Path:
    """Where the output of the process ``name`` goes."""
    LOGS.mkdir(parents=True, exist_ok=True)
    return LOGS / f"{name}.log"
