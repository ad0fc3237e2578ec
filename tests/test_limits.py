"""Handler limits as the application sees them (DESIGN, "Concurrency limits and
quotas"), on every store; the multi-process proofs are in tests/integration."""

from __future__ import annotations

import pytest
from flask import Flask
from freezegun import freeze_time

from async_endpoints import AsyncContext, AsyncEndpoints, JobStatus


@pytest.fixture(params=["memory", "fakeredis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_an_hourly_rate_limit_starts_no_more_than_n_in_an_hour(
    app: Flask, ae: AsyncEndpoints
) -> None:
    @ae.post("/charge", name="Charge", rate_limit="3/hour")
    def charge(ctx: AsyncContext) -> str:
        return "charged"

    with freeze_time("2026-12-06 12:00:00") as clock, app.app_context():
        ids = [ae.submit("Charge", {}).id for _ in range(4)]
        assert ae.run_due_jobs() == 3
        clock.tick(3599)
        assert ae.run_due_jobs() == 0  # still within the hour of the first starts
        fourth = ae.get_job(ids[3])
        assert fourth is not None
        assert fourth.status is JobStatus.QUEUED
        clock.tick(2)
        assert ae.run_due_jobs() == 1
        jobs = [ae.get_job(i) for i in ids]
    assert all(j is not None and j.status is JobStatus.COMPLETED for j in jobs)
