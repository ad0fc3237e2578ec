"""Key names under the ``{prefix}`` hash tag, and the Lua scripts' sources."""

from __future__ import annotations

import functools
import importlib.resources
import uuid
from typing import (
    Final,
    Literal,
    TypeAlias,
    get_args,
)

from async_endpoints.errors import (
    ConfigurationError,
)

_ScriptName: TypeAlias = Literal[
    "submit",
    "claim",
    "heartbeat",
    "complete",
    "fail",
    "report_progress",
    "release",
    "cancel",
    "recover_expired",
    "retry",
    "register_worker",
    "purge",
    "clock",
    "watch",
    "callback_claim",
    "callback_finish",
    "page",
    "running",
    "await",
    "migrate",
    "prune",
    "recover_owner",
]
_FINISHED: Final = frozenset({"Completed", "Failed", "Canceled"})

_SCRIPT_NAMES: Final[tuple[_ScriptName, ...]] = get_args(_ScriptName)


@functools.cache
def _script_source(name: _ScriptName) -> str:
    """A script as Redis runs it: the shared functions of ``_prelude.lua``
    (waking a worker, freeing a concurrency slot), then the script's own text."""
    return _lua_text("_prelude") + _lua_text(name)


def _lua_text(name: str) -> str:
    package = __package__ or __name__.rpartition(".")[0]
    resource = importlib.resources.files(package).joinpath("lua", f"{name}.lua")
    return resource.read_text(encoding="utf-8")


class _Keys:
    """Every key name the store uses, under the ``{prefix}`` hash tag."""

    def __init__(self, prefix: str) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigurationError(
                f"Redis key prefix {prefix!r} is invalid: use a non-empty prefix "
                "without braces (it becomes the {prefix} Cluster hash tag)."
            )
        tag = "{" + prefix + "}"
        self.base: Final = f"{tag}:"
        """What every key name starts with: the hot-path scripts (submit, claim,
        complete) get only this and name their keys from it."""
        self.ready: Final = f"{tag}:ready"
        self.claimed: Final = f"{tag}:claimed"
        self.wake: Final = f"{tag}:wake"
        self.workers: Final = f"{tag}:workers"
        self.job_prefix: Final = f"{tag}:job:"
        self._idem_prefix: Final = f"{tag}:idem:"
        self._request_prefix: Final = f"{tag}:req:"
        self._ended_prefix: Final = f"{tag}:ended:"
        self.cancels: Final = f"{tag}:cancels"
        self.callbacks: Final = f"{tag}:callbacks"
        self.ticks: Final = f"{tag}:ticks"
        self.status_prefix: Final = f"{tag}:ix:s:"
        self.owners: Final = f"{tag}:ix:owners"
        self.owner_waiting_prefix: Final = f"{tag}:ow:"
        """Each owner's waiting jobs (zset), after this prefix."""
        self.rate_prefix: Final = f"{tag}:rate:"
        self.running: Final = f"{tag}:running"
        self.parked_prefix: Final = f"{tag}:parked:"
        self.fair: Final = f"{tag}:fair"
        """Fair claims: the latest claimed tag and each owner's latest (zset)."""
        self.finished: Final = f"{tag}:ix:finished"
        """Jobs that ended, per minute (hash: epoch minute -> count)."""
        self.name_prefix: Final = f"{tag}:ix:n:"
        self.names: Final = f"{tag}:ix:names"
        """The names of the handlers that have finished jobs (set)."""
        self._owner_prefix: Final = f"{tag}:ix:o:"
        self.events: Final = f"{tag}:events"
        """The Pub/Sub channel (not a key) told the id of every change of a
        job that somebody follows."""

    def job(self, job_id: uuid.UUID | str) -> str:
        return f"{self.job_prefix}{job_id}"

    def stop_wake(self, worker: str) -> str:
        """One worker's own wake-up list, which its waits also watch: pushed
        when it stops, to end its wait at once."""
        return f"{self.wake}:{worker}"

    def stopped(self, worker: str) -> str:
        """Set when the worker stops: a claim it sent behind a wait takes
        nothing (claim.lua)."""
        return f"{self.base}stopped:{worker}"

    def request(self, request_id: str) -> str:
        """The record of what a claim request took (so that it can be re-sent)."""
        return f"{self._request_prefix}{request_id}"

    def status_index(self, status: str, name: str = "") -> str:
        """The jobs of one status, by creation time (zset): one index for
        Queued and for Scheduled; one per handler ``name`` for the finished
        statuses (a job that ended is in no other index but its owner's, to
        keep it small). Running jobs have none: the leases' zset holds them."""
        if status in _FINISHED:
            return f"{self.status_prefix}{status}:{name}"
        return f"{self.status_prefix}{status}"

    def name_index(self, name: str) -> str:
        """The jobs of one handler not yet finished, by creation time (zset)."""
        return f"{self.name_prefix}{name}"

    def owner_index(self, owner: str) -> str:
        """The jobs of one owner, by creation time (zset)."""
        return f"{self._owner_prefix}{owner}"

    def idem(self, key: str) -> str:
        return f"{self._idem_prefix}{key}"

    def ended(self, job_id: uuid.UUID | str) -> str:
        """The Pub/Sub channel (not a key) told when the job ends."""
        return f"{self._ended_prefix}{job_id}"
