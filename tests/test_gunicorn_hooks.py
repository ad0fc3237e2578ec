"""The gunicorn hooks, called with stand-in server and worker objects."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask

from async_endpoints import AsyncContext, AsyncEndpoints, JobStatus
from async_endpoints import gunicorn as hooks
from tests.conftest import wait_until


@dataclass
class FakeWorker:
    pid: int


@dataclass
class FakeConfig:
    workers: int


@dataclass
class FakeServer:
    cfg: FakeConfig


@pytest.fixture(autouse=True)
def _unmark(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hooks, "_marked", None)
    monkeypatch.setattr(hooks, "_several_workers", False)


def live_app() -> tuple[Flask, AsyncEndpoints]:
    app = Flask(__name__)
    app.config["ASYNC_ENDPOINTS_SHUTDOWN_GRACE_SECONDS"] = 0.1
    ae = AsyncEndpoints(app)

    @ae.post("/n", name="N")
    def n(ctx: AsyncContext) -> str:
        return "ran"

    return app, ae


def test_post_fork_with_preload_starts_existing_workers() -> None:
    app, ae = live_app()
    with app.app_context():
        job = ae._state().manager.submit("N")
        assert ae._state().worker is None  # init_app started nothing
    hooks.post_fork(object(), FakeWorker(pid=os.getpid()))
    try:
        with app.app_context():
            assert ae._state().worker is not None
            wait_until(
                lambda: ae.get_job(job.id).status is JobStatus.COMPLETED,  # type: ignore[union-attr]
                10,
                "a job run without any HTTP request",
            )
    finally:
        hooks.worker_exit(object(), FakeWorker(pid=os.getpid()))
    with app.app_context():
        assert ae._state().worker is None


def test_post_fork_without_preload_makes_init_app_start_the_worker() -> None:
    hooks.post_fork(object(), FakeWorker(pid=os.getpid()))
    app, ae = live_app()  # imported after the fork, as gunicorn does without preload
    try:
        with app.app_context():
            assert ae._state().worker is not None
    finally:
        hooks.worker_exit(object(), FakeWorker(pid=os.getpid()))


def test_worker_exit_in_the_master_does_nothing() -> None:
    app, ae = live_app()
    hooks.post_fork(object(), FakeWorker(pid=os.getpid()))
    try:
        hooks.worker_exit(object(), FakeWorker(pid=os.getpid() + 100000))
        with app.app_context():
            worker = ae._state().worker
            assert worker is not None
            assert worker.running
    finally:
        hooks.worker_exit(object(), FakeWorker(pid=os.getpid()))


def test_memory_store_under_several_workers_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _app, _ae = live_app()  # kept alive: the hooks find it through a WeakSet
    try:
        with caplog.at_level("WARNING", logger="async_endpoints.gunicorn"):
            hooks.post_fork(FakeServer(FakeConfig(workers=2)), FakeWorker(os.getpid()))
        assert "memory://" in caplog.text
        caplog.clear()
        with caplog.at_level("WARNING", logger="async_endpoints.gunicorn"):
            hooks.post_fork(FakeServer(FakeConfig(workers=1)), FakeWorker(os.getpid()))
        assert "memory://" not in caplog.text
    finally:
        hooks.worker_exit(object(), FakeWorker(pid=os.getpid()))


def test_child_exit_survives_an_unreachable_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure inside the hook is logged and leaves the jobs to the sweeper;
    the hook itself returns normally (gunicorn's handling goes on)."""
    import json
    import os
    import tempfile

    from async_endpoints import gunicorn
    from tests.conftest import free_port

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    folder = gunicorn._registry(os.getpid(), os.getuid())
    folder.mkdir(parents=True)
    dead = 999_999
    (folder / f"{dead}.json").write_text(
        json.dumps(
            [
                {
                    "url": f"redis://127.0.0.1:{free_port()}/0",
                    "prefix": "gone",
                    "owner": "host:999999:abcd",
                    "config": {},
                }
            ]
        )
    )

    class Dead:
        pid = dead

    with caplog.at_level(logging.WARNING):
        gunicorn.child_exit(object(), Dead())
    assert "sweeper will recover them" in caplog.text
    assert not (folder / f"{dead}.json").exists()
    gunicorn.child_exit(object(), Dead())  # nothing registered: nothing done


def test_child_exit_trusts_no_file_that_others_may_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import os
    import tempfile

    from async_endpoints import gunicorn

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    folder = gunicorn._registry(os.getpid(), os.getuid())
    folder.mkdir(parents=True)
    planted = folder / "4242.json"
    planted.write_text(
        json.dumps(
            [
                {
                    "url": "redis://127.0.0.1:1/0",
                    "prefix": "x",
                    "owner": "o",
                    "config": {},
                }
            ]
        )
    )
    planted.chmod(0o666)  # world-writable: anybody could have written it

    class Dead:
        pid = 4242

    with caplog.at_level(logging.WARNING):
        gunicorn.child_exit(object(), Dead())
    assert planted.exists()  # ignored, not read
    assert "recovering the jobs" not in caplog.text
