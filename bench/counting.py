"""Count Redis round trips at the client, by patching redis-py's send path.

Every request that redis-py writes to a socket goes through
``AbstractConnection.send_packed_command``: one call per command, one per pipeline
(all its commands packed together) and one per ``EVALSHA``. So one call is one
round trip, and the packed bytes tell which commands it carried. Counts go to the
current *bucket* (a name), so a process can keep apart the calls it makes for the
system under test from its own bookkeeping.

In a process of its own: ``python -m bench.counting OUT.json -m MODULE ARGS...``
installs the patch, runs ``MODULE`` as ``__main__`` (e.g. ``flask``, ``rq.cli``,
``celery``) and rewrites ``OUT.json`` with the counts every 50 ms and at exit.
Forked children (a prefork pool) are not counted: use an in-process pool there.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import os
import runpy
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.connection import AbstractConnection


@dataclass
class Bucket:
    """Round trips and the commands they carried."""

    round_trips: int = 0
    commands: collections.Counter[str] = field(default_factory=collections.Counter)
    trips: collections.Counter[str] = field(default_factory=collections.Counter)
    """Round trips by kind: the command's name, ``MULTI/EXEC`` for a transaction,
    ``PIPELINE`` for any other batch."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "round_trips": self.round_trips,
            "commands": dict(self.commands),
            "trips": dict(self.trips),
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Bucket:
        """The inverse of :meth:`to_dict`."""
        return Bucket(
            data["round_trips"],
            collections.Counter(data["commands"]),
            collections.Counter(data.get("trips", {})),
        )

    def copy(self) -> Bucket:
        """An independent copy."""
        return Bucket(
            self.round_trips,
            collections.Counter(self.commands),
            collections.Counter(self.trips),
        )

    def minus(self, earlier: Bucket) -> Bucket:
        """What was counted since ``earlier``."""
        commands = collections.Counter(self.commands)
        commands.subtract(earlier.commands)
        trips = collections.Counter(self.trips)
        trips.subtract(earlier.trips)
        return Bucket(self.round_trips - earlier.round_trips, +commands, +trips)


_lock = threading.Lock()
_buckets: dict[str, Bucket] = collections.defaultdict(Bucket)
_current = threading.local()
_original: Any = None


_CONTAINERS = frozenset(
    {
        "ACL",
        "CLIENT",
        "CLUSTER",
        "COMMAND",
        "CONFIG",
        "FUNCTION",
        "LATENCY",
        "MEMORY",
        "MODULE",
        "OBJECT",
        "PUBSUB",
        "SCRIPT",
        "SLOWLOG",
        "XGROUP",
        "XINFO",
    }
)
"""Commands whose second word names the subcommand (``CLIENT SETINFO``)."""


def command_names(packed: Iterable[bytes | memoryview | str]) -> list[str]:
    """The command names in a packed RESP request (several for a pipeline)."""
    data = b"".join(
        item.encode() if isinstance(item, str) else bytes(item) for item in packed
    )
    names = []
    pos = 0
    while pos < len(data) and data[pos : pos + 1] == b"*":
        end = data.index(b"\r\n", pos)
        count = int(data[pos + 1 : end])
        pos = end + 2
        words = []
        for i in range(count):
            end = data.index(b"\r\n", pos)
            size = int(data[pos + 1 : end])
            start = end + 2
            if i < 2:
                words.append(data[start : start + size].decode(errors="replace"))
            pos = start + size + 2
        name = words[0].upper() if words else ""
        if name in _CONTAINERS and len(words) > 1:
            name = f"{name} {words[1].upper()}"  # as INFO commandstats names it
        names.append(name)
    return names


def _counting_send(
    self: AbstractConnection, command: Any, check_health: bool = True
) -> None:
    packed = [command] if isinstance(command, (bytes, str, memoryview)) else command
    names = command_names(packed)
    bucket_name = getattr(_current, "name", None) or _default_bucket
    if len(names) == 1:
        kind = names[0]
    elif names and names[0] == "MULTI":
        kind = "MULTI/EXEC"
    else:
        kind = "PIPELINE"
    with _lock:
        bucket = _buckets[bucket_name]
        bucket.round_trips += 1
        bucket.commands.update(names)
        bucket.trips[kind] += 1
    _original(self, command, check_health)


_default_bucket = "system"


def install(default_bucket: str = "system") -> None:
    """Patch redis-py (once per process); calls count into ``default_bucket``."""
    global _original, _default_bucket
    _default_bucket = default_bucket
    if _original is None:
        _original = AbstractConnection.send_packed_command
        AbstractConnection.send_packed_command = _counting_send  # type: ignore[method-assign]


def uninstall() -> None:
    """Undo :func:`install`."""
    global _original
    if _original is not None:
        AbstractConnection.send_packed_command = _original  # type: ignore[method-assign]
        _original = None


@contextlib.contextmanager
def bucket(name: str) -> Iterator[None]:
    """Count this thread's calls into ``name`` inside the block."""
    previous = getattr(_current, "name", None)
    _current.name = name
    try:
        yield
    finally:
        _current.name = previous


def snapshot() -> dict[str, Bucket]:
    """A copy of every bucket."""
    with _lock:
        return {name: b.copy() for name, b in _buckets.items()}


def read(path: Path) -> dict[str, Bucket]:
    """The buckets a counted process last wrote to ``path`` (empty if none yet)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {name: Bucket.from_dict(b) for name, b in data.items()}


def _write(path: Path) -> None:
    data = {name: b.to_dict() for name, b in snapshot().items()}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _writer(path: Path, stop: threading.Event) -> None:
    last = None
    while not stop.wait(0.05):
        current = {
            n: (b.round_trips, sum(b.commands.values())) for n, b in snapshot().items()
        }
        if current != last:
            _write(path)
            last = current


def main() -> None:
    """``python -m bench.counting OUT.json -m MODULE ARGS...``"""
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        raise SystemExit("usage: python -m bench.counting OUT.json -m MODULE ARGS...")
    out = Path(sys.argv[1])
    module = sys.argv[3]
    install()
    pid = os.getpid()
    stop = threading.Event()
    threading.Thread(target=_writer, args=(out, stop), daemon=True).start()

    def final() -> None:
        if os.getpid() == pid:
            stop.set()
            _write(out)

    atexit.register(final)
    sys.argv = [module, *sys.argv[4:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
