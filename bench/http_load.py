"""One HTTP load run against 127.0.0.1: wrk when installed, else ``bench.loadgen``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.loadgen import BODY, LoadResult
from bench.servers import HOST, ROOT

_WRK_SCRIPT = f"""
wrk.method = "POST"
wrk.body = '{BODY.decode()}'
wrk.headers["Content-Type"] = "application/json"
"""


def tool() -> str:
    """``"wrk"`` if it is installed, else ``"python"`` (the bundled generator).

    ``BENCH_LOAD_TOOL=python`` forces the bundled generator.
    """
    if os.environ.get("BENCH_LOAD_TOOL") == "python":
        return "python"
    return "wrk" if shutil.which("wrk") else "python"


def wrk_version() -> str | None:
    """wrk's version line, or ``None`` when it is not installed."""
    if not shutil.which("wrk"):
        return None
    out = subprocess.run(
        ["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False
    )
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0] if first else "wrk"


def _ms(value: str, unit: str) -> float:
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]
    return float(value) * scale


def parse_wrk(text: str, duration: float) -> LoadResult:
    """The numbers of ``wrk --latency`` output."""

    def latency(pct: str) -> float:
        match = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        return _ms(*match.groups()) if match else float("nan")

    requests = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if requests is None or rps is None:
        raise RuntimeError(f"cannot read wrk's output:\n{text}")
    return LoadResult(
        tool="wrk",
        duration=duration,
        requests=int(requests.group(1)),
        rps=float(rps.group(1)),
        p50_ms=latency("50"),
        p99_ms=latency("99"),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        errors=sum(int(x) for x in socket.groups()) if socket else 0,
    )


def load(
    port: int, *, path: str = "/submit", connections: int = 32, duration: float = 10.0
) -> LoadResult:
    """POST the small JSON body to ``127.0.0.1:port`` for ``duration`` seconds."""
    timeout = duration + 60
    if tool() == "wrk":
        seconds = max(1, round(duration))  # wrk takes whole seconds
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(_WRK_SCRIPT)
        try:
            out = subprocess.run(
                [
                    "wrk",
                    *("-t", "2", "-c", str(connections)),
                    *("-d", f"{seconds}s", "--timeout", "5s", "--latency"),
                    *("-s", script.name),
                    f"http://{HOST}:{port}{path}",
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=True,
            )
        finally:
            Path(script.name).unlink(missing_ok=True)
        return parse_wrk(out.stdout, seconds)
    out = subprocess.run(
        [
            sys.executable,
            *("-m", "bench.loadgen", "--port", str(port), "--path", path),
            *("--connections", str(connections), "--duration", str(duration)),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
        cwd=ROOT,
    )
    return LoadResult(**json.loads(out.stdout))
