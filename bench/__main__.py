"""``python -m bench``: run every section and write ``bench/results/latest.*``.

Options: ``--quick`` (one short round of everything, written to
``results/quick.*`` so it never replaces the full results), ``--rounds N``,
``--only submit,pickup,drain,cost,e2e``, ``--python-load`` (the bundled load
generator even when wrk is installed), ``--out NAME``. The run starts its own
redis-server (one per section) and gunicorn processes on 127.0.0.1, stops each by
pid even on error, and exits non-zero if a section failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

from bench import cost, drain, e2e, pickup, report, submit
from bench.common import FULL, QUICK, RESULTS, Plan, log
from bench.http_load import tool
from bench.servers import RedisServer

SECTIONS = ("submit", "pickup", "drain", "cost", "e2e")


def _with_server(
    run: Callable[[RedisServer, Plan], dict[str, Any]],
) -> Callable[[Plan], dict[str, Any]]:
    def section(plan: Plan) -> dict[str, Any]:
        with RedisServer() as server:
            return run(server, plan)

    return section


RUNNERS: dict[str, Callable[[Plan], dict[str, Any]]] = {
    "submit": _with_server(submit.run),
    "pickup": _with_server(pickup.run),
    "drain": _with_server(drain.run),
    "cost": cost.run,
    "e2e": _with_server(e2e.run),
}


def main() -> int:
    """Parse the command line, run the sections, write the report."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one short round of everything (a smoke run)",
    )
    parser.add_argument("--rounds", type=int, help="rounds per figure (default 3)")
    parser.add_argument(
        "--only", help="comma-separated sections: " + ",".join(SECTIONS)
    )
    parser.add_argument("--out", help="output stem (default results/latest or quick)")
    parser.add_argument(
        "--python-load",
        action="store_true",
        help="use the bundled Python load generator even if wrk is installed",
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    sections = SECTIONS if not args.only else tuple(args.only.split(","))
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    stem = RESULTS / (args.out or ("quick" if args.quick else "latest"))
    if args.python_load:
        os.environ["BENCH_LOAD_TOOL"] = "python"

    started = time.monotonic()
    with RedisServer() as probe:
        redis_version = probe.version()
    results: dict[str, Any] = {
        "meta": report.metadata(redis_version),
        "plan": dataclasses.asdict(plan),
        "quick": args.quick,
    }
    log(
        f"bench: sections {', '.join(sections)}; load tool {tool()}; "
        f"{plan.rounds} round(s)"
    )
    failed = False
    for name in sections:
        log(f"=== {name}")
        try:
            results[name] = RUNNERS[name](plan)
        except Exception as exc:
            failed = True
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    results["code_fingerprint_at_end"] = report.code_fingerprint()
    results["code_changed_during_run"] = (
        results["code_fingerprint_at_end"] != results["meta"]["code_fingerprint"]
    )
    if results["code_changed_during_run"]:
        log("warning: async_endpoints/ changed during the run")
    results["targets"] = report.targets(results)
    results["elapsed_s"] = time.monotonic() - started
    results["loadavg_at_end"] = report.loadavg()
    md, js = report.write(results, stem)
    log(f"wrote {md} and {js} in {results['elapsed_s']:.0f} s")
    print(md.read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
