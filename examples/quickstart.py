"""The quick-start app: run ``python examples/quickstart.py`` and curl it.

It uses the in-memory store (no Redis needed). Set ASYNC_ENDPOINTS_STORE_URL to a
redis:// URL in the environment to use Redis instead.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, Response, send_file

from async_endpoints import AsyncContext, AsyncEndpoints

app = Flask(__name__)
app.config["ASYNC_ENDPOINTS_STORE_URL"] = os.environ.get(
    "ASYNC_ENDPOINTS_STORE_URL", "memory://"
)
ae = AsyncEndpoints(app)


@dataclass
class DataRequest:
    data: str
    processing_priority: int = 1


@ae.post("/api/process-data", name="ProcessData", request_model=DataRequest)
def process_data(ctx: AsyncContext) -> dict[str, object]:
    """Pretend to work for a moment, reporting progress, then answer."""
    request: DataRequest = ctx.request
    for step in range(1, 4):
        if ctx.cancelled.is_set():
            return {"canceled": True}
        time.sleep(0.5)
        ctx.report_progress(step / 3, f"step {step} of 3")
    return {
        "processedData": request.data.upper(),
        "characterCount": len(request.data),
        "attempt": ctx.attempt,
    }


@ae.post("/api/<tenant>/flaky", name="Flaky", max_retries=2)
def flaky(ctx: AsyncContext) -> dict[str, object]:
    """Fails on its first attempt, to show a retry with backoff."""
    if ctx.attempt == 1:
        raise RuntimeError("first attempts always fail here")
    return {"tenant": ctx.route_params["tenant"], "attempt": ctx.attempt}


# The OpenAPI document of these endpoints and of the job endpoints.
app.get("/openapi.json")(ae.openapi)


@app.get("/")
def follow_page() -> Response:
    """A page that starts a job and follows it live (Server-Sent Events)."""
    return send_file(Path(__file__).with_name("follow.html"))


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "5000"))
    app.run(host="127.0.0.1", port=port, threaded=True)
