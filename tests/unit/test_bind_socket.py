"""The server's listening socket: accepted connections send small responses at once."""

from __future__ import annotations

import asyncio
import socket

import pytest

from coscale.api import bind_socket
from coscale.errors import CoscaleError


def test_accepted_connections_have_nagle_off_under_the_standard_asyncio_loop() -> None:
    """asyncio sets TCP_NODELAY only when the socket's proto is IPPROTO_TCP; a listener
    made with proto 0 left Nagle on, and every response waited ~40 ms for a delayed ACK."""

    async def accepted_nodelay() -> int:
        sock = bind_socket("127.0.0.1", 0)
        loop = asyncio.get_running_loop()
        seen: asyncio.Future[int] = loop.create_future()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted = writer.get_extra_info("socket")
            seen.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            value = await asyncio.wait_for(seen, 5)
            writer.close()
        return value

    assert type(asyncio.new_event_loop()).__module__.startswith("asyncio")
    assert asyncio.run(accepted_nodelay()) != 0


def test_a_busy_port_is_a_clear_error() -> None:
    first = bind_socket("127.0.0.1", 0)
    try:
        with pytest.raises(CoscaleError, match=r"cannot listen on 127\.0\.0\.1"):
            bind_socket("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()
