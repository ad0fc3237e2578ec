"""The run's metadata, the targets, and ``latest.md`` / ``latest.json``."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.http_load import tool, wrk_version
from bench.servers import ROOT


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return math.nan


def _git() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "async_endpoints"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" (async_endpoints/ modified)" if dirty else "")


def code_fingerprint() -> str:
    """A short hash of the library's source (``async_endpoints/**``) as it is now.

    Compared at the start and the end of a run: other people may edit the
    library while a run is going, and a run that measured two versions says so.
    """
    digest = hashlib.sha256()
    package = ROOT / "async_endpoints"
    for path in sorted(package.rglob("*")):
        if path.suffix in (".py", ".lua") and path.is_file():
            digest.update(str(path.relative_to(package)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def loadavg() -> str:
    """The 1/5/15-minute load averages."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def metadata(redis_version: str) -> dict[str, Any]:
    """Date, versions and machine of this run."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git(),
        "code_fingerprint": code_fingerprint(),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "memory_gib": round(_memory_gib(), 1),
            "platform": platform.platform(),
            "loadavg_at_start": loadavg(),
        },
        "versions": {
            "python": platform.python_version(),
            "async-endpoints": _version("async-endpoints"),
            "flask": _version("flask"),
            "werkzeug": _version("werkzeug"),
            "gunicorn": _version("gunicorn"),
            "redis-py": _version("redis"),
            "hiredis": _version("hiredis"),
            "redis-server": redis_version,
            "rq": _version("rq"),
            "celery": _version("celery"),
            "kombu": _version("kombu"),
            "huey": _version("huey"),
            "dramatiq": _version("dramatiq"),
            "load tool": wrk_version() if tool() == "wrk" else "bench.loadgen (Python)",
        },
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue with the measured value and whether it is met."""
    out: list[dict[str, Any]] = []

    def add(
        name: str,
        value: float,
        limit: float,
        higher_is_better: bool,
        fmt: str,
        note: str = "",
    ) -> None:
        met = value >= limit if higher_is_better else value <= limit
        out.append(
            {
                "target": name,
                "measured": fmt.format(value),
                "met": bool(met) and not math.isnan(value),
                "note": note,
            }
        )

    submit = results.get("submit", {}).get("rows")
    if submit:
        peer_ratios = ", ".join(
            f"{name} {submit[key]['ratio']:.2f}"
            for key, name in _PEERS
            if key in submit
        )
        add(
            "HTTP submit on Redis >= 0.8 x bare Flask",
            submit["ours-redis"]["ratio"],
            0.8,
            True,
            "{:.2f}",
            f"{peer_ratios}; enqueue only: "
            f"{submit['ours-redis-enqueue']['ratio']:.2f}; in memory: "
            f"{submit['ours-memory']['ratio']:.2f}",
        )
        add(
            "Enqueue-only HTTP submit >= 0.7 x bare Flask",
            submit["ours-redis-enqueue"]["ratio"],
            0.7,
            True,
            "{:.2f}",
            f"START_WORKER=False, as the peers' rows; {peer_ratios}; CPU ratio "
            f"{submit['ours-redis-enqueue'].get('cpu_ratio', math.nan):.2f}",
        )
        if "huey" in submit:
            ours_rps = [r["rps"] for r in submit["ours-redis-enqueue"]["rounds"]]
            huey_rps = [r["rps"] for r in submit["huey"]["rounds"]]
            versus = _median([o / h for o, h in zip(ours_rps, huey_rps, strict=True)])
            ours_cpu = submit["ours-redis-enqueue"].get("cpu_us_per_request", math.nan)
            huey_cpu = submit["huey"].get("cpu_us_per_request", math.nan)
            add(
                "enqueue >= Huey's",
                versus,
                1.0,
                True,
                "{:.2f} x",
                "HTTP submit requests/s, enqueue only / Flask + Huey, same round "
                f"({submit['ours-redis-enqueue']['rps']:.0f} vs "
                f"{submit['huey']['rps']:.0f} /s; server CPU {ours_cpu:.0f} vs "
                f"{huey_cpu:.0f} µs/request)",
            )
    drain = results.get("drain", {}).get("rows")
    if drain:
        peers = {k: v["jobs_per_s"] for k, v in drain.items() if k != "ours"}
        best = max(peers, key=lambda k: peers[k])
        add(
            "drain >= 2 x best peer",
            drain["ours"]["jobs_per_s"] / peers[best],
            2.0,
            True,
            "{:.2f} x",
            f"best peer: {best}, {peers[best]:.0f} jobs/s; ours "
            f"{drain['ours']['jobs_per_s']:.0f} jobs/s",
        )
        if "worker_cpu_us" in drain["ours"]:
            cpus = ", ".join(
                f"{key} {row['worker_cpu_us']:.0f}"
                for key, row in drain.items()
                if key != "ours" and "worker_cpu_us" in row
            )
            add(
                "worker CPU per no-op job <= 250 µs",
                drain["ours"]["worker_cpu_us"],
                250,
                False,
                "{:.0f} µs",
                "drain, 2 CLI worker processes: claim + run + complete, app context "
                f"and signals included (Redis {drain['ours']['redis_cpu_us']:.0f} "
                f"µs more); peers: {cpus}",
            )
        if "dramatiq" in drain:
            add(
                "drain >= 1.5 x Dramatiq's",
                drain["ours"]["jobs_per_s"] / drain["dramatiq"]["jobs_per_s"],
                1.5,
                True,
                "{:.2f} x",
                f"Dramatiq (2 processes x 8 threads) "
                f"{drain['dramatiq']['jobs_per_s']:.0f} jobs/s"
                + (" (capped)" if drain["dramatiq"]["capped"] else ""),
            )
    pickup = results.get("pickup", {}).get("rows")
    if pickup:
        ours = pickup["ours"]
        add(
            "pickup p50 <= 0.3 ms (idle workers)",
            ours["start_p50_ms"],
            0.3,
            False,
            "{:.2f} ms",
            "202 received -> handler started",
        )
        add(
            "pickup p99 <= 1.5 ms (idle workers)",
            ours["start_p99_ms"],
            1.5,
            False,
            "{:.2f} ms",
            "202 received -> handler started",
        )
        if "huey" in pickup:
            huey = pickup["huey"]
            add(
                "pickup p50 <= Huey-with-notify's",
                ours["start_p50_ms"],
                huey["start_p50_ms"],
                False,
                "{:.2f} ms",
                f"Huey, blocking=True (workers wait in BRPOP: woken by the "
                f"enqueue): {huey['start_p50_ms']:.2f} ms; 202 received -> "
                "handler started",
            )
    cost = results.get("cost", {}).get("rows")
    if cost:
        ours = cost["ours"]
        add(
            "<= 2 Redis round trips per job in a burst",
            ours["burst"]["round_trips"],
            2.0,
            False,
            "{:.2f}",
            "submitter + worker, 1000 jobs queued back to back",
        )
        add(
            "<= 3 Redis round trips per job one at a time",
            ours["trickle"]["round_trips"],
            3.0,
            False,
            "{:.2f}",
            "100 jobs, each waited for (the submitter's first connection, its "
            "HELLO and script loads included)",
        )
        others = ", ".join(
            f"{name} {cost[key]['burst']['commands_executed']:.1f}"
            for key, name in _PEERS
            if key in cost
        )
        add(
            "Redis commands per job <= 12",
            ours["burst"]["commands_executed"],
            12,
            False,
            "{:.1f}",
            "burst, executed by Redis (INFO commandstats; commands run by scripts "
            f"included); one at a time: {ours['trickle']['commands_executed']:.1f}; "
            f"{others}",
        )
        add(
            "<= 300 B Redis memory per retained finished no-op job",
            ours["memory"]["bytes_per_job"],
            300,
            False,
            "{:.0f} B",
            "MEMORY USAGE of all keys / jobs (submitted from Python, no headers)",
        )
        http_job = (results.get("submit") or {}).get("http_job_memory") or {}
        if http_job.get("sampled_jobs"):
            add(
                "<= 300 B per retained finished no-op job's hash, submitted over HTTP",
                http_job["memory_usage_bytes_median"],
                300,
                False,
                "{:.0f} B",
                "median MEMORY USAGE of jobs of the HTTP submit run (request "
                f"headers stored; encoding {', '.join(http_job['encodings'])})",
            )
        add(
            "idle process <= 1.5 Redis calls/s",
            ours["idle"]["round_trips"],
            1.5,
            False,
            "{:.2f} /s",
            "round trips counted at the client",
        )
    e2e = results.get("e2e", {}).get("rows")
    if e2e and "huey" in e2e and "dramatiq" in e2e:
        add(
            "End to end >= 1.5 x the best of Huey and Dramatiq",
            results["e2e"]["ours_vs_best_of_huey_dramatiq"],
            1.5,
            True,
            "{:.2f} x",
            "jobs accepted and run per second, same round; ours "
            f"{e2e['ours']['jobs_per_s']:.0f} ({e2e['ours']['ratio']:.2f} of bare "
            f"Flask), Huey {e2e['huey']['jobs_per_s']:.0f} "
            f"({e2e['huey']['ratio']:.2f}), Dramatiq "
            f"{e2e['dramatiq']['jobs_per_s']:.0f} ({e2e['dramatiq']['ratio']:.2f})",
        )
    return out


