"""``python -m bench.store_cost``: what one job costs Redis, by kind of handler.

For each kind (a plain handler; one with an owner, so the owner index and fair
claims' per-owner state are used; a handler with ``concurrency``; one with a
``rate_limit`` it never reaches), a fresh redis-server of its own (127.0.0.1, no
persistence, stopped by pid at the end) runs the whole life of ``--jobs`` no-op
jobs through the store's own calls: submit, claim, complete, one job at a time
(``--batch 1``, a worker with one free thread) or in claims of ``--batch`` jobs.

Reported per kind, from ``INFO commandstats`` after ``CONFIG RESETSTAT``:
Redis commands per job (commands run by scripts included), Redis CPU per job
(microseconds, every command's ``usec``: the script calls carry the commands they
run), and the memory a finished job keeps (``used_memory`` growth per job, main
dictionary and expiry entries included, and the sum of ``MEMORY USAGE`` of every
key per job). Counts are exact; microseconds move with the machine, so compare
the rows of one run.

Options: ``--jobs 2000``, ``--batch 1`` (or e.g. 50), ``--rounds 3``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

from async_endpoints.jobs import Job, JobStatus
from async_endpoints.stores.redis import RedisStore
from bench.common import log
from bench.servers import RedisServer

KINDS: dict[str, dict[str, Any]] = {
    "no limits, no owner": {},
    "no limits, 100 owners": {"owners": 100},
    "concurrency=1000": {"concurrency": 1000},
    "rate_limit=1000000/second": {"rate_limit": "1000000/1"},
}


def make_job(n: int, now: float, options: dict[str, Any]) -> Job:
    owners = options.get("owners")
    return Job(
        id=uuid.uuid4(),
        name="Noop",
        status=JobStatus.QUEUED,
        max_retries=3,
        created_at=now,
        last_updated_at=now,
        owner=f"user-{n % owners}" if owners else None,
        concurrency=options.get("concurrency"),
        rate_limit=options.get("rate_limit"),
    )


def run_jobs(
    store: RedisStore, count: int, batch: int, options: dict[str, Any]
) -> None:
    """Submit ``batch`` jobs, claim them, complete each; until ``count`` ran."""
    done = 0
    while done < count:
        now = time.time()
        size = min(batch, count - done)
        for n in range(done, done + size):
            store.submit(make_job(n, now, options), max_queue_size=0, now=now)
        claims = store.claim("bench", limit=size, lease=60, now=now)
        if len(claims) != size:
            raise RuntimeError(f"claimed {len(claims)} of {size} jobs")
        for claim in claims:
            store.complete(claim, None, ttl=3600, now=now)
        done += size


def measure(count: int, batch: int, options: dict[str, Any]) -> dict[str, float]:
    with RedisServer() as server:
        client = server.client()
        store = RedisStore(client, prefix="bench")
        run_jobs(store, 50, batch, options)  # scripts loaded, connections made
        for key in client.scan_iter("{bench}:job:*"):
            client.delete(key)
        base = client.info("memory")["used_memory"]
        before = {key: True for key in client.scan_iter("*")}
        client.config_resetstat()
        run_jobs(store, count, batch, options)
        stats = client.info("commandstats")
        used = client.info("memory")["used_memory"]
        calls = sum(v["calls"] for k, v in stats.items() if k != "cmdstat_config")
        usec = sum(v["usec"] for k, v in stats.items() if k != "cmdstat_config")
        usage = sum(
            client.memory_usage(key, samples=0) or 0
            for key in client.scan_iter("*")
            if key not in before or key.startswith(b"{bench}:ix:")
        )
        store.close()
        client.close()
    return {
        "commands": calls / count,
        "usec": usec / count,
        "used_memory": (used - base) / count,
        "memory_usage": usage / count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.store_cost", description=__doc__
    )
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    for round_ in range(args.rounds):  # interleaved, so that drift hits every row
        for kind, options in KINDS.items():
            log(f"round {round_ + 1}: {kind}")
            rows[kind].append(measure(args.jobs, args.batch, options))

    def mid(kind: str, field: str) -> float:
        return statistics.median(r[field] for r in rows[kind])

    base = mid("no limits, no owner", "usec")
    print(f"{args.jobs} jobs, claims of {args.batch}, median of {args.rounds} rounds\n")
    print(
        "| handler | Redis commands/job | Redis µs/job | vs plain | "
        "used_memory/finished job (B) | MEMORY USAGE/finished job (B) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for kind in KINDS:
        print(
            f"| {kind} | {mid(kind, 'commands'):.1f} | {mid(kind, 'usec'):.1f} "
            f"| {mid(kind, 'usec') / base:.2f} | {mid(kind, 'used_memory'):.0f} "
            f"| {mid(kind, 'memory_usage'):.0f} |"
        )


if __name__ == "__main__":
    main()
