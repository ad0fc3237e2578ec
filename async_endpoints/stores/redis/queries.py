"""The operator half of ``RedisStore``: listings, purges, stats, the worker
registry."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import (
    Any,
)

import redis
import redis.backoff
import redis.cluster
import redis.connection
import redis.exceptions
import redis.retry
import redis.sentinel

from async_endpoints.jobs import (
    Job,
    JobStatus,
    StoreStats,
)
from async_endpoints.stores.redis.clock import _Clock
from async_endpoints.stores.redis.codec import _decode_job, _int, _num, _plain, _str


class _Queries(_Clock):
    """Reads and maintenance over every job of the prefix."""

    def _job_ids(self) -> Iterator[str]:
        """Every job id of the prefix, by ``SCAN`` (on a Cluster, of the one node
        that holds the prefix's slot)."""
        client = self._redis()
        pattern = f"{self._keys.job_prefix}*"
        start = len(self._keys.job_prefix)
        found: Iterator[object]
        if isinstance(client, redis.cluster.RedisCluster):
            cluster: Any = client  # redis-py leaves get_node_from_key unannotated
            node = cluster.get_node_from_key(self._keys.ready)
            found = client.scan_iter(match=pattern, count=1000, target_nodes=node)
        else:
            found = client.scan_iter(match=pattern, count=1000)
        for key in found:
            yield _str(_plain(key))[start:]

    def _all_jobs(self) -> list[Job]:
        jobs: list[Job] = []
        with self._translate_errors():
            ids = list(self._job_ids())
            client = self._redis()
            for chunk in range(0, len(ids), 500):
                batch = ids[chunk : chunk + 500]
                pipe = client.pipeline(transaction=False)
                for job_id in batch:
                    pipe.hgetall(self._keys.job(job_id))
                replies: list[object] = pipe.execute()
                for job_id, raw in zip(batch, replies, strict=True):
                    if isinstance(raw, Mapping) and raw:
                        flat = _plain([item for pair in raw.items() for item in pair])
                        jobs.append(_decode_job(job_id, flat))
        return jobs

    def list_jobs(
        self, *, status: JobStatus | None, offset: int, limit: int, now: float
    ) -> list[Job]:
        """Jobs (of one status, or all), newest first, paged.

        Reads every job of the prefix (``SCAN``): an operator's tool, O(jobs).

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        jobs = [j for j in self._all_jobs() if status in (None, j.status)]
        jobs.sort(key=lambda j: (j.created_at, str(j.id)), reverse=True)
        return jobs[offset : offset + limit]

    def purge(self, *, status: JobStatus, older_than: float, now: float) -> int:
        """Delete finished jobs of ``status`` that ended before ``older_than``.

        Candidates come from ``SCAN``; each is checked again atomically by
        ``purge.lua`` before it is deleted.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        if not status.is_finished:
            raise ValueError(f"only finished jobs can be purged, not {status.value}")
        with self._translate_errors():
            ids = list(self._job_ids())
        deleted = 0
        for chunk in range(0, len(ids), 200):
            keys = [self._keys.job(i) for i in ids[chunk : chunk + 200]]
            deleted += _int(self._call("purge", keys, [status.value, _num(older_than)]))
        return deleted

    def register_worker(self, owner: str, *, ttl: float, now: float) -> None:
        """Record that worker ``owner`` is alive; forgotten ``ttl`` s after ``now``.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        self._call(
            "register_worker",
            [self._keys.workers],
            [owner, _num(self._server(now)), _num(ttl)],
        )

    def unregister_worker(self, owner: str) -> None:
        """Forget worker ``owner`` at once (it stopped).

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        with self._translate_errors():
            self._redis().hdel(self._keys.workers, owner)

    def stats(self, *, now: float) -> StoreStats:
        """Counts per status (by ``SCAN``), the oldest waiting job, live workers.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        counts = dict.fromkeys(JobStatus, 0)
        for job in self._all_jobs():
            counts[job.status] += 1
        with self._translate_errors():
            client = self._redis()
            first: object = client.zrange(self._keys.ready, 0, 0, withscores=True)
            workers: object = client.hgetall(self._keys.workers)
        oldest = None
        if isinstance(first, list) and first:
            oldest = self._local(float(first[0][1]))
        alive: dict[str, float] = {}
        if isinstance(workers, Mapping):
            for name, seen in workers.items():
                alive[_str(_plain(name))] = self._local(float(_str(_plain(seen))))
        return StoreStats(counts=counts, oldest_waiting_at=oldest, workers=alive)

    def queue_size(self) -> int:
        """How many jobs wait (Queued + Scheduled).

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        with self._translate_errors():
            return int(self._redis().zcard(self._keys.ready))
