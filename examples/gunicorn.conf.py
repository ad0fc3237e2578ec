"""gunicorn settings for an app that uses async-endpoints.

    gunicorn -c examples/gunicorn.conf.py 'quickstart:app' --chdir examples

Use a Redis store (ASYNC_ENDPOINTS_STORE_URL=redis://...) with more than one worker:
the in-memory store is one process's memory.
"""

# child_exit: a worker process that dies (SIGKILL, out of memory) has its jobs
# retried at once, not when their leases expire.
from async_endpoints.gunicorn import child_exit, post_fork, worker_exit  # noqa: F401 - hooks

bind = "127.0.0.1:8000"
workers = 2
# Threaded workers: requests and the job worker's threads share the process.
# ``sync`` works too; gevent and eventlet are not supported (see the README).
worker_class = "gthread"
threads = 4
# Import the app once in the master; the hooks start each worker's job threads
# after the fork, so no thread or Redis connection crosses it.
preload_app = True
# Longer than ASYNC_ENDPOINTS_SHUTDOWN_GRACE_SECONDS (20 s by default), so running
# jobs can finish and the rest be handed back before gunicorn kills the worker.
graceful_timeout = 30
