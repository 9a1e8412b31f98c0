"""A lean HTTP/1.1 client for the load generator's hot path.

Why not httpx for every request: the load generator shares the cores with the server
it measures, and every millisecond of client CPU per request is taken from the server.
httpx (through httpcore and h11, pure Python) costs 1.5–4 ms of CPU per request on
this project's 2-core machine (``benchmarks/bench_serving.py`` records it); this client
costs about 0.25 ms (``docs/benchmarks.md``, "A lean client for the load
generator"), so the measurements of overload, noisy neighbours and near-limit serving
describe the server, not the client.

What it does, and nothing more
------------------------------
* ``POST`` (and ``GET``) over plain HTTP/1.1 to one ``host:port``, with keep-alive.
* :class:`ConnectionPool` holds at most ``size`` connections. A request first takes a
  slot on an :class:`asyncio.Semaphore` of ``size`` (an O(1) wait, however long the
  backlog), then the most recently used idle connection (LIFO: the least likely to
  have expired), else opens a new one. A connection idle for more than
  ``keepalive_expiry_s`` is closed instead of reused, so the client never writes on a
  connection the server is closing (uvicorn closes after 5 s idle).
* Each connection is an :class:`asyncio.Protocol`; responses are parsed by httptools
  (llhttp, in C — the parser uvicorn uses for requests), which handles
  ``Content-Length`` and chunked bodies; a response that says ``Connection: close``
  (or HTTP/1.0 without keep-alive) closes its connection after it is read.
* :meth:`ConnectionPool.warm` opens connections before a timed run, so that its first
  requests do not queue behind a burst of connection set-ups.
* A request whose connection fails while it is in flight is **not** retried (a POST may
  have reached the server): it raises, and the load generator records it as failed.
* Cancellation (the caller's timeout) closes the request's connection: a response that
  arrives later must not be read as the answer to the next request.

Errors (the load generator maps them to its codes, :func:`coscale.load.classify_exception`):

=======================  ============================================  =====================
exception                when                                          code
=======================  ============================================  =====================
:class:`ConnectFailed`   the connection could not be opened            ``connect_error``
:class:`PeerClosed`      the server closed it before the full answer   ``connection_closed``
:class:`BadResponse`     the bytes received are not HTTP/1.1           ``connection_error``
=======================  ============================================  =====================
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httptools

__all__ = [
    "BadResponse",
    "ClientError",
    "ConnectFailed",
    "ConnectionPool",
    "PeerClosed",
    "Response",
    "encode_request",
]


class ClientError(Exception):
    """A request that got no (complete) HTTP response."""


class ConnectFailed(ClientError):
    """The connection could not be opened (refused, unreachable)."""


class PeerClosed(ClientError):
    """The server closed the connection (or it broke) before the response was complete."""


class BadResponse(ClientError):
    """The server's bytes are not a valid HTTP/1.1 response."""


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response: its status code and its body (de-chunked)."""

    status: int
    body: bytes


def encode_request(
    method: str, path: str, host: str, headers: Mapping[str, str], body: bytes = b""
) -> bytes:
    """The bytes of one HTTP/1.1 request: request line, ``host``, the given headers,
    ``content-length`` (when there is a body, or for POST/PUT), a blank line, the body.
    Header names and values must be ASCII without CR/LF (they are the caller's constants)."""
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"content-length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.chunks: list[bytes] = []
        self.closed = False
        self.reusable = True
        self.idle_since = 0.0

    # -------------------------------------------------------------- asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"malformed HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        detail = f": {exc}" if exc else ""
        self._fail(PeerClosed(f"the server closed the connection{detail}"))

    # -------------------------------------------------------------- httptools callbacks

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        body = b"".join(self.chunks)
        self.chunks = []
        if status < 200:  # an interim 1xx answer: the real one follows
            return
        if not self.parser.should_keep_alive():
            self.reusable = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(status, body))
        else:  # an answer nobody asked for: the connection is out of step
            self.reusable = False

    # -------------------------------------------------------------- use

    def _fail(self, exc: ClientError) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, data: bytes) -> asyncio.Future[Response]:
        """Write ``data`` (one whole request); the future resolves with its response."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise PeerClosed("the connection is closed")
        self.waiter = self.loop.create_future()
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.close()


class ConnectionPool:
    """At most ``size`` keep-alive connections to ``host:port`` (module docstring).

    ``clock``: seconds, monotonic (for keep-alive expiry only)."""

    def __init__(
        self,
        host: str,
        port: int,
        size: int,
        *,
        keepalive_expiry_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if size < 1:
            raise ValueError(f"a connection pool needs size >= 1 (got {size})")
        self.host, self.port, self.size = host, port, size
        self.keepalive_expiry_s = keepalive_expiry_s
        self.clock = clock
        self.slots = asyncio.Semaphore(size)
        self.idle: deque[_Connection] = deque()
        self.opened = 0  # connections ever opened (for tests and reports)

    def _take_idle(self) -> _Connection | None:
        now = self.clock()
        while self.idle:
            conn = self.idle.pop()
            if (
                conn.reusable
                and not conn.closed
                and now - conn.idle_since <= self.keepalive_expiry_s
            ):
                return conn
            conn.close()
        return None

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: _Connection(loop), self.host, self.port)
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        self.opened += 1
        return conn

    async def request(self, data: bytes, on_wire: Callable[[], None] | None = None) -> Response:
        """Send one encoded request (:func:`encode_request`) and return its response.
        ``on_wire`` is called when a connection slot is held (the request leaves the
        client's queue). Raises :class:`ClientError`; cancellation closes the connection."""
        async with self.slots:
            if on_wire is not None:
                on_wire()
            conn = self._take_idle() or await self._open()
            try:
                response = await conn.send(data)
            except BaseException:
                conn.close()
                raise
            if conn.reusable and not conn.closed:
                conn.idle_since = self.clock()
                self.idle.append(conn)
            else:
                conn.close()
            return response

    async def warm(self, n: int) -> int:
        """Open up to ``n`` connections (at most ``size`` in all) before the load starts,
        so that the first requests do not pay for connection set-up together (a burst
        of connects at the start of a timed run makes its first requests late). Returns
        how many opened; a failure to connect is left to the requests to report."""
        want = max(0, min(n, self.size) - len(self.idle))
        opened = await asyncio.gather(*(self._open() for _ in range(want)), return_exceptions=True)
        now = self.clock()
        ok = 0
        for conn in opened:
            if isinstance(conn, _Connection):
                conn.idle_since = now
                self.idle.append(conn)
                ok += 1
        return ok

    def close(self) -> None:
        """Close every idle connection (in-flight ones close when their request ends)."""
        while self.idle:
            self.idle.pop().close()
