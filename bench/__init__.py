"""Benchmark harness: async-endpoints against bare Flask, RQ and Celery.

Run it with ``python -m bench`` (or ``make bench``); ``python -m bench --quick`` is a
short smoke run. It starts its own ``redis-server`` and ``gunicorn`` processes on
loopback ports, stops them by pid, and writes ``bench/results/latest.md`` and
``latest.json``. It is never part of the test run. See ``bench/README.md``.
"""
