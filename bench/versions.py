"""``python -m bench.versions REV [REV ...]``: async-endpoints at several commits,
side by side, with the same harness.

Each revision (and the work tree, as ``now``) is checked out into a temporary git
worktree whose ``bench/`` is replaced by this one, so that only the library differs.
Then, in one run, for each version:

- the counted figures of section 4 (round trips and Redis commands per job, one at
  a time and in a burst; memory per finished job; an idle process's calls), once:
  they are exact;
- the timed figures of sections 1-3 for async-endpoints alone (HTTP submit with and
  without the worker as a share of bare Flask in the same round, server CPU per
  request, pickup p50/p99, drain of ``drain_jobs`` jobs), ``--rounds`` rounds with
  the versions interleaved round by round, and the median of each figure.

The last column is the change of the last version against the first. This is how
a regression is told apart from machine noise: the baseline runs in the same
minutes. It takes about 1 minute per version and round, plus 20 s per version.

Options: ``--rounds 5``; ``--out PATH`` (JSON of every round; default
``bench/results/versions.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import FULL, RESULTS, log, median
from bench.servers import ROOT

_FIGURES = [
    ("enqueue-only HTTP submit / bare Flask", "submit_enqueue_ratio", "{:.3f}"),
    ("HTTP submit with the worker / bare Flask", "submit_worker_ratio", "{:.3f}"),
    ("server CPU per enqueue-only request, µs", "submit_enqueue_cpu", "{:.0f}"),
    ("server CPU per request with the worker, µs", "submit_worker_cpu", "{:.0f}"),
    ("pickup p50, ms", "pickup_p50", "{:.3f}"),
    ("pickup p99, ms", "pickup_p99", "{:.3f}"),
    ("drain, jobs/s", "drain", "{:.0f}"),
    ("round trips per job, one at a time", "trickle_trips", "{:.2f}"),
    ("round trips per job, burst", "burst_trips", "{:.2f}"),
    ("Redis commands per job, one at a time", "trickle_commands", "{:.1f}"),
    ("Redis commands per job, burst", "burst_commands", "{:.1f}"),
    ("memory per finished job, B", "memory", "{:.0f}"),
    ("idle calls/s per process", "idle", "{:.2f}"),
]

# Run inside each version's worktree (its library, this harness): one timed round
# of async-endpoints alone, or the counted figures; prints one JSON object.
_TIMED = """
import dataclasses, json, sys
import bench.drain as drain, bench.pickup as pickup, bench.submit as submit
from bench.common import FULL
from bench.servers import RedisServer
submit.ROWS = {k: v for k, v in submit.ROWS.items()
               if k in ("ceiling", "ours-redis", "ours-redis-enqueue")}
every = pickup.configs
pickup.configs = lambda server: [c for c in every(server) if c.key == "ours"]
drain.CONFIGS = [c for c in drain.CONFIGS if c.key == "ours"]
plan = dataclasses.replace(FULL, rounds=1, drain_jobs=int(sys.argv[1]))
out = {}
for name, section in (("submit", submit), ("pickup", pickup), ("drain", drain)):
    with RedisServer() as server:
        out[name] = section.run(server, plan)
rows, ours = out["submit"]["rows"], "ours-redis"
print(json.dumps({
    "submit_enqueue_ratio": rows[ours + "-enqueue"]["ratio"],
    "submit_worker_ratio": rows[ours]["ratio"],
    "submit_enqueue_cpu": rows[ours + "-enqueue"]["cpu_us_per_request"],
    "submit_worker_cpu": rows[ours]["cpu_us_per_request"],
    "pickup_p50": out["pickup"]["rows"]["ours"]["start_p50_ms"],
    "pickup_p99": out["pickup"]["rows"]["ours"]["start_p99_ms"],
    "drain": out["drain"]["rows"]["ours"]["jobs_per_s"],
}))
"""

_COUNTED = """
import json
import bench.cost as cost
from bench.common import FULL
cost.SYSTEMS = [s for s in cost.SYSTEMS if s.key == "ours"]
row = cost.run(FULL)["rows"]["ours"]
print(json.dumps({
    "trickle_trips": row["trickle"]["round_trips"],
    "burst_trips": row["burst"]["round_trips"],
    "trickle_commands": row["trickle"]["commands_executed"],
    "burst_commands": row["burst"]["commands_executed"],
    "memory": row["memory"]["bytes_per_job"],
    "idle": row["idle"]["round_trips"],
}))
"""


def _worktree(rev: str, into: Path) -> Path:
    """A checkout of ``rev`` under ``into`` with this ``bench/`` in it."""
    path = into / rev.replace("/", "_")
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(path), rev],
        check=True,
    )
    shutil.rmtree(path / "bench")
    shutil.copytree(
        ROOT / "bench", path / "bench", ignore=shutil.ignore_patterns("results")
    )
    return path


def _snapshot(into: Path) -> Path:
    """The work tree as it is (its library and this harness), as ``now``."""
    path = into / "now"
    path.mkdir()
    for name in ("async_endpoints", "bench", "pyproject.toml", "setup.cfg"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source,
                path / name,
                ignore=shutil.ignore_patterns("results", "__pycache__"),
            )
        else:
            shutil.copy(source, path / name)
    return path


def _run(path: Path, script: str, *args: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(path)}
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{path.name}: {done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    """Parse the command line, run every version, print the table."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.versions", description=__doc__
    )
    parser.add_argument("revs", nargs="+", help="git revisions (oldest first)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS / "versions.json"))
    args = parser.parse_args()
    names = [*args.revs, "now"]
    with tempfile.TemporaryDirectory(prefix="bench-versions-") as tmp:
        paths: dict[str, Path] = {}
        try:
            for rev in args.revs:
                paths[rev] = _worktree(rev, Path(tmp))
            paths["now"] = _snapshot(Path(tmp))
            counted = {}
            for name in names:
                log(f"versions: counted figures of {name}")
                counted[name] = _run(paths[name], _COUNTED)
            timed: dict[str, list[dict[str, float]]] = {name: [] for name in names}
            for n in range(args.rounds):
                for name in names:
                    log(f"versions: round {n + 1} of {name}")
                    jobs = str(FULL.drain_jobs)
                    timed[name].append(_run(paths[name], _TIMED, jobs))
        finally:
            for rev in args.revs:
                if rev in paths:
                    subprocess.run(
                        [
                            "git",
                            "-C",
                            str(ROOT),
                            "worktree",
                            "remove",
                            "--force",
                            str(paths[rev]),
                        ],
                        check=False,
                    )
    figures: dict[str, dict[str, Any]] = {}
    for name in names:
        figures[name] = dict(counted[name])
        for key in timed[name][0]:
            figures[name][key] = median([r[key] for r in timed[name]])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"figures": figures, "timed_rounds": timed}, indent=1)
    )
    first, last = names[0], names[-1]
    print("| figure | " + " | ".join(names) + f" | {last} vs {first} |")
    print("|---|" + "---:|" * (len(names) + 1))
    for label, key, fmt in _FIGURES:
        values = [fmt.format(figures[name][key]) for name in names]
        change = figures[last][key] / figures[first][key] - 1
        print(f"| {label} | " + " | ".join(values) + f" | {change:+.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
