"""Profile one HTTP row with py-spy: where the gunicorn workers' time goes.

``python -m bench.profile ours-redis --duration 10`` starts a redis-server and the
row's gunicorn, records both workers with ``py-spy record --gil`` (samples taken
while a thread holds the GIL, i.e. Python CPU time) during a load run, and prints
the functions with the largest inclusive and self shares, and the share of each
request-path stage. The raw collapsed stacks are kept in
``bench/results/profile-<system>.txt`` for a flame graph (``flamegraph.pl``).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.http_load import load
from bench.loadgen import LoadResult
from bench.servers import (
    ROOT,
    Managed,
    ProcessGroup,
    gunicorn,
    redis_server,
    start_gunicorn,
)

RESULTS = ROOT / "bench" / "results"


@dataclass
class Profile:
    """Collapsed stacks and what they add up to."""

    samples: int = 0
    inclusive: collections.Counter[str] = field(default_factory=collections.Counter)
    self_: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, stack: str, count: int) -> None:
        """Count one collapsed stack (``frame;frame;... count``)."""
        frames = stack.split(";")
        self.samples += count
        for frame in set(frames):
            self.inclusive[frame] += count
        self.self_[frames[-1]] += count

    def share(self, needle: str) -> float:
        """The share of samples whose stack has a frame containing ``needle``."""
        return self.inclusive_matching(needle) / max(1, self.samples)

    def inclusive_matching(self, needle: str) -> int:
        """Samples with at least one frame containing ``needle``."""
        return sum(
            count
            for stack, count in self._stacks.items()
            if any(needle in frame for frame in stack.split(";"))
        )

    _stacks: collections.Counter[str] = field(default_factory=collections.Counter)


def read_collapsed(path: Path) -> Profile:
    """A :class:`Profile` of py-spy's ``--format raw`` output."""
    profile = Profile()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            profile.add(stack, int(count))
            profile._stacks[stack] += int(count)
    return profile


def record(
    system: str, duration: float, *, gil: bool = True
) -> tuple[Path, LoadResult]:
    """Load the row of ``system`` while py-spy records its gunicorn workers."""
    if (
        shutil.which("py-spy") is None
        and not (Path(sys.prefix) / "bin/py-spy").exists()
    ):
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    spy = shutil.which("py-spy") or str(Path(sys.prefix) / "bin/py-spy")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"profile-{system}.txt"
    with redis_server() as server, ProcessGroup() as group:
        app, port = gunicorn(system, {"BENCH_REDIS_URL": server.url(1)})
        start_gunicorn(group, app, port)
        load(port, duration=1.0)  # warm-up
        argv = [
            spy,
            "record",
            "--nonblocking",
            "-s",
            "-r",
            "200",
            "-f",
            "raw",
            "--nolineno",
            "-d",
            str(int(duration) + 1),
            "-o",
            str(out),
            "-p",
            str(app.pid),
        ]
        if gil:
            argv.insert(2, "--gil")
        spy_proc = Managed("py-spy", argv, log=RESULTS / "profile-py-spy.log")
        result_box: list[LoadResult] = []

        def run_load() -> None:
            time.sleep(0.5)
            result_box.append(load(port, duration=duration))

        group.start(spy_proc)
        loader = threading.Thread(target=run_load)
        loader.start()
        loader.join()
        assert spy_proc.proc is not None
        try:
            spy_proc.proc.wait(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            spy_proc.stop()
    return out, result_box[0]


STAGES = {
    "whole request (gunicorn handle_request)": "handle_request",
    "Flask dispatch (wsgi_app)": "wsgi_app",
    "submit view": "view (async_endpoints/views.py)",
    "JobManager.submit": "submit (async_endpoints/manager.py)",
    "RedisStore.submit": "submit (async_endpoints/stores/redis.py)",
    "redis-py Script.__call__ (EVALSHA)": "__call__ (redis/commands/core.py)",
    "job_response / to_dict": "job_response",
    "request_headers": "request_headers",
    "_encode_job": "_encode_job",
    "_decode_job": "_decode_job",
    "json.dumps": "dumps (json/__init__.py)",
    "uuid4": "uuid4",
    "in-process worker (manager.run)": "run (async_endpoints/manager.py)",
    "worker claim": "claim (async_endpoints/stores/redis.py)",
    "worker complete": "complete (async_endpoints/stores/redis.py)",
    "BLPOP wait_for_work": "wait_for_work",
    "RQ enqueue": "enqueue (rq/queue.py)",
    "Celery apply_async": "apply_async",
    "socket send (sendall)": "sendall",
    "socket recv (read_response)": "read_response",
}


def report(path: Path, top: int = 25) -> str:
    """A plain-text summary of a collapsed-stack file."""
    profile = read_collapsed(path)
    lines = [f"{profile.samples} samples in {path.name}", "", "stage shares:"]
    for label, needle in STAGES.items():
        share = profile.share(needle)
        if share > 0:
            lines.append(f"  {share:6.1%}  {label}")
    lines += ["", f"top {top} inclusive:"]
    for frame, count in profile.inclusive.most_common(top):
        lines.append(f"  {count / profile.samples:6.1%}  {frame}")
    lines += ["", f"top {top} self:"]
    for frame, count in profile.self_.most_common(top):
        lines.append(f"  {count / profile.samples:6.1%}  {frame}")
    return "\n".join(lines)


def main() -> None:
    """Command line: profile one row and print the summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument(
        "--all-threads",
        action="store_true",
        help="sample threads that do not hold the GIL too",
    )
    args = parser.parse_args()
    path, result = record(args.system, args.duration, gil=not args.all_threads)
    print(f"load during profiling: {result.rps:.0f} req/s (p50 {result.p50_ms} ms)")
    print(report(path))


if __name__ == "__main__":
    main()
