"""``python -m bench.listing``: a listing page (``GET /jobs``, the dashboard) at
10k, 100k and 1M jobs, on Redis and in memory, and the memory per job.

Each size gets a fresh redis-server of its own (127.0.0.1, no persistence,
stopped by pid at the end). Jobs are written as the store writes a finished job:
its hash through the submit script, then a claim and a completion, in pipelines,
so that the hash and the indexes are exactly what a real run leaves. Reported
per page kind: the Redis time of a page (``INFO commandstats``: microseconds per
script call, server side only) and the client's median wall time per page.

Options: ``--sizes 10000,100000,1000000`` and ``--pages 200``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

from async_endpoints.jobs import ErrorInfo, Job, JobStatus
from async_endpoints.stores import MemoryStore
from async_endpoints.stores.redis import RedisStore
from bench.common import log
from bench.servers import RedisServer

OWNERS = 1000
NAMES = ("Report", "Email", "Resize")


def fill_redis(store: RedisStore, count: int) -> None:
    """``count`` finished jobs (each owner's every third one Failed), written in
    batches through the store's own scripts, pipelined."""
    now = time.time()
    batch = 2000
    for start in range(0, count, batch):
        jobs = [_job(n, now) for n in range(start, min(count, start + batch))]
        for job in jobs:
            store.submit(job, max_queue_size=0, now=now)
        claims = store.claim("bench", limit=len(jobs), lease=600, now=now)
        for claim in claims:
            if hash(claim.job_id) % 3:
                store.complete(claim, None, ttl=86400, now=now)
            else:
                store.fail(
                    claim,
                    ErrorInfo(type="ValueError", message="x"),
                    retry_at=None,
                    ttl=86400,
                    now=now,
                )
        if start and start % 100_000 == 0:
            log(f"  {start} jobs written")


def _job(n: int, now: float) -> Job:
    return Job(
        id=uuid.uuid4(),
        name=NAMES[n % len(NAMES)],
        status=JobStatus.QUEUED,
        max_retries=3,
        created_at=now - 86000 + n / 1000,
        last_updated_at=now,
        owner=f"user-{n % OWNERS}",
    )


KINDS: dict[str, dict[str, Any]] = {
    "every job": {},
    "one status": {"status": JobStatus.FAILED},
    "one owner": {"owner": "user-7"},
    "owner + status": {"owner": "user-7", "status": JobStatus.FAILED},
}


def time_pages(
    store: Any, pages: int, client: Any | None
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for kind, filters in KINDS.items():
        if client is not None:
            client.config_resetstat()
        walls = []
        cursor = None
        for _ in range(pages):
            began = time.perf_counter()
            _, cursor = store.list_page(
                limit=20, cursor=cursor, now=time.time(), **filters
            )
            walls.append(time.perf_counter() - began)
        row = {"wall_ms_p50": statistics.median(walls) * 1000}
        if client is not None:
            stats = client.info("commandstats")
            calls = sum(
                v["calls"] for k, v in stats.items() if k.startswith("cmdstat_evalsha")
            )
            usec = sum(
                v["usec"] for k, v in stats.items() if k.startswith("cmdstat_evalsha")
            )
            multi = sum(v["usec"] for k, v in stats.items() if k == "cmdstat_exec")
            row["redis_ms_per_page"] = (usec + multi) / pages / 1000
            row["script_calls_per_page"] = calls / pages
        out[kind] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.listing", description=__doc__
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--pages", type=int, default=200)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print("| jobs | store | page | Redis ms/page | client ms/page (p50) |")
    print("|---:|---|---|---:|---:|")
    for size in sizes:
        with RedisServer() as server:
            client = server.client()
            store = RedisStore(client, prefix="bench")
            log(f"writing {size} jobs to Redis")
            fill_redis(store, size)
            used = client.info("memory")["used_memory"]
            per_job = (used - 1_000_000) / size  # an empty server uses about 1 MB
            for kind, row in time_pages(store, args.pages, client).items():
                print(
                    f"| {size:,} | Redis | {kind} | {row['redis_ms_per_page']:.3f} "
                    f"| {row['wall_ms_p50']:.2f} |"
                )
            print(
                f"| {size:,} | Redis | memory per finished job, indexes included "
                f"| {per_job:.0f} B | |"
            )
            store.close()
            client.close()
        if size <= 100_000:
            memory = MemoryStore()
            now = time.time()
            for n in range(size):
                memory.submit(_job(n, now), max_queue_size=0, now=now)
            for kind, row in time_pages(memory, min(args.pages, 20), None).items():
                print(f"| {size:,} | memory | {kind} | | {row['wall_ms_p50']:.2f} |")


if __name__ == "__main__":
    main()
