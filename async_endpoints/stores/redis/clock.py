"""Redis's clock as each process sees it: the measured offset that puts the
instants deciding between processes (due scores, lease ends, heartbeats) on Redis's
clock, and the start-up check of its eviction policy."""

from __future__ import annotations

import logging
import time

from async_endpoints.errors import StoreError
from async_endpoints.stores.redis.client import _Connection

logger = logging.getLogger(__name__)

_CLOCK_READINGS = 3
"""How many times ``sync_clock`` reads Redis's clock (it keeps the quickest)."""


class _Clock(_Connection):
    """Instants on Redis's clock, from this process's."""

    # -- Redis's clock ---------------------------------------------------------------

    def sync_clock(self) -> float:
        """Measure how far Redis's clock is ahead of this process's, and use it.

        Instants that decide between processes (the due scores of waiting jobs,
        lease ends, worker heartbeats) are kept on Redis's clock: a caller's
        ``now`` plus this offset. So a process whose clock is off still takes
        no live lease and delays no job; within one process the offset is a
        constant, so its own clock (freezegun included) drives its schedules.
        Measured on first use; a running worker measures again now and then.

        Several readings are taken and the quickest round trip's is kept: its
        midpoint is the closest to when Redis read its clock, so processes that
        share a Redis agree to a fraction of a millisecond (one whose offset were
        off would see another's new jobs as not yet due).

        :returns: the offset, seconds, rounded to 2**-20 s (so that adding it to
            an epoch time and taking it away again gives the same float).
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        best: tuple[float, float, float] | None = None  # round trip, offsets
        for _ in range(_CLOCK_READINGS):
            before, real_before = time.time(), _wall()
            reply = self._call("clock", [self._keys.wake], [])
            after, real_after = time.time(), _wall()
            if not isinstance(reply, list) or len(reply) != 2:
                raise StoreError(
                    f"Expected TIME's two numbers from Redis, got {reply!r}"
                )
            server = int(str(reply[0])) + int(str(reply[1])) / 1e6
            reading = (
                real_after - real_before,
                server - (before + after) / 2,
                server - (real_before + real_after) / 2,
            )
            if best is None or reading[0] < best[0]:
                best = reading
        assert best is not None
        offset = round(best[1] * 2**20) / 2**20
        self._offset = offset
        self._wall_offset = best[2]
        return offset

    def _sent_at(self) -> float:
        """This moment on Redis's clock, from the wall clock that tests do not
        freeze: a script compares it with ``TIME`` to see how late it runs."""
        if self._offset is None:
            self.sync_clock()
        return _wall() + self._wall_offset

    def _server(self, now: float) -> float:
        """``now`` (the caller's clock) as an instant on Redis's clock."""
        offset = self._offset
        if offset is None:
            offset = self.sync_clock()
            self._warn_if_evicting()
        return now + offset

    def _warn_if_evicting(self) -> None:
        """Say so, once, when Redis may evict keys: jobs would vanish silently.

        Servers that refuse ``CONFIG GET`` (managed ones often do) are not asked
        twice and get no warning.
        """
        try:
            with self._translate_errors():
                reply: object = self._redis().config_get("maxmemory-policy")
        except StoreError as exc:
            logger.debug("could not read Redis's maxmemory-policy: %s", exc)
            return
        policies = set(_policies(reply))
        evicting = sorted(p for p in policies if p != "noeviction")
        if evicting:
            logger.warning(
                "Redis at %s has maxmemory-policy %s: when it reaches maxmemory it "
                "evicts keys, and jobs (waiting, running or finished) vanish "
                "without a trace. Set maxmemory-policy noeviction for the "
                "database async-endpoints uses.",
                self._target,
                ", ".join(evicting),
            )

    def _local(self, instant: float) -> float:
        """An instant on Redis's clock as one on this process's clock."""
        offset = self._offset
        if offset is None:
            offset = self.sync_clock()
        return instant - offset


def _policies(reply: object) -> list[str]:
    """The maxmemory-policy values in a CONFIG GET reply: a mapping, or one
    mapping per node from a Cluster client; bytes or str."""

    def text(value: object) -> object:
        return value.decode() if isinstance(value, bytes) else value

    found: list[str] = []
    if isinstance(reply, dict):
        for key, value in reply.items():
            value = text(value)
            if text(key) == "maxmemory-policy" and isinstance(value, str):
                found.append(value)
            elif isinstance(value, dict):
                found += _policies(value)
    return found


def _wall() -> float:
    """The wall clock, read past freezegun (which fakes ``time.time``, not
    ``clock_gettime``); libfaketime shifts both, and the offset covers that."""
    return time.clock_gettime(time.CLOCK_REALTIME)
