"""In-process cost of one request and of one job, in CPU microseconds.

``python -m bench.micro`` calls each app's WSGI callable directly (no server, no
sockets to the client) from one thread and reports the CPU time of that thread per
request (``time.thread_time``), which machine sharing moves far less than
requests/s. Then it takes async-endpoints apart: the stages of the submit path,
the worker side per job (claim one, run it, complete it: what the dispatcher and a
handler thread do), and a raw redis-py round trip for scale. ``--profile`` adds
cProfile's view of the submit path. A diagnostic for the findings in
``bench/README.md`` (it reaches into internals, which may move); not part of
``python -m bench``. ``pyinstrument -m bench.micro`` works too.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.test import EnvironBuilder

from bench.apps import create_app
from bench.common import PAYLOAD
from bench.servers import RedisServer
from bench.systems import PREFIX

if TYPE_CHECKING:
    from flask import Flask

HEADERS = {"User-Agent": "wrk/4.1.0", "Accept": "*/*"}


def _caller(app: Flask, path: str = "/submit") -> Callable[[], int]:
    builder = EnvironBuilder(
        path=path,
        method="POST",
        json=PAYLOAD,
        headers=list(HEADERS.items()),
        base_url="http://127.0.0.1:8000",
    )
    environ = builder.get_environ()
    body = builder.input_stream.read() if builder.input_stream else b""
    status: list[str] = []

    def start_response(code: str, headers: Any, exc_info: Any = None) -> None:
        status.append(code)

    def call() -> int:
        env = dict(environ)
        env["wsgi.input"] = io.BytesIO(body)
        chunks: Iterable[bytes] = app(env, start_response)  # type: ignore[arg-type]
        for _ in chunks:
            pass
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        return int(status.pop().split()[0])

    return call


def cpu_per_call(call: Callable[[], object], n: int) -> float:
    """CPU µs of this thread per call of ``call``, after a warm-up of 200 calls."""
    for _ in range(200):
        call()
    start = time.thread_time()
    for _ in range(n):
        call()
    return (time.thread_time() - start) / n * 1e6


def _row(label: str, cpu: float, redis_cpu: float | None = None) -> None:
    extra = "" if redis_cpu is None else f"   (redis-server {redis_cpu:5.0f})"
    print(f"  {label:50s} {cpu:7.0f}{extra}")


def _redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main() -> None:
    """Command line: print per-request, per-stage and per-job costs."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    n = args.requests
    with RedisServer() as server:
        os.environ["BENCH_REDIS_URL"] = server.url(1)
        os.environ["BENCH_PREFIX"] = PREFIX
        admin = server.client()
        print("CPU µs per request, WSGI callable called in-process:")
        apps = {
            "ceiling": create_app("ceiling"),
            "ours-memory (no worker)": create_app("ours-memory", start_worker=False),
            "ours-redis-enqueue": create_app("ours-redis-enqueue"),
            "rq": create_app("rq"),
            "celery": create_app("celery"),
        }
        for label, app in apps.items():
            call = _caller(app)
            if call() != 202:
                raise SystemExit(f"{label}: POST did not answer 202")
            before = _redis_cpu(admin)
            cpu = cpu_per_call(call, n)
            spent = (_redis_cpu(admin) - before) / (n + 200) * 1e6
            _row(label, cpu, spent)
        _stages(server, n)
        _worker_side(server, n, admin)
        if args.profile:
            call = _caller(apps["ours-redis-enqueue"])
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(n):
                call()
            profile.disable()
            stats = pstats.Stats(profile)
            stats.sort_stats("cumulative").print_stats(r"async_endpoints|json|uuid", 30)
        admin.close()


