"""A small Server-Sent Events reader over ``http.client``, for tests against
real servers."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from typing import Any


def next_event(next_block: Callable[[], str | None]) -> dict[str, Any] | None:
    """The next ``job`` event of a stream read block by block by ``next_block``
    (comments skipped), as its fields; ``None`` once the stream ended."""
    while (block := next_block()) is not None:
        if block.startswith(":"):
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        return {
            "event": fields["event"],
            "id": int(fields["id"]),
            "job": json.loads(fields["data"]),
        }
    return None


class EventStream:
    """``GET path`` on ``127.0.0.1:port``, read block by block (bounded by
    ``timeout`` per read)."""

    def __init__(
        self, port: int, path: str, *, timeout: float = 10.0, **headers: str
    ) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.conn.request("GET", path, headers=headers)
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.content_type = self.response.getheader("Content-Type", "")

    def next_block(self) -> str | None:
        """The next event or comment block; ``None`` once the server closed."""
        lines: list[str] = []
        while True:
            raw = self.response.readline()
            if not raw:
                return None
            line = raw.decode().rstrip("\n")
            if line == "":
                if lines:
                    return "\n".join(lines)
                continue
            lines.append(line)

    def next_event(self) -> dict[str, Any] | None:
        """The next ``job`` event (comments skipped), or ``None`` once closed."""
        return next_event(self.next_block)

    def close(self) -> None:
        self.response.close()
        self.conn.close()
