"""A small keep-alive HTTP/1.1 load generator, used when ``wrk`` is not installed.

``python -m bench.loadgen --port P --path /submit --connections 32 --duration 10``
keeps ``connections`` connections to ``127.0.0.1:P`` busy with POSTs of a small
JSON body for ``duration`` seconds and prints one JSON object: requests, requests/s,
latency percentiles (ms), non-2xx responses and socket errors. One process, asyncio:
it costs more CPU per request than wrk, which the report says.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass

BODY = b'{"data": "hello"}'


@dataclass
class LoadResult:
    """What one load run measured."""

    tool: str
    duration: float
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


def _request(host: str, port: int, path: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "User-Agent: bench-loadgen\r\nAccept: */*\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


async def _connection(
    host: str,
    port: int,
    path: str,
    deadline: float,
    latencies: list[float],
    counts: dict[str, int],
) -> None:
    payload = _request(host, port, path)
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            counts["errors"] += 1
            await asyncio.sleep(0.01)
            continue
        try:
            while True:
                start = time.perf_counter()
                if time.monotonic() >= deadline:
                    return
                writer.write(payload)
                status_line = await reader.readline()
                if not status_line:
                    raise ConnectionError("closed")
                status = int(status_line.split()[1])
                length = 0
                close = False
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and b"close" in value.lower():
                        close = True
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
                if not 200 <= status < 300:
                    counts["non_2xx"] += 1
                if close:
                    break
        except (OSError, ConnectionError, ValueError, IndexError, EOFError):
            counts["errors"] += 1
        finally:
            writer.close()


async def run(
    port: int, path: str, connections: int, duration: float, host: str = "127.0.0.1"
) -> LoadResult:
    """Load ``http://host:port/path`` for ``duration`` s; bounded in time."""
    latencies: list[float] = []
    counts = {"errors": 0, "non_2xx": 0}
    start = time.monotonic()
    deadline = start + duration
    await asyncio.wait_for(
        asyncio.gather(
            *(
                _connection(host, port, path, deadline, latencies, counts)
                for _ in range(connections)
            )
        ),
        timeout=duration + 30,
    )
    elapsed = time.monotonic() - start
    ms = [x * 1000 for x in latencies]
    return LoadResult(
        tool="python",
        duration=elapsed,
        requests=len(ms),
        rps=len(ms) / elapsed,
        p50_ms=statistics.median(ms) if ms else float("nan"),
        p99_ms=percentile(ms, 99),
        non_2xx=counts["non_2xx"],
        errors=counts["errors"],
    )


def main() -> None:
    """Command line: run one load and print its result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/submit")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.port, args.path, args.connections, args.duration))
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
