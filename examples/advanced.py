"""The conveniences around the core, in one app.

    python examples/advanced.py          # http://127.0.0.1:5001, in-memory store

Try:
    curl -si -X POST localhost:5001/reports -H 'X-User: alice' \\
         -H 'Idempotency-Key: r-1' -H 'Prefer: wait=5' \\
         -H 'Content-Type: application/json' -d '{"pages": 3}'
    curl -s localhost:5001/metrics | grep async_endpoints

With a shared store (ASYNC_ENDPOINTS_STORE_URL=redis://... in the environment of both
processes), the CLI sees the server's jobs too:
    flask --app examples/advanced.py async-endpoints stats
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from flask import Flask, Response, request
from prometheus_client import make_wsgi_app
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from async_endpoints import AsyncContext, AsyncEndpoints, ErrorInfo, Job
from async_endpoints.log import JobLogFilter
from async_endpoints.metrics import PrometheusMetrics
from async_endpoints.signals import job_failed

app = Flask(__name__)
app.config["ASYNC_ENDPOINTS_STORE_URL"] = os.environ.get(
    "ASYNC_ENDPOINTS_STORE_URL", "memory://"
)
ae = AsyncEndpoints(app)

# Log records of a job's run carry its id and name.
handler = logging.StreamHandler()
handler.addFilter(JobLogFilter())
handler.setFormatter(
    logging.Formatter("%(levelname)s [%(job_name)s %(job_id)s] %(message)s")
)
logging.getLogger("reports").addHandler(handler)
logging.getLogger("reports").setLevel(logging.INFO)
log = logging.getLogger("reports")


@ae.job_owner
def owner() -> str | None:
    """Jobs belong to the caller; in a real app, your authenticated user's id."""
    return request.headers.get("X-User")


@ae.post("/reports", name="BuildReport", max_retries=1)
def build_report(ctx: AsyncContext) -> dict[str, Any]:
    """Build a report page by page, reporting progress."""
    pages = int(ctx.request.get("pages", 1))
    for page in range(1, pages + 1):
        if ctx.cancelled.is_set():
            raise RuntimeError("canceled")
        time.sleep(0.2)
        ctx.report_progress(page / pages, f"page {page} of {pages}")
        log.info("rendered page %d", page)
    return {"pages": pages, "owner": ctx.headers.get("x-user")}


@ae.submitted_response
def link_header(job: Job, response: Response) -> Response:
    """Point clients at the status resource with a Link header too."""
    response.headers["Link"] = f'<{response.headers["Location"]}>; rel="monitor"'
    return response


@job_failed.connect_via(app)
def on_failure(sender: Flask, job: Job, error: ErrorInfo, **extra: Any) -> None:
    sender.logger.error(
        "job %s (%s) failed for good: %s", job.id, job.name, error.message
    )


PrometheusMetrics(app)
app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, {"/metrics": make_wsgi_app()}
)
app.get("/openapi.json")(ae.openapi)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5001")), threaded=True)
