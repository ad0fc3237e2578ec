"""Periodic jobs: when a schedule ticks (Flask-free).

A schedule is ``every=`` (ticks at whole multiples of the interval since the
epoch, so every process computes the same ticks) or ``cron=`` (a cron
expression, read by the ``croniter`` library, in the schedule's time zone, UTC
by default). A tick is identified by its instant: the store turns each tick into
one job however many processes see it due (:meth:`JobStore.submit_tick`); the
job's id is random, like every job's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from async_endpoints.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a periodic job ticks.

    :param every: seconds between ticks, or ``None`` with ``cron``.
    :param cron: a cron expression, or ``None`` with ``every``.
    :param tz: the time zone of ``cron``.
    """

    every: float | None
    cron: str | None
    tz: tzinfo

    @classmethod
    def build(
        cls,
        *,
        every: timedelta | float | None,
        cron: str | None,
        tz: str | tzinfo | None,
    ) -> Schedule:
        """Check and build a schedule.

        :raises ConfigurationError: neither or both of ``every`` and ``cron``, a
            non-positive interval, an invalid cron expression or time zone, or
            ``cron`` without the ``croniter`` library.
        """
        if (every is None) == (cron is None):
            raise ConfigurationError(
                "@ae.periodic takes exactly one of every= (a timedelta) or cron= "
                "(e.g. '*/5 * * * *')."
            )
        zone: tzinfo = UTC
        if isinstance(tz, str):
            try:
                zone = ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError):
                raise ConfigurationError(
                    f"tz={tz!r} is not a known time zone."
                ) from None
        elif tz is not None:
            zone = tz
        if every is not None:
            seconds = (
                every.total_seconds() if isinstance(every, timedelta) else float(every)
            )
            if not seconds > 0:
                raise ConfigurationError(f"every= must be positive, not {every!r}.")
            return cls(every=seconds, cron=None, tz=zone)
        assert cron is not None
        croniter = _croniter()
        if not croniter.is_valid(cron):
            raise ConfigurationError(f"cron={cron!r} is not a valid cron expression.")
        schedule = cls(every=None, cron=cron, tz=zone)
        try:  # valid, but may never fire (e.g. February 31st)
            schedule.following(schedule.latest(time.time()))
        except Exception as exc:
            raise ConfigurationError(
                f"cron={cron!r} never fires ({type(exc).__name__}: {exc})."
            ) from None
        return schedule

    def latest(self, now: float) -> float:
        """The latest tick at or before ``now`` (epoch seconds)."""
        if self.every is not None:
            return math.floor(now / self.every) * self.every
        assert self.cron is not None
        # croniter's previous tick is strictly before its start: start just after
        # (on the epoch, so that the repeated hour of a clock turned back keeps
        # its fold).
        start = datetime.fromtimestamp(now + 1e-6, self.tz)
        return float(_croniter()(self.cron, start).get_prev(float))

    def following(self, tick: float) -> float:
        """The first tick after ``tick``."""
        if self.every is not None:
            return (round(tick / self.every) + 1) * self.every
        assert self.cron is not None
        start = datetime.fromtimestamp(tick, self.tz)
        return float(_croniter()(self.cron, start).get_next(float))

    def describe(self) -> str:
        """The rule, for people: ``every 300 s`` or ``cron */5 * * * * (UTC)``."""
        if self.every is not None:
            return f"every {self.every:g} s"
        return f"cron {self.cron} ({self.tz})"


def _croniter() -> Any:
    try:
        from croniter import croniter
    except ImportError:
        raise ConfigurationError(
            "cron= needs the croniter library: pip install 'async-endpoints[cron]'."
        ) from None
    return croniter
