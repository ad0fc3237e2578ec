"""The operator half of ``RedisStore``: listings, purges, stats, the worker
registry."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import (
    Any,
    Final,
)

from async_endpoints.jobs import (
    Job,
    JobStatus,
    StoreStats,
)
from async_endpoints.stores.cursors import make_cursor, parse_cursor
from async_endpoints.stores.redis.clock import _Clock
from async_endpoints.stores.redis.codec import (
    _decode_job,
    _int,
    _list,
    _num,
    _plain,
    _str,
)
from async_endpoints.stores.redis.keys import _ScriptName

_PAGE_BUDGET: Final = 20
"""Index entries a filtered page may look at, per job it returns: a page of
rare matches comes back shorter, with a cursor to go on."""
_PRUNE_ROUNDS: Final = 10
"""Rounds of one pruning at most (each looks at the oldest entries again)."""
_MINUTES_KEPT: Final = 24 * 60
"""Finished-per-minute counts older than this many minutes are dropped."""


class _Queries(_Clock):
    """Reads and maintenance over every job of the prefix."""

    def _finished_names(self) -> list[str]:
        """The handlers that have (or had) finished jobs: each has its own
        index per finished status."""
        with self._translate_errors():
            raw: object = self._redis().smembers(self._keys.names)
        members = raw if isinstance(raw, (set, list)) else ()
        return sorted(_str(_plain(n)) for n in members)

    def _indexes(self, status: JobStatus | None, name: str | None) -> list[str]:
        """The indexes that hold every job of ``status`` and handler ``name``
        (either may be ``None``: any), running jobs aside when ``name`` is
        ``None`` (they have no status index: see :meth:`_running`)."""
        statuses = [status] if status is not None else list(JobStatus)
        live = [s for s in statuses if not s.is_finished]
        if name is None:
            live = [s for s in live if s is not JobStatus.IN_PROGRESS]
        ended = [s for s in statuses if s.is_finished]
        indexes: list[str] = []
        if name is not None:
            if live:  # the handler's index of jobs not finished, filtered
                indexes.append(self._keys.name_index(name))
            names = [name]
        else:
            indexes += [self._keys.status_index(s.value) for s in live]
            names = self._finished_names() if ended else []
        indexes += [self._keys.status_index(s.value, n) for s in ended for n in names]
        return indexes

    def list_page(
        self,
        *,
        status: JobStatus | None = None,
        name: str | None = None,
        owner: str | None = None,
        limit: int,
        cursor: str | None = None,
        now: float,
    ) -> tuple[list[Job], str | None]:
        """One page of jobs, newest first, from the indexes (see
        :meth:`JobStore.list_page`): O(log n + limit) Redis work, no ``SCAN``.

        :raises InvalidParameterError: the cursor is not one this store made.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        parsed = parse_cursor(cursor)
        after = (repr(parsed[0]), parsed[1]) if parsed else None
        running = False
        if owner is not None:
            indexes = [self._keys.owner_index(owner)]
        else:  # merged, when there are several
            indexes = self._indexes(status, name)
            running = name is None and status in (None, JobStatus.IN_PROGRESS)
        args = [
            after[0] if after else "+inf",
            after[1] if after else "",
            str(limit),
            status.value if status is not None else "",
            name or "",
            owner or "",
            str(limit * _PAGE_BUDGET),
        ]
        with self._translate_errors():
            client = self._redis()
        calls: list[tuple[_ScriptName, list[str], list[str]]] = []
        if indexes:  # one call merges them all: only the page's hashes are read
            calls.append(("page", [self._keys.job_prefix, *indexes], args))
        if running:  # in the same MULTI: each job seen once, as it was then
            calls.append(("running", [self._keys.claimed, self._keys.job_prefix], []))
        if not calls:
            return [], None
        if len(calls) == 1:
            replies = [self._call(*calls[0])]
        else:
            replies = self._pipeline(client, calls, atomic=True)
        found: list[tuple[float, str, Job]] = []
        if running:
            found = self._running(replies.pop(), parsed)
        more: list[tuple[float, str]] = []
        for raw in replies:
            reply = _list(_plain(raw))
            if _int(reply[0]) == 1:
                more.append((float(_str(reply[1])), _str(reply[2])))
            for i in range(3, len(reply), 3):
                job_id = _str(reply[i + 1])
                try:
                    job = _decode_job(job_id, reply[i + 2])
                except (ValueError, TypeError, KeyError, IndexError):
                    continue  # unreadable: the claim that meets it fails it
                found.append((float(_str(reply[i])), job_id, job))
        return self._cut(found, more, limit)

    @staticmethod
    def _cut(
        found: list[tuple[float, str, Job]], more: list[tuple[float, str]], limit: int
    ) -> tuple[list[Job], str | None]:
        """The page among ``found`` (creation time, id, job), newest first, and
        the cursor after it; ``more``: where each index with more stopped."""
        found.sort(key=lambda item: (item[0], item[1]), reverse=True)
        # The next page goes on below the highest point not yet seen through:
        # the last job of a page cut short, and where each index with more
        # stopped looking. What lies below that point comes on the next page.
        marks = list(more)
        if len(found) > limit:
            marks.append((found[limit - 1][0], found[limit - 1][1]))
        if not marks:
            return [job for _, _, job in found], None
        mark = max(marks)
        page = [job for score, job_id, job in found[:limit] if (score, job_id) >= mark]
        return page, make_cursor(*mark)

    @staticmethod
    def _running(
        raw: object, after: tuple[float, str] | None
    ) -> list[tuple[float, str, Job]]:
        """The running jobs of ``running.lua``'s reply (as many as the deployment
        has handler threads, whatever the number of jobs), after the cursor."""
        reply = _list(_plain(raw))
        running: list[tuple[float, str, Job]] = []
        for i in range(0, len(reply), 2):
            job_id = _str(reply[i])
            try:
                job = _decode_job(job_id, reply[i + 1])
            except (ValueError, TypeError, KeyError, IndexError):
                continue  # unreadable: the claim that meets it fails it
            if job.status is not JobStatus.IN_PROGRESS:
                continue
            if after is None or (job.created_at, job_id) < after:
                running.append((job.created_at, job_id, job))
        return running

    def list_jobs(
        self, *, status: JobStatus | None, offset: int, limit: int, now: float
    ) -> list[Job]:
        """Jobs (of one status, or all), newest first, paged by offset (the CLI's
        listing), read page by page from the indexes.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        jobs: list[Job] = []
        cursor: str | None = None
        while len(jobs) < offset + limit:
            page, cursor = self.list_page(
                status=status, limit=100, cursor=cursor, now=now
            )
            jobs += page
            if cursor is None:
                break
        return jobs[offset : offset + limit]

    def idempotent_job(self, key: str, *, now: float) -> Job | None:
        """The live job an idempotency key (as the manager scopes it) made.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        with self._translate_errors():
            raw: object = self._redis().get(self._keys.idem(key))
        record = _plain(raw)
        if record is None:
            return None
        return self.get(uuid.UUID(_str(record)[:36]), now=now)

    def purge(self, *, status: JobStatus, older_than: float, now: float) -> int:
        """Delete finished jobs of ``status`` that ended before ``older_than``.

        Candidates come from the status's index, 500 at a time; ``purge.lua``
        checks each again atomically before it deletes it with its entries.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        if not status.is_finished:
            raise ValueError(f"only finished jobs can be purged, not {status.value}")
        deleted = 0
        for index in self._indexes(status, None):
            deleted += self._purge_index(index, status, older_than)
        return deleted

    def _purge_index(self, index: str, status: JobStatus, older_than: float) -> int:
        keys = [index, self._keys.name_index(""), self._keys.owner_index("")]
        keys.append(self._keys.job_prefix)
        deleted = 0
        start = 0
        while True:
            with self._translate_errors():
                raw: object = self._redis().zrange(index, start, start + 499)
            ids = [_str(_plain(i)) for i in _list(_plain(raw))]
            if not ids:
                return deleted
            reply = _list(
                self._call("purge", keys, [status.value, _num(older_than), *ids])
            )
            gone, dropped = _int(reply[0]), _int(reply[1])
            deleted += gone
            # Entries removed by the script (deleted jobs', and those of jobs
            # already expired) shift the rest down: go on where the survivors end.
            with self._translate_errors():
                left: object = self._redis().zcard(index)
            start = min(start + len(ids) - gone - dropped, _int(_plain(left)))
            if len(ids) < 500:
                return deleted

    def limit_usage(
        self, windows: dict[str, float], *, now: float
    ) -> dict[str, tuple[int, int]]:
        """Running counts and recent starts of limited handlers (see
        :meth:`JobStore.limit_usage`).

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        names = list(windows)
        server = self._server(now)
        with self._translate_errors():
            pipe = self._redis().pipeline(transaction=False)
            for name in names:
                pipe.hget(self._keys.running, name)
                pipe.zcount(
                    self._keys.rate_prefix + name,
                    f"({_num(server - windows[name])}",
                    "+inf",
                )
            replies: list[object] = pipe.execute()
        usage: dict[str, tuple[int, int]] = {}
        for i, name in enumerate(names):
            running = _plain(replies[2 * i])
            started = _int(_plain(replies[2 * i + 1]))
            usage[name] = (
                max(0, int(_str(running))) if running is not None else 0,
                started if windows[name] else 0,
            )
        return usage

    def handler_counts(self, names: Sequence[str], *, now: float) -> dict[str, int]:
        """How many jobs each handler has: the sizes of its indexes (see
        :meth:`JobStore.handler_counts`).

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        per_name = [self._indexes(None, name) for name in names]
        with self._translate_errors():
            pipe = self._redis().pipeline(transaction=False)
            for indexes in per_name:
                for index in indexes:
                    pipe.zcard(index)
            replies = iter(pipe.execute())
        return {
            name: sum(_int(_plain(next(replies))) for _ in indexes)
            for name, indexes in zip(names, per_name, strict=True)
        }

    def prune_indexes(
        self, names: Sequence[str], *, now: float, batch: int = 500
    ) -> int:
        """Drop the index entries of jobs that are gone, oldest first: every
        status index, the handlers' in ``names``, and a few owners' (see
        ``prune.lua``); forget finished-per-minute counts older than a day.

        :returns: how many entries were dropped.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        with self._translate_errors():
            client = self._redis()
            owners: object = client.srandmember(self._keys.owners, 10)
            minutes: object = client.hkeys(self._keys.finished)
        known = sorted(set(names) | set(self._finished_names()))
        indexes = list(  # the live ones once
            dict.fromkeys(
                self._keys.status_index(s.value, n)
                for s in JobStatus
                if s is not JobStatus.IN_PROGRESS
                for n in known
            )
        )
        indexes += [self._keys.name_index(n) for n in known]
        owner_keys = [_str(_plain(k)) for k in _list(_plain(owners))]
        indexes += owner_keys
        self._migrate(client)
        dropped = 0
        for _ in range(_PRUNE_ROUNDS):  # many may have expired since the last time
            gone = _int(
                self._call("prune", [self._keys.job_prefix, *indexes], [str(batch)])
            )
            dropped += gone
            if gone == 0:
                break
        # An owner with no job left is forgotten; so is a handler no longer
        # served whose jobs are all gone (a job that ends adds its name again).
        # One round trip asks about them all.
        unserved = sorted(set(known) - set(names))
        ended = [s for s in JobStatus if s.is_finished]
        with self._translate_errors():
            pipe = client.pipeline(transaction=False)
            for key in owner_keys:
                pipe.exists(key)
            for name in unserved:
                pipe.exists(
                    self._keys.name_index(name),
                    *(self._keys.status_index(s.value, name) for s in ended),
                )
            found = [_int(_plain(n)) for n in pipe.execute()]
            split = len(owner_keys)
            owners_gone = [
                k for k, n in zip(owner_keys, found[:split], strict=True) if not n
            ]
            names_gone = [
                name for name, n in zip(unserved, found[split:], strict=True) if not n
            ]
            if owners_gone:
                client.srem(self._keys.owners, *owners_gone)
            if names_gone:
                client.srem(self._keys.names, *names_gone)
            old = [
                m
                for m in (_str(_plain(m)) for m in _list(_plain(minutes)))
                if int(m) < now // 60 - _MINUTES_KEPT
            ]
            if old:
                client.hdel(self._keys.finished, *old)
        return dropped

    def _migrate(self, client: object) -> None:
        """Bring indexes of the older layout (one per status, for every handler)
        to this one, a few batches per sweep: finished jobs move to their
        handler's index of their status; the running jobs' index goes (the
        leases' zset lists them)."""
        plain: Any = client
        older = {s: self._keys.status_prefix + s.value for s in JobStatus}
        del older[JobStatus.QUEUED], older[JobStatus.SCHEDULED]  # the same now
        with self._translate_errors():
            if not plain.exists(*older.values()):
                return  # nothing of the older layout (the usual case)
            plain.delete(older.pop(JobStatus.IN_PROGRESS))
        for status in older:
            keys = [
                self._keys.status_prefix + status.value,
                self._keys.status_prefix,
                self._keys.name_prefix,
                self._keys.names,
                self._keys.job_prefix,
            ]
            for _ in range(_PRUNE_ROUNDS):
                taken = _int(self._call("migrate", keys, [status.value, "500"]))
                if taken < 500:
                    break

    def finished_per_minute(self, *, now: float, minutes: int = 60) -> dict[int, int]:
        """How many jobs ended in each of the last ``minutes`` minutes (epoch
        minute -> count), as the end scripts counted them.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        this_minute = int(now // 60)
        fields = [str(m) for m in range(this_minute - minutes + 1, this_minute + 1)]
        with self._translate_errors():
            counts: object = self._redis().hmget(self._keys.finished, fields)
        values = _list(_plain(counts))
        return {
            int(f): int(_str(v)) if v is not None else 0
            for f, v in zip(fields, values, strict=True)
        }

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
        """Counts per status (the indexes' sizes), the oldest waiting job, the
        live workers.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        names = self._finished_names()
        per_status = {
            s: [self._keys.status_index(s.value, n) for n in names]
            if s.is_finished
            else [self._keys.claimed]
            if s is JobStatus.IN_PROGRESS
            else [self._keys.status_index(s.value)]
            for s in JobStatus
        }
        with self._translate_errors():
            pipe = self._redis().pipeline(transaction=False)
            for indexes in per_status.values():
                for index in indexes:
                    pipe.zcard(index)
            pipe.zrange(
                self._keys.status_index(JobStatus.QUEUED.value), 0, 0, withscores=True
            )
            pipe.hgetall(self._keys.workers)
            replies: list[object] = pipe.execute()
        sizes = iter(replies)
        counts = {
            status: sum(_int(_plain(next(sizes))) for _ in indexes)
            for status, indexes in per_status.items()
        }
        first, workers = replies[-2], replies[-1]
        oldest = None
        if isinstance(first, list) and first:
            oldest = float(first[0][1])  # field c: the caller's clock
        alive: dict[str, float] = {}
        if isinstance(workers, Mapping):
            for name, seen in workers.items():
                alive[_str(_plain(name))] = self._local(float(_str(_plain(seen))))
        return StoreStats(counts=counts, oldest_waiting_at=oldest, workers=alive)

    def queue_size(self) -> int:
        """How many jobs wait (Queued + Scheduled, from their indexes: parked
        jobs of a limited handler count too).

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        with self._translate_errors():
            pipe = self._redis().pipeline(transaction=False)
            pipe.zcard(self._keys.status_index(JobStatus.QUEUED.value))
            pipe.zcard(self._keys.status_index(JobStatus.SCHEDULED.value))
            queued, scheduled = pipe.execute()
        return int(queued) + int(scheduled)
