"""RetryPolicy: tenacity's decision, evaluated off-thread from stored data."""

from __future__ import annotations

import pytest
import tenacity

from async_endpoints.errors import ResultError
from async_endpoints.retry import RetryPolicy

NOW = 5000.0


def policy(**overrides: float) -> RetryPolicy:
    options: dict[str, float] = {"max_retries": 3, "base": 2.0, "max_delay": 300.0}
    options.update(overrides)
    return RetryPolicy.exponential(
        max_retries=int(options["max_retries"]),
        base=options["base"],
        max_delay=options["max_delay"],
        jitter=options.get("jitter", 0.0),
    )


@pytest.mark.parametrize(("attempt", "delay"), [(1, 2.0), (2, 4.0), (3, 8.0)])
def test_delay_before_retry_n_is_base_times_two_to_n_minus_one(
    attempt: int, delay: float
) -> None:
    at = policy().next_attempt_at(
        attempt=attempt, error=ValueError(), first_started_at=NOW - 100, now=NOW
    )
    assert at == NOW + delay


def test_gives_up_after_max_retries() -> None:
    assert (
        policy().next_attempt_at(
            attempt=4, error=ValueError(), first_started_at=NOW, now=NOW
        )
        is None
    )


def test_zero_retries_never_retries() -> None:
    p = policy(max_retries=0)
    assert (
        p.next_attempt_at(attempt=1, error=ValueError(), first_started_at=NOW, now=NOW)
        is None
    )


def test_delay_is_capped() -> None:
    p = policy(max_retries=10, max_delay=5)
    at = p.next_attempt_at(attempt=6, error=ValueError(), first_started_at=NOW, now=NOW)
    assert at == NOW + 5


def test_jitter_adds_up_to_the_configured_seconds() -> None:
    p = policy(jitter=1.0)
    delays = {
        p.next_attempt_at(attempt=1, error=ValueError(), first_started_at=NOW, now=NOW)
        for _ in range(50)
    }
    assert all(d is not None and NOW + 2 <= d <= NOW + 3 for d in delays)
    assert len(delays) > 1


def test_result_errors_are_not_retried() -> None:
    at = policy().next_attempt_at(
        attempt=1, error=ResultError("bad"), first_started_at=NOW, now=NOW
    )
    assert at is None


def test_custom_tenacity_strategies_compose() -> None:
    p = RetryPolicy(
        stop=tenacity.stop_after_attempt(5) | tenacity.stop_after_delay(60),
        wait=tenacity.wait_fixed(7),
        retry=tenacity.retry_if_exception_type(OSError),
    )
    assert (
        p.next_attempt_at(attempt=1, error=OSError(), first_started_at=NOW, now=NOW)
        == NOW + 7
    )
    assert (
        p.next_attempt_at(attempt=1, error=KeyError(), first_started_at=NOW, now=NOW)
        is None
    )
    # the job started 61 s ago: stop_after_delay gives up, using wall-clock times
    assert (
        p.next_attempt_at(
            attempt=2, error=OSError(), first_started_at=NOW - 61, now=NOW
        )
        is None
    )


def test_try_again_retries_even_when_the_predicate_says_no() -> None:
    p = RetryPolicy(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_fixed(1),
        retry=tenacity.retry_if_exception_type(OSError),
    )
    at = p.next_attempt_at(
        attempt=1, error=tenacity.TryAgain(), first_started_at=NOW, now=NOW
    )
    assert at == NOW + 1
