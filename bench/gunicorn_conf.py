"""gunicorn settings of every HTTP row: 2 gthread workers, as the README deploys.

Loaded with ``gunicorn -c python:bench.gunicorn_conf``; the harness adds ``--bind``.
The async-endpoints hooks are harmless for the other apps (they act only on
extensions that exist in the process).
"""

from async_endpoints.gunicorn import post_fork, worker_exit

__all__ = ["post_fork", "worker_exit"]

workers = 2
worker_class = "gthread"
threads = 4
preload_app = True
graceful_timeout = 10
accesslog = None
loglevel = "warning"
