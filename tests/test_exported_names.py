"""The public names of the package."""

from __future__ import annotations

import async_endpoints


def test_all_is_sorted_and_complete() -> None:
    names = async_endpoints.__all__
    assert names == sorted(names)
    for required in (
        "AsyncEndpoints",
        "AsyncContext",
        "JobStatus",
        "Job",
        "JobStore",
        "MemoryStore",
    ):
        assert required in names
    for name in names:
        assert getattr(async_endpoints, name).__module__.startswith("async_endpoints.")


def test_every_exception_is_exported() -> None:
    from async_endpoints import errors

    for name, value in vars(errors).items():
        if (
            isinstance(value, type)
            and issubclass(value, Exception)
            and value.__module__ == errors.__name__
        ):
            assert name in async_endpoints.__all__


def test_job_status_values_are_the_contract() -> None:
    assert [s.value for s in async_endpoints.JobStatus] == [
        "Queued",
        "Scheduled",
        "InProgress",
        "Completed",
        "Failed",
        "Canceled",
    ]
    assert async_endpoints.JobStatus.IN_PROGRESS == "InProgress"
