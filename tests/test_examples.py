"""The example apps work as their docstrings say."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import wait_until

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def quickstart() -> ModuleType:
    module = load("quickstart")
    yield module
    module.ae.shutdown(grace=0)


def test_quickstart_runs_a_job_to_completion(quickstart: ModuleType) -> None:
    client = quickstart.app.test_client()
    response = client.post("/api/process-data", json={"data": "hello"})
    assert response.status_code == 202
    location = response.headers["Location"]

    def done() -> bool:
        return client.get(location).get_json()["status"] == "Completed"

    wait_until(done, 20, "the example job")
    body = client.get(location).get_json()
    assert body["result"]["processedData"] == "HELLO"
    assert body["progress"] == {"fraction": 1.0, "message": "step 3 of 3"}
    assert client.get("/openapi.json").get_json()["openapi"] == "3.1.0"


def test_advanced_example() -> None:
    module = load("advanced")  # registers its metrics in the global registry, once
    try:
        client = module.app.test_client()
        headers = {"X-User": "alice", "Idempotency-Key": "r-1", "Prefer": "wait=10"}
        began = time.monotonic()
        response = client.post("/reports", json={"pages": 2}, headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert time.monotonic() - began < 10
        body = response.get_json()
        assert body["result"] == {"pages": 2, "owner": "alice"}
        assert response.headers["Link"].endswith('rel="monitor"')
        again = client.post("/reports", json={"pages": 2}, headers=headers)
        assert again.get_json()["id"] == body["id"]
        assert client.get(response.headers["Location"]).status_code == 404  # no owner
        metrics = client.get("/metrics").get_data(as_text=True)
        assert (
            'async_endpoints_jobs_submitted_total{handler="BuildReport"} 1.0' in metrics
        )
    finally:
        module.ae.shutdown(grace=0)