_PEERS = (
    ("rq", "RQ"),
    ("celery", "Celery"),
    ("huey", "Huey"),
    ("dramatiq", "Dramatiq"),
)
"""Row keys and names of the peers, as the sections name them."""


def _median(values: list[float]) -> float:
    clean = sorted(v for v in values if not math.isnan(v))
    if not clean:
        return math.nan
    mid = len(clean) // 2
    return clean[mid] if len(clean) % 2 else (clean[mid - 1] + clean[mid]) / 2


def _f(value: Any, spec: str = ".0f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def markdown(results: dict[str, Any]) -> str:
    """The human-readable report."""
    meta = results["meta"]
    machine = meta["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    plan = results["plan"]
    lines = [
        "# Benchmark results",
        "",
        f"- **Date**: {meta['date']}; commit {meta['commit']} (source fingerprint "
        f"{meta.get('code_fingerprint', '?')}); "
        f"{'quick smoke run' if results.get('quick') else 'full run'}, "
        f"{plan['rounds']} round(s), total {results.get('elapsed_s', 0):.0f} s",
        f"- **Machine**: {machine['cpus']} cores ({machine['cpu_model']}), "
        f"{machine['memory_gib']} GiB, {machine['platform']}; load average at start "
        f"{machine['loadavg_at_start']}, at end {results.get('loadavg_at_end', '?')}",
        f"- **Versions**: {versions}",
        *(
            [
                "- **Warning**: the library's source changed during this run "
                f"(fingerprint {meta.get('code_fingerprint')} at the start, "
                f"{results.get('code_fingerprint_at_end')} at the end): sections "
                "may have measured different versions."
            ]
            if results.get("code_changed_during_run")
            else []
        ),
        "- Other processes may have been running on this machine (shared by other "
        "work), so absolute numbers move from run to run; compare the **ratios**, "
        "measured in one run with every row interleaved round by round. Each figure "
        "is the median of the rounds.",
        "",
        "## Targets",
        "",
        "| target | measured | met | note |",
        "|---|---|---|---|",
    ]
    for t in results.get("targets", []):
        lines.append(
            f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} "
            f"| {t['note']} |"
        )
    lines += _submit_md(results.get("submit"))
    lines += _pickup_md(results.get("pickup"))
    lines += _drain_md(results.get("drain"))
    lines += _cost_md(results.get("cost"))
    lines += _e2e_md(results.get("e2e"))
    errors = {
        k: v["error"]
        for k, v in results.items()
        if isinstance(v, dict) and "error" in v
    }
    if errors:
        lines += ["", "## Errors", ""]
        lines += [f"- {k}: `{v}`" for k, v in errors.items()]
    return "\n".join(lines) + "\n"


def _submit_md(section: dict[str, Any] | None) -> list[str]:
    if not section or "rows" not in section:
        return []
    lines = [
        "",
        "## 1. HTTP submit",
        "",
        f"gunicorn, 2 gthread workers x 4 threads; POST of a small JSON body for "
        f"{section['seconds']:g} s at {section['connections']} connections "
        f"({section['tool']}). Ratio = requests/s / the ceiling's, same round.",
        "",
        "| row | requests/s | p50 ms | p99 ms | ratio to ceiling | errors | "
        "server CPU µs/request | CPU ratio | other load (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in section["rows"].values():
        lines.append(
            f"| {row['label']} | {_f(row['rps'])} | {_f(row['p50_ms'], '.1f')} | "
            f"{_f(row['p99_ms'], '.1f')} | {_f(row['ratio'], '.2f')} | "
            f"{row['non_2xx'] + row['errors']} | "
            f"{_f(row.get('cpu_us_per_request'))} | {_f(row.get('cpu_ratio'), '.2f')} "
            f"| {_f(row.get('other_cores'), '.2f')} |"
        )
    lines += [
        "",
        "*Server CPU µs/request*: CPU time of the row's gunicorn processes (master, "
        "workers, their job threads) plus redis-server, divided by the requests "
        "served; *CPU ratio*: the ceiling's CPU per request / the row's, same "
        "round. Machine sharing moves this far less than requests/s. "
        "*Other load*: cores kept busy during the row's runs by processes that are "
        "neither the harness's servers nor the load tool (from `/proc/stat`), "
        "i.e. how much the machine was shared at the time.",
    ]
    job = section.get("http_job_memory") or {}
    if job.get("sampled_jobs"):
        lines += [
            "",
            f"A job submitted over HTTP keeps the request's headers: median "
            f"`MEMORY USAGE` {_f(job['memory_usage_bytes_median'])} B over "
            f"{job['sampled_jobs']} jobs of the Redis row "
            f"(headers stored: `{job['stored_headers_example']}`; hash encoding "
            f"{', '.join(job.get('encodings', []))}).",
        ]
    return lines


def _pickup_md(section: dict[str, Any] | None) -> list[str]:
    if not section or "rows" not in section:
        return []
    lines = [
        "",
        "## 2. Pickup latency (idle workers, one job at a time)",
        "",
        f"{section['jobs_per_round']} jobs per round, {section['gap_seconds'] * 1000:g}"
        " ms apart. Milliseconds from the 202's arrival at the client to the job's "
        "code starting, and to the job reading as finished in Redis (negative: "
        "before the client had its 202).",
        "",
        "| configuration | start p50 | start p99 | finished visible p50 | "
        "finished visible p99 | start p50 from POST sent | lost |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in section["rows"].values():
        lines.append(
            f"| {row['label']} | {_f(row['start_p50_ms'], '.2f')} | "
            f"{_f(row['start_p99_ms'], '.2f')} | {_f(row['visible_p50_ms'], '.2f')} | "
            f"{_f(row['visible_p99_ms'], '.2f')} | "
            f"{_f(row['start_from_send_p50_ms'], '.2f')} | {row['lost']} |"
        )
    return lines


def _drain_md(section: dict[str, Any] | None) -> list[str]:
    if not section or "rows" not in section:
        return []
    rows = section["rows"]
    ours = rows["ours"]["jobs_per_s"]
    lines = [
        "",
        "## 3. Drain",
        "",
        f"{section['jobs']} no-op jobs queued, then the workers started; jobs/s from "
        f"the first job taken to the last finished (capped at "
        f"{section['cap_seconds']:g} s: a capped row's rate is over the jobs it "
        "finished by then). Startup = from spawning the workers to the first job "
        "taken, not part of the rate. Worker / Redis CPU per job: CPU time of the "
        "worker processes / of redis-server over the same window, per job finished "
        "in it (claim, run and record, everything included).",
        "",
        "| configuration | jobs/s | async-endpoints / this | startup s "
        "| worker CPU µs/job | Redis CPU µs/job |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, row in rows.items():
        capped = " (capped)" if row["capped"] else ""
        ratio = "-" if key == "ours" else _f(ours / row["jobs_per_s"], ".2f")
        lines.append(
            f"| {row['label']} | {_f(row['jobs_per_s'])}{capped} | {ratio} | "
            f"{_f(row['startup_s'], '.2f')} | "
            f"{_f(row.get('worker_cpu_us', math.nan))} | "
            f"{_f(row.get('redis_cpu_us', math.nan))} |"
        )
    return lines


def _cost_md(section: dict[str, Any] | None) -> list[str]:
    if not section or "rows" not in section:
        return []
    lines = [
        "",
        "## 4. Cost per job (noise-free counts)",
        "",
        f"Round trips counted at the client (submitter + worker; one EVALSHA or one "
        f"pipeline = one), commands executed by Redis (`INFO commandstats`, commands "
        f"run by scripts included), memory of the finished jobs Redis keeps "
        f"(`MEMORY USAGE` of every key / jobs run), and an idle worker process's "
        f"calls. One at a time: {section['trickle_jobs']} jobs, each waited for; "
        f"burst: {section['burst_jobs']} jobs queued back to back.",
        "",
        "| system | round trips/job, one at a time | round trips/job, burst | "
        "Redis commands/job, one at a time | Redis commands/job, burst | "
        "memory/job (B) | idle calls/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in section["rows"].values():
        lines.append(
            f"| {row['label']} | {_f(row['trickle']['round_trips'], '.2f')} | "
            f"{_f(row['burst']['round_trips'], '.2f')} | "
            f"{_f(row['trickle']['commands_executed'], '.1f')} | "
            f"{_f(row['burst']['commands_executed'], '.1f')} | "
            f"{_f(row['memory']['bytes_per_job'])} | "
            f"{_f(row['idle']['round_trips'], '.2f')} |"
        )
    lines += ["", "Round trips per job by kind:", ""]
    for row in section["rows"].values():
        for phase in ("trickle", "burst"):
            kinds = ", ".join(
                f"{k} {v:.2f}"
                for k, v in row[phase]["trips_by_kind"].items()
                if v >= 0.01
            )
            lines.append(f"- {row['label']}, {phase}: {kinds}")
        idle = ", ".join(
            f"{k} {v:.2f}/s" for k, v in row["idle"]["trips_by_kind"].items()
        )
        lines.append(f"- {row['label']}, idle: {idle or 'none'}")
    return lines


def _e2e_md(section: dict[str, Any] | None) -> list[str]:
    if not section or "rows" not in section:
        return []
    lines = [
        "",
        "## 5. End to end (accepted over HTTP and run, on the same 2 cores)",
        "",
        f"gunicorn, 2 gthread workers x 4 threads, serving the POST view, and the "
        f"system's own workers on the same machine; every job is one Redis `INCR` "
        f"of a counter; POST for {section['seconds']:g} s at "
        f"{section['connections']} connections ({section['tool']}). The clock "
        "runs from the start of the load until the counter shows every accepted "
        f"job run (capped {section['cap_seconds']:g} s after the load). Ratio = "
        "jobs run/s / bare Flask's 202/s, same round.",
        "",
        "| row | jobs run/s | ratio to bare Flask | 202/s during the load | "
        "backlog ran after the load (s) | server CPU µs/job | CPU ratio | "
        "counter check | errors | other load (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in section["rows"].values():
        runs = row.get("runs_jobs", True)
        check = "-" if not runs else ("ok" if row["check_ok"] else "**failed**")
        lines.append(
            f"| {row['label']} | "
            f"{_f(row['jobs_per_s'])}{' (capped)' if row['capped'] else ''}"
            f"{'' if runs else ' (202/s)'} | {_f(row['ratio'], '.2f')} | "
            f"{_f(row['accept_rps'])} | "
            f"{_f(row['after_load_s'], '.2f') if runs else '-'} | "
            f"{_f(row['cpu_us_per_job'])} | {_f(row['cpu_ratio'], '.2f')} | "
            f"{check} | {row['errors']} | {_f(row['other_cores'], '.2f')} |"
        )
    versus = section.get("ours_vs_best_of_huey_dramatiq")
    lines += [
        "",
        "*Server CPU µs/job*: CPU time of the row's gunicorn processes, its worker "
        "processes and redis-server from the start of the load until every job "
        "ran, divided by the jobs (bare Flask: by the requests); *CPU ratio*: bare "
        "Flask's CPU per request / the row's CPU per job. *Counter check*: the "
        "counter grew by at least the 202s the load tool received and by at most "
        "that plus the connections (requests the server accepted while the tool "
        "was stopping).",
    ]
    if versus is not None:
        lines += [
            "",
            f"async-endpoints / the better of Huey and Dramatiq in the same round: "
            f"{_f(versus, '.2f')} (median).",
        ]
    return lines


def write(results: dict[str, Any], stem: Path) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md``; return both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path = stem.with_suffix(".json")
    md_path = stem.with_suffix(".md")
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    md_path.write_text(markdown(results))
    return md_path, json_path
