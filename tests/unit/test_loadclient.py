"""coscale.loadclient against real sockets on 127.0.0.1: small asyncio servers that answer
the way a server may (content-length, chunked, close, garbage, silence)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from coscale.load import classify_exception
from coscale.loadclient import (
    BadResponse,
    ConnectFailed,
    ConnectionPool,
    PeerClosed,
    Response,
    encode_request,
)
from coscale.types import Outcome

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one request (content-length bodies only)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return head, body


def ok(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body


async def serve(handler: Handler, fn: Callable[[int], Awaitable[None]]) -> None:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await fn(port)
    finally:
        server.close()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def test_encode_request_has_host_length_and_body() -> None:
    data = encode_request("POST", "/v1/x", "127.0.0.1:9", {"content-type": "a/b"}, b"xyz")
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/x HTTP/1.1"
    assert "host: 127.0.0.1:9" in lines and "content-type: a/b" in lines
    assert "content-length: 3" in lines and body == b"xyz"
    get = encode_request("GET", "/healthz", "h:1", {})
    assert b"content-length" not in get and get.endswith(b"\r\n\r\n")


def test_keep_alive_reuses_one_connection_and_echoes_bodies() -> None:
    connections = 0

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                _, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            writer.write(ok(body[::-1]))
            await writer.drain()
        writer.close()

    async def go(port: int) -> None:
        pool = ConnectionPool("127.0.0.1", port, 1)
        for i in range(20):
            body = f"request {i}".encode()
            r = await pool.request(encode_request("POST", "/", "x", {}, body))
            assert r == Response(200, body[::-1])
        assert pool.opened == 1 and connections == 1
        pool.close()

    run(serve(echo, go))


def test_concurrent_requests_never_exceed_the_pool_size() -> None:
    open_now = peak = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        try:
            while True:
                try:
                    _, body = await read_request(reader)
                except asyncio.IncompleteReadError:
                    break
                await asyncio.sleep(0.01)
                writer.write(ok(body))
                await writer.drain()
        finally:
            open_now -= 1
            writer.close()

    async def go(port: int) -> None:
        pool = ConnectionPool("127.0.0.1", port, 3)
        bodies = [str(i).encode() for i in range(30)]
        out = await asyncio.gather(
            *(pool.request(encode_request("POST", "/", "x", {}, b)) for b in bodies)
        )
        assert [r.body for r in out] == bodies  # each answer is its own request's
        assert pool.opened == 3 and peak == 3
        pool.close()

    run(serve(slow, go))


def test_chunked_body_is_joined() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    async def go(port: int) -> None:
        pool = ConnectionPool("127.0.0.1", port, 1)
        r = await pool.request(encode_request("GET", "/", "x", {}))
        assert r == Response(429, b"hello world")

    run(serve(chunked, go))


def test_connection_close_header_opens_a_new_connection_next_time() -> None:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"bye", "connection: close\r\n"))
        await writer.drain()
        writer.close()

    async def go(port: int) -> None:
        pool = ConnectionPool("127.0.0.1", port, 1)
        for _ in range(3):
            assert (await pool.request(encode_request("GET", "/", "x", {}))).body == b"bye"
        assert pool.opened == 3

    run(serve(closing, go))


def test_idle_connection_past_expiry_is_not_reused() -> None:
    now = [0.0]

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            writer.write(ok(b"k"))
            await writer.drain()
        writer.close()

    async def go(port: int) -> None:
        pool = ConnectionPool("127.0.0.1", port, 1, keepalive_expiry_s=2.0, clock=lambda: now[0])
        req = encode_request("GET", "/", "x", {})
        await pool.request(req)
        now[0] = 1.9
        await pool.request(req)
        assert pool.opened == 1
        now[0] = 4.0  # idle 2.1 s since the last answer
        await pool.request(req)
        assert pool.opened == 2

    run(serve(echo, go))


def test_server_closing_mid_response_is_peer_closed() -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.close()

    async def go(port: int) -> None:
        pool = ConnectionPool("127.0.0.1", port, 1)
        with pytest.raises(PeerClosed) as info:
            await pool.request(encode_request("GET", "/", "x", {}))
        assert classify_exception(info.value) == (Outcome.FAILED, "connection_closed")

    run(serve(half, go))


def test_garbage_is_bad_response() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SPDY/9 what\r\n\r\n")
        await writer.drain()

    async def go(port: int) -> None:
        pool = ConnectionPool("127.0.0.1", port, 1)
        with pytest.raises(BadResponse) as info:
            await pool.request(encode_request("GET", "/", "x", {}))
        assert classify_exception(info.value) == (Outcome.FAILED, "connection_error")

    run(serve(garbage, go))


def test_refused_port_is_connect_failed() -> None:
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

        async def go() -> None:
            pool = ConnectionPool("127.0.0.1", port, 1)
            with pytest.raises(ConnectFailed) as info:
                await pool.request(encode_request("GET", "/", "x", {}))
            assert classify_exception(info.value) == (Outcome.FAILED, "connect_error")

        run(go())


def test_cancelled_request_closes_its_connection_and_frees_the_slot() -> None:
    seen: list[bytes] = []

    async def late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                _, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            seen.append(body)
            if body == b"slow":
                await asyncio.sleep(0.3)
            try:
                writer.write(ok(body))
                await writer.drain()
            except ConnectionError:
                break
        writer.close()

    async def go(port: int) -> None:
        pool = ConnectionPool("127.0.0.1", port, 1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await pool.request(encode_request("POST", "/", "x", {}, b"slow"))
        # the slow answer must not be read as the next request's: a fresh connection
        r = await pool.request(encode_request("POST", "/", "x", {}, b"fast"))
        assert r.body == b"fast" and pool.opened == 2

    run(serve(late, go))


def test_warm_opens_connections_ahead_and_requests_reuse_them() -> None:
    accepted = 0

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        while True:
            try:
                _, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            writer.write(ok(body))
            await writer.drain()
        writer.close()

    async def go(port: int) -> None:
        pool = ConnectionPool("127.0.0.1", port, 4)
        assert await pool.warm(10) == 4  # never more than the pool's size
        await asyncio.sleep(0.05)
        assert accepted == 4 and pool.opened == 4
        out = await asyncio.gather(
            *(pool.request(encode_request("POST", "/", "x", {}, b"%d" % i)) for i in range(4))
        )
        assert [r.body for r in out] == [b"0", b"1", b"2", b"3"] and pool.opened == 4
        pool.close()

    run(serve(echo, go))


def test_a_run_fixes_time_zero_after_its_records_and_lets_other_runs_proceed() -> None:
    """``_prepare_open_loop`` builds every record, yielding to the loop between chunks,
    and only then sets ``t0``; another coroutine on the loop runs meanwhile."""
    from coscale.clock import ManualClock
    from coscale.load import (
        RECORDS_PER_YIELD,
        START_DELAY_S,
        LoadConfig,
        _prepare_open_loop,
        _Run,
        poisson_schedule,
    )

    clock = ManualClock(100.0)
    schedule = poisson_schedule(1000.0, 3.5 * RECORDS_PER_YIELD / 1000.0, seed=1)
    config = LoadConfig(url="http://127.0.0.1:9", model="m", rate_rps=1000.0, duration_s=1.0)
    run = _Run(None, config, None, clock, t0=0.0)  # type: ignore[arg-type]
    seen: list[int] = []

    async def other() -> None:
        for _ in range(3):
            seen.append(len(run.records))
            clock.advance(1.0)  # time passes while the records are built
            await asyncio.sleep(0)

    async def go() -> None:
        await asyncio.gather(_prepare_open_loop(run, schedule), other())

    asyncio.run(go())
    assert len(run.records) == len(schedule) and run.records[-1].index == len(schedule) - 1
    # the other coroutine ran between chunks, while time passed (3 s)...
    assert seen == [RECORDS_PER_YIELD, 2 * RECORDS_PER_YIELD, 3 * RECORDS_PER_YIELD]
    # ...and time 0 was fixed only once every record was built
    assert run.t0 == pytest.approx(103.0 + START_DELAY_S)