def _stages(server: RedisServer, n: int) -> None:
    """The submit path's stages, each timed alone (internals: may move)."""
    import redis

    from async_endpoints import views
    from async_endpoints.jobs import Job, JobStatus
    from async_endpoints.stores.redis import RedisStore
    from async_endpoints.stores.redis import codec as store_module

    print("CPU µs per call, stages of async-endpoints' submit path:")
    app = create_app("ours-memory", start_worker=False)
    ext: Any = app.extensions["async_endpoints"]
    with app.test_request_context(
        "/submit",
        method="POST",
        json=PAYLOAD,
        headers=HEADERS,
        base_url="http://127.0.0.1:8000",
    ):
        from flask import request

        state = ext._state()
        job = state.manager.submit("noop", PAYLOAD)
        _row("views.request_headers()", cpu_per_call(views.request_headers, n))
        _row(
            "  the same in one pass over request.headers",
            cpu_per_call(lambda: {k.lower(): v for k, v in request.headers.items()}, n),
        )
        _row("views.read_body()", cpu_per_call(views.read_body, n))
        _row(
            "views.job_response() (to_dict, json, headers)",
            cpu_per_call(lambda: views.job_response(state, job, 202), n),
        )
        _row(
            "JobManager.submit on the memory store",
            cpu_per_call(lambda: state.manager.submit("noop", PAYLOAD), n),
        )
    client = redis.Redis.from_url(server.url(3))
    store = RedisStore(client, prefix="micro")
    now = time.time()
    headers = {
        "host": "127.0.0.1:8000",
        "content-type": "application/json",
        "content-length": "17",
    }

    payload: Any = dict(PAYLOAD)

    def make() -> Job:
        return Job(
            id=uuid.uuid4(),
            name="noop",
            status=JobStatus.QUEUED,
            max_retries=3,
            created_at=now,
            last_updated_at=now,
            due_at=now,
            payload=payload,
            headers=headers,
            route_params={},
            query_params={},
            owner=None,
        )

    _row(
        "RedisStore.submit (one EVALSHA)",
        cpu_per_call(lambda: store.submit(make(), max_queue_size=0, now=now), n),
    )
    flat: Any = store_module._encode_job(make())
    _row("  _encode_job", cpu_per_call(lambda: store_module._encode_job(make()), n))
    _row(
        "  _decode_job of one job hash (claims decode one per job)",
        cpu_per_call(lambda: store_module._decode_job(str(uuid.uuid4()), flat), n),
    )
    bare = client.register_script(
        "redis.call('HSET', KEYS[1], unpack(ARGV, 2)) "
        "redis.call('ZADD', KEYS[2], ARGV[1], KEYS[1]) return 1"
    )
    _row(
        "  redis-py EVALSHA alone, same keys and arguments",
        cpu_per_call(
            lambda: bare(
                keys=[f"{{m}}:job:{uuid.uuid4()}", "{m}:ready"], args=["1.5", *flat]
            ),
            n,
        ),
    )
    _row("  redis-py PING", cpu_per_call(client.ping, n))
    client.close()


def _worker_side(server: RedisServer, n: int, admin: Any) -> None:
    """Per job, as the worker does it: claim one, run it (handler + complete)."""
    print("CPU µs per job, async-endpoints' worker side (internals: may move):")
    app = create_app("ours-redis-enqueue", server.url(2))
    ext: Any = app.extensions["async_endpoints"]
    with app.app_context():
        manager = ext._state().manager
        for _ in range(3 * (n + 200) + 100 * 210):
            ext.submit("noop", PAYLOAD)
        claims: list[Any] = []
        before = _redis_cpu(admin)
        _row(
            "claim(limit=1): what a worker with one free thread does",
            cpu_per_call(lambda: claims.extend(manager.claim("micro", 1)), n),
            (_redis_cpu(admin) - before) / (n + 200) * 1e6,
        )
        pending = iter(claims)
        before = _redis_cpu(admin)
        _row(
            "run(claim): handler + complete (one EVALSHA)",
            cpu_per_call(lambda: manager.run(next(pending)), n),
            (_redis_cpu(admin) - before) / (n + 200) * 1e6,
        )
        per_batch = cpu_per_call(lambda: manager.claim("micro", 100), 10)
        _row("claim(limit=100), per job", per_batch / 100)
    ext.shutdown()


if __name__ == "__main__":
    main()
