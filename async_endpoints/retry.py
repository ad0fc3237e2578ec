"""``RetryPolicy``: when a failed attempt runs again, decided by tenacity.

tenacity's ``stop``/``wait``/``retry`` strategies are pure functions of a
``RetryCallState``. Rather than wrapping a handler in ``Retrying`` (which would
sleep in a pool thread), the manager builds the state of the attempt that just
failed and asks tenacity what to do next; the answer is persisted as the job's
next due time, so a retry survives the process that scheduled it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import tenacity

from async_endpoints.errors import ResultError

if TYPE_CHECKING:
    from tenacity.retry import retry_base
    from tenacity.stop import stop_base
    from tenacity.wait import wait_base


def _retryable(exc: BaseException) -> bool:
    # A result that cannot be serialised fails the same way every time.
    return not isinstance(exc, ResultError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Decides, for a failed attempt, whether and when the job runs again.

    :param stop: a tenacity stop strategy (by default, after ``max_retries + 1``
        attempts).
    :param wait: a tenacity wait strategy: ``base * 2 ** (n - 1)`` seconds before
        retry ``n``, capped, plus up to ``jitter`` random seconds.
    :param retry: a tenacity retry predicate; :class:`ResultError` is not retried.
    """

    stop: stop_base
    wait: wait_base
    retry: retry_base

    @classmethod
    def exponential(
        cls,
        *,
        max_retries: int,
        base: float,
        max_delay: float,
        jitter: float = 0.0,
    ) -> RetryPolicy:
        """The default policy of the configuration keys ``ASYNC_ENDPOINTS_RETRY_*``.

        :param max_retries: retries after the first attempt.
        :param base: the delay before the first retry, in seconds.
        :param max_delay: the cap on any delay, in seconds.
        :param jitter: random extra delay, up to this many seconds.
        """
        wait: wait_base = tenacity.wait_exponential(multiplier=base, max=max_delay)
        if jitter > 0:
            wait = wait + tenacity.wait_random(0, jitter)
        return cls(
            stop=tenacity.stop_after_attempt(max_retries + 1),
            wait=wait,
            retry=tenacity.retry_if_exception(_retryable),
        )

    def next_attempt_at(
        self, *, attempt: int, error: BaseException, first_started_at: float, now: float
    ) -> float | None:
        """When attempt ``attempt + 1`` is due, or ``None`` to give up.

        :param attempt: the number of the attempt that failed (1 for the first).
        :param error: what it raised; ``tenacity.TryAgain`` always retries.
        :param first_started_at: epoch seconds when the job's first attempt began.
        :param now: epoch seconds of the failure.
        """
        retrying = tenacity.Retrying(
            stop=self.stop, wait=self.wait, retry=self.retry, sleep=_no_sleep
        )
        retrying.begin()
        state = tenacity.RetryCallState(retrying, fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        state.set_exception((type(error), error, error.__traceback__))
        # tenacity measures elapsed time on the monotonic clock, which does not
        # survive a process; rebuild it from wall-clock times.
        state.start_time = time.monotonic() - (now - first_started_at)
        state.outcome_timestamp = state.start_time + (now - first_started_at)
        try:
            action = retrying.iter(state)
        except BaseException:
            return None
        if isinstance(action, tenacity.DoSleep):
            return now + float(action)
        return None


def _no_sleep(seconds: float) -> None:  # pragma: no cover - never called
    raise AssertionError("RetryPolicy never sleeps")
