"""A fault-injecting TCP proxy between a Redis client and a real redis-server.

``RedisFaultProxy`` listens on 127.0.0.1 and gives each client connection its own
upstream connection; one selector thread moves the bytes. It frames RESP2/RESP3
both ways to pair each reply with its command, and injects three failures:
**dropped replies** (the server runs the command, the reply is discarded, the client
is reset), **black holes** (nothing forwarded, nothing closed: reads hang as when a
host vanishes) and **cuts** (every open connection reset at once).

Not emulated: delays, partial writes, reordering, TLS, RESP3 streamed types (Redis
sends none). A reply is paired with the oldest unanswered command of its connection,
so RESP2 Pub/Sub messages are miscounted (RESP3 pushes, ``>``, are never paired). A
black hole keeps bytes in the kernel, like TCP retransmission: ``heal`` delivers
them, even a command whose client has since given up. A RESP framing error
(ValueError) is taken for a proxy bug: the loop stops and ``stop`` raises it.
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Final, Self

CommandPredicate = Callable[[list[bytes]], bool]
"""Gets a command as its list of arguments, e.g. ``[b"INCR", b"k"]``."""

_HOST: Final = "127.0.0.1"
_READ_SIZE: Final = 65536
_HIGH_WATER: Final = 1 << 20  # stop reading a side whose peer is this far behind
_TIMEOUT: Final = 5.0  # bounds every wait: control calls, upstream connect, join


def _frame_end(buf: bytearray, pos: int) -> int | None:
    """The index just past the RESP frame starting at ``pos``; None if incomplete."""
    line = buf.find(b"\r\n", pos)
    if line < 0:
        return None
    kind = buf[pos]
    if kind in b"+-:_,#(":
        return line + 2
    size = int(buf[pos + 1 : line])
    if kind in b"$!=":
        stop = line + 2 + size + 2 if size >= 0 else line + 2
        return stop if stop <= len(buf) else None
    if kind not in b"*>~%|":
        raise ValueError(f"not a RESP type byte: {bytes([kind])!r}")
    end = line + 2
    for _ in range(size * 2 if kind in b"%|" else max(size, 0)):
        if (nested := _frame_end(buf, end)) is None:
            return None
        end = nested
    # An attribute map is a prefix of the reply it annotates: frame them together.
    return _frame_end(buf, end) if kind == ord("|") else end


def _parse_command(buf: bytearray) -> tuple[list[bytes], int] | None:
    """The command at the start of ``buf`` and its length; None if incomplete."""
    line = buf.find(b"\r\n")
    if line < 0:
        return None
    if buf[0] != ord("*"):  # an inline command, as typed into telnet
        return bytes(buf[:line]).split(), line + 2
    args: list[bytes] = []
    end = line + 2
    for _ in range(int(buf[1:line])):
        line = buf.find(b"\r\n", end)
        if line < 0:
            return None
        if buf[end] != ord("$"):
            raise ValueError("a command argument is not a bulk string")
        start = line + 2
        stop = start + int(buf[end + 1 : line])
        if stop + 2 > len(buf):
            return None
        args.append(bytes(buf[start:stop]))
        end = stop + 2
    return args, end


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (SO_LINGER 0) rather than a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass(eq=False)
class _Link:
    """One client connection and its own upstream connection to the server."""

    client: socket.socket
    server: socket.socket
    commands_in: bytearray = field(default_factory=bytearray)  # not yet framed
    replies_in: bytearray = field(default_factory=bytearray)  # not yet framed
    to_client: bytearray = field(default_factory=bytearray)
    to_server: bytearray = field(default_factory=bytearray)
    pending: deque[tuple[list[bytes], bool]] = field(default_factory=deque)
    events: dict[socket.socket, int] = field(default_factory=dict)
    closed: bool = False

    def outbox(self, sock: socket.socket) -> bytearray:
        return self.to_client if sock is self.client else self.to_server


class RedisFaultProxy:
    """A TCP proxy to ``target_host:target_port`` that injects faults on request.

    Use it as a context manager (``with RedisFaultProxy(port) as proxy:``) or call
    :meth:`start` and :meth:`stop`. Fault methods are thread-safe and take effect
    before they return: they hold the lock the proxy thread holds while it handles
    a batch of I/O events. The counters stay readable after :meth:`stop`:
    ``accepted`` (client connections), ``commands`` (forwarded to the server),
    ``replies`` (received from it, dropped ones included), ``dropped`` and
    ``dropped_commands`` (the commands whose reply was dropped, in order).

    :param target_port: the redis-server port on ``target_host``.
    :param target_host: the redis-server address; loopback by default.
    """

    def __init__(self, target_port: int, target_host: str = _HOST) -> None:
        self._target = (target_host, target_port)
        self._thread: threading.Thread | None = None
        self._listener = socket.socket()
        self._listener.bind((_HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        """The port the proxy listens on, on 127.0.0.1, bound at construction."""
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()  # held while handling events or faults
        self._links: set[_Link] = set()
        self._stopping = False
        self._failure: BaseException | None = None
        self._blackholed = False
        self._drop_once: list[CommandPredicate] = []
        self._drop_probability = 0.0
        self._drop_match: CommandPredicate | None = None
        self._rng = random.Random(0)
        self.accepted = self.commands = self.replies = self.dropped = 0
        self.dropped_commands: list[tuple[bytes, ...]] = []

    @property
    def url(self) -> str:
        """A redis-py URL through the proxy, database 0."""
        return f"redis://{_HOST}:{self.port}/0"

    def start(self) -> None:
        """Start listening and forwarding, on a background thread."""
        if self._thread is not None:
            raise RuntimeError("the proxy is already started")
        self._listener.listen(64)
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, self._accept)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        self._thread = threading.Thread(
            target=self._run, name=f"redis-fault-proxy-{self.port}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Reset every connection, join the thread, and raise if the loop failed."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping = True
            self._wake()
            thread.join(_TIMEOUT)
            if thread.is_alive():
                raise RuntimeError(f"{thread.name} did not stop within {_TIMEOUT}s")
        for sock in (self._wake_r, self._wake_w, self._listener):
            sock.close()
        self._selector.close()
        if self._failure is not None:
            raise RuntimeError("the fault proxy loop failed") from self._failure

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def drop_reply_once(self, match: CommandPredicate) -> None:
        """Drop the reply to the next command ``match`` accepts, then reset its client.

        The command still reaches the server and runs. Several calls arm several
        drops; each fires once, on any connection.
        """
        with self._lock:
            self._drop_once.append(match)

    def drop_replies(
        self, probability: float, *, seed: int, match: CommandPredicate | None = None
    ) -> None:
        """Drop each reply with ``probability``, as :meth:`drop_reply_once` does.

        One ``random.Random(seed)`` draw is made per command that ``match`` accepts
        (every command when ``match`` is None), in the order the proxy receives
        them, so a single-threaded client sees the same drops on every run.
        ``probability=0`` turns random drops off.
        """
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], not {probability!r}")
        with self._lock:
            self._drop_probability, self._drop_match = probability, match
            self._rng = random.Random(seed)

    def blackhole(self) -> None:
        """Stop forwarding in both directions, closing nothing (new connections too)."""
        self._set_blackhole(True)

    def heal(self) -> None:
        """Resume forwarding, including the bytes held while black-holed."""
        self._set_blackhole(False)

    def cut_all(self) -> int:
        """Reset every open connection and return how many; new ones still work."""
        with self._lock:
            links = list(self._links)
            for link in links:
                self._close(link, reset=True)
            return len(links)

    # Everything below runs on the proxy thread or under the lock.

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a wake-up is already pending
            self._wake_w.send(b"\0")

    def _run(self) -> None:
        try:
            while not self._stopping:
                ready = self._selector.select()
                with self._lock:
                    for key, mask in ready:
                        key.data(mask)
        except BaseException as exc:
            self._failure = exc
        finally:
            self.cut_all()

    def _on_wake(self, _mask: int) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)

    def _set_blackhole(self, on: bool) -> None:
        with self._lock:
            self._blackholed = on
            for link in list(self._links):
                self._update(link)
        self._wake()  # let select() pick up the new registrations at once

    def _accept(self, _mask: int) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        self.accepted += 1
        try:
            server = socket.create_connection(self._target, _TIMEOUT)
        except OSError:  # the server is down: refuse the client as it would
            _reset(client)
            return
        for sock in (client, server):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(client, server)
        self._links.add(link)
        self._update(link)

    def _update(self, link: _Link) -> None:
        """Register for exactly the events this link can act on now."""
        for sock, inbox in (
            (link.client, link.to_server),
            (link.server, link.to_client),
        ):
            read = selectors.EVENT_READ if len(inbox) < _HIGH_WATER else 0
            write = selectors.EVENT_WRITE if link.outbox(sock) else 0
            want = 0 if self._blackholed else read | write
            if want != link.events.get(sock, 0):
                if link.events.get(sock):
                    self._selector.unregister(sock)
                if want:
                    callback = partial(self._service, link, sock)
                    self._selector.register(sock, want, callback)
                link.events[sock] = want

    def _service(self, link: _Link, sock: socket.socket, mask: int) -> None:
        if link.closed:  # closed earlier in the same batch of events
            return
        try:
            if mask & selectors.EVENT_WRITE:
                self._flush(link, sock)
            if mask & selectors.EVENT_READ:
                data = sock.recv(_READ_SIZE)
                if not data:
                    self._close(link, reset=False)
                elif sock is link.client:
                    self._from_client(link, data)
                else:
                    self._from_server(link, data)
        except BlockingIOError:
            pass
        except OSError:
            self._close(link, reset=True)
        if not link.closed:
            self._update(link)

    def _flush(self, link: _Link, sock: socket.socket) -> None:
        outbox = link.outbox(sock)
        if outbox and not self._blackholed:
            with contextlib.suppress(BlockingIOError):
                del outbox[: sock.send(outbox)]

    def _from_client(self, link: _Link, data: bytes) -> None:
        link.to_server += data
        link.commands_in += data
        while (parsed := _parse_command(link.commands_in)) is not None:
            args, end = parsed
            del link.commands_in[:end]
            if args:  # Redis ignores an empty inline line and does not answer it
                self.commands += 1
                link.pending.append((args, self._should_drop(args)))
        self._flush(link, link.server)

    def _should_drop(self, args: list[bytes]) -> bool:
        for i, match in enumerate(self._drop_once):
            if match(args):
                del self._drop_once[i]
                return True
        if not self._drop_probability:
            return False
        if self._drop_match is not None and not self._drop_match(args):
            return False
        return self._rng.random() < self._drop_probability

    def _from_server(self, link: _Link, data: bytes) -> None:
        link.replies_in += data
        while (end := _frame_end(link.replies_in, 0)) is not None:
            frame = bytes(link.replies_in[:end])
            del link.replies_in[:end]
            if frame[0] != ord(">") and link.pending:  # push frames answer nothing
                self.replies += 1
                args, drop = link.pending.popleft()
                if drop:
                    self.dropped += 1
                    self.dropped_commands.append(tuple(args))
                    self._flush(link, link.client)  # earlier replies still go out
                    self._close(link, reset=True)
                    return
            link.to_client += frame
        self._flush(link, link.client)

    def _close(self, link: _Link, *, reset: bool) -> None:
        """Close both sides; ``reset`` sends the client a TCP reset, not a FIN."""
        if link.closed:
            return
        link.closed = True
        self._links.discard(link)
        for sock, events in link.events.items():
            if events:
                self._selector.unregister(sock)
            if not reset:  # a graceful close forwards what it can first
                with contextlib.suppress(OSError):
                    self._flush(link, sock)
        if reset:
            _reset(link.client)
        else:
            link.client.close()
        link.server.close()
