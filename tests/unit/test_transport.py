"""providers/_transport.py against a raw TCP server on loopback that answers exactly the bytes each test scripts.

What the gateway's semantics rest on: keep-alive reuse, a cut body never reading as complete, closing an
unread response closing the connection (the upstream stops), the timeouts, the pool limit.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from providers._transport import H1Transport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Upstream:
    """A loopback server: `handler` runs once per request read; counts connections and their closes."""

    def __init__(self, answer: Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[bool]]) -> None:
        self.answer = answer
        self.connections = 0
        self.closed_by_client = asyncio.Event()
        self.requests: list[tuple[bytes, bytes]] = []
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                if not await self.answer(head, body, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client.set()
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def upstream(
    answer: Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[bool]],
) -> AsyncIterator[Upstream]:
    up = Upstream(answer)
    server = await asyncio.start_server(up.serve, "127.0.0.1", 0)
    up.port = server.sockets[0].getsockname()[1]
    async with server:
        yield up


def client(up: Upstream, **transport: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{up.port}", transport=H1Transport(**transport), timeout=httpx.Timeout(2.0)
    )


def ok(body: bytes = b'{"ok":true}', extra: bytes = b"") -> Callable[..., Awaitable[bool]]:
    async def answer(head: bytes, _body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body))
        await writer.drain()
        return True

    return answer


async def test_sequential_requests_share_one_keep_alive_connection():
    async with upstream(ok()) as up, client(up) as c:
        for _ in range(5):
            response = await c.post("/v1/x", content=b"{}")
            assert response.status_code == 200 and response.json() == {"ok": True}
        assert up.connections == 1


async def test_request_head_and_body_reach_the_upstream_exactly():
    async with upstream(ok()) as up, client(up) as c:
        await c.post("/v1/chat?api-version=1", content=b'{"a":1}', headers={"authorization": "Bearer k"})
    head, body = up.requests[0]
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat?api-version=1 HTTP/1.1"
    assert f"host: 127.0.0.1:{up.port}".encode() in [line.lower() for line in lines]
    assert b"authorization: Bearer k" in lines
    assert body == b'{"a":1}'


async def test_a_body_cut_before_its_content_length_is_an_error_not_a_short_answer():
    async def answer(_h: bytes, _b: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
        await writer.drain()
        return False

    async with upstream(answer) as up, client(up) as c:
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete"):
            await c.post("/", content=b"")


async def test_a_chunked_body_cut_before_its_last_chunk_is_an_error():
    async def answer(_h: bytes, _b: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        return False

    async with upstream(answer) as up, client(up) as c:
        async with c.stream("POST", "/", content=b"") as response:
            seen = b""
            with pytest.raises(httpx.RemoteProtocolError):
                async for piece in response.aiter_bytes():
                    seen += piece
        assert seen == b"hello"


async def test_a_body_without_length_ends_at_the_close_and_the_connection_is_not_reused():
    async def answer(_h: bytes, _b: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()
        return False

    async with upstream(answer) as up, client(up) as c:
        assert (await c.post("/", content=b"")).content == b"all of it"
        assert (await c.post("/", content=b"")).content == b"all of it"
        assert up.connections == 2


async def test_connection_close_answers_are_not_reused():
    async with upstream(ok(extra=b"connection: close\r\n")) as up, client(up) as c:
        await c.post("/", content=b"")
        await c.post("/", content=b"")
        assert up.connections == 2


async def test_closing_an_unread_stream_closes_the_connection_so_the_upstream_stops():
    async def answer(_h: bytes, _b: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(200 if up.connections == 1 else 2):
            writer.write(b"5\r\ntoken\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async with upstream(answer) as up, client(up) as c:
        async with c.stream("POST", "/", content=b"") as response:
            async for _piece in response.aiter_bytes():
                break
        await asyncio.wait_for(up.closed_by_client.wait(), 1.0)
        assert (await c.post("/", content=b"")).status_code == 200  # a new connection, not the cut one
        assert up.connections == 2


async def test_no_response_headers_within_the_read_timeout_is_a_read_timeout():
    async def answer(_h: bytes, _b: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    async with upstream(answer) as up, client(up) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post("/", content=b"", timeout=httpx.Timeout(2.0, read=0.2))


async def test_a_silent_gap_in_the_body_is_a_read_timeout():
    async def answer(_h: bytes, _b: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n")
        await writer.drain()
        await asyncio.sleep(5)
        return False

    async with (
        upstream(answer) as up,
        client(up) as c,
        c.stream("POST", "/", content=b"", timeout=httpx.Timeout(2.0, read=0.2)) as response,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await response.aread()


async def test_a_refused_connection_is_a_connect_error():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with httpx.AsyncClient(transport=H1Transport()) as c:
        with pytest.raises(httpx.ConnectError):
            await c.post(f"http://127.0.0.1:{port}/", content=b"")


async def test_at_the_connection_limit_a_request_waits_for_a_slot_then_times_out_on_the_pool_timeout():
    release = asyncio.Event()

    async def answer(_h: bytes, _b: bytes, writer: asyncio.StreamWriter) -> bool:
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        return True

    async with upstream(answer) as up, client(up, max_connections=1) as c:
        first = asyncio.create_task(c.post("/", content=b""))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await c.post("/", content=b"", timeout=httpx.Timeout(2.0, pool=0.1))
        second = asyncio.create_task(c.post("/", content=b""))
        await asyncio.sleep(0.05)
        release.set()
        assert (await first).status_code == 200 and (await second).status_code == 200
        assert up.connections == 1  # the waiter took the freed connection


async def test_a_keep_alive_connection_the_server_closed_while_idle_is_replaced():
    async def answer(_h: bytes, _b: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        return False  # closes after answering, without saying connection: close

    async with upstream(answer) as up, client(up) as c:
        assert (await c.post("/", content=b"")).content == b"ok"
        await asyncio.sleep(0.05)  # the FIN arrives while the connection sits in the pool
        assert (await c.post("/", content=b"")).content == b"ok"
        assert up.connections == 2


async def test_a_large_body_arrives_whole_through_back_pressure():
    big = bytes(range(256)) * 20_000  # 5 MB: past the buffer's high-water mark
    async with upstream(ok(big)) as up, client(up) as c:
        async with c.stream("POST", "/", content=b"") as response:
            got = b""
            async for piece in response.aiter_bytes():
                got += piece
                await asyncio.sleep(0)
        assert got == big
        assert (await c.post("/", content=b"")).content == big
        assert up.connections == 1


async def test_a_malformed_response_is_a_protocol_error():
    async def answer(_h: bytes, _b: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        return False

    async with upstream(answer) as up, client(up) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.post("/", content=b"")


async def test_a_closed_transport_refuses_new_requests():
    async with upstream(ok()) as up:
        transport = H1Transport()
        c = httpx.AsyncClient(base_url=f"http://127.0.0.1:{up.port}", transport=transport)
        await c.post("/", content=b"")
        await c.aclose()
        with pytest.raises(httpx.ConnectError):
            await transport.handle_async_request(httpx.Request("POST", f"http://127.0.0.1:{up.port}/"))


def sse_then_end(gap_s: float | None, after_done: bytes = b"0\r\n\r\n") -> Callable[..., Awaitable[bool]]:
    """A chunked SSE answer whose last chunk (`after_done`) comes `gap_s` after [DONE], as uvicorn writes it
    (None: it never comes; the server waits for the next request)."""

    async def answer(head: bytes, _body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for event in (b'data: {"n":1}\n\n', b"data: [DONE]\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
        if gap_s is not None:
            await asyncio.sleep(gap_s)
            writer.write(after_done)
            await writer.drain()
        return True

    return answer


async def read_until_done(c: httpx.AsyncClient, grace_s: float = 1.0) -> None:
    """As the OpenAI-compatible adapter reads: up to [DONE], then `finish` (the answer is over)."""
    request = c.build_request("POST", "/v1/x", content=b"{}")
    response = await c._transport.handle_async_request(request)  # as UpstreamClient.send_direct: no httpx wrapper
    seen = b""
    async for piece in response.aiter_bytes():
        seen += piece
        if b"data: [DONE]\n\n" in seen:
            break
    response.stream.finish(grace_s)  # type: ignore[attr-defined]
    await response.aclose()


async def test_a_finished_stream_whose_last_chunk_comes_late_keeps_its_connection():
    async with upstream(sse_then_end(0.05)) as up, client(up) as c:
        for _ in range(4):
            await read_until_done(c)
            await asyncio.sleep(0.1)  # the last chunk arrives while the connection waits for it
        assert up.connections == 1


async def test_a_finished_stream_that_sends_more_body_is_closed_not_reused():
    more = b"5\r\nextra\r\n0\r\n\r\n"
    async with upstream(sse_then_end(0.02, more)) as up, client(up) as c:
        await read_until_done(c)
        await asyncio.wait_for(up.closed_by_client.wait(), 2)
        await read_until_done(c)
        assert up.connections == 2


async def test_a_finished_stream_whose_end_never_comes_is_closed_after_the_grace_period():
    async with upstream(sse_then_end(None)) as up, client(up) as c:
        await read_until_done(c, grace_s=0.1)
        await asyncio.wait_for(up.closed_by_client.wait(), 2)


async def test_event_stream_finishes_a_stream_that_ended_with_done_and_keeps_its_connection():
    """The wiring the adapters use: `event_stream` sees [DONE] go by and hands the connection back."""
    import time

    from providers._http import event_stream, json_client
    from providers.base import Call, Timeouts

    async with upstream(sse_then_end(0.05)) as up:
        c = json_client(f"http://127.0.0.1:{up.port}", {}, Timeouts())
        try:
            for n in range(3):
                call = Call(request_id=f"r{n}", upstream_model="m", timeouts=Timeouts(), deadline=time.monotonic() + 5)
                opened = event_stream(
                    c,
                    "/v1/x",
                    b"{}",
                    call,
                    provider="p",
                    error_for=None,
                    not_a_stream=None,  # type: ignore[arg-type]
                )
                async with opened as events:
                    seen = []
                    async for data in events:
                        seen.append(data)
                        if data == b"[DONE]":
                            break  # as the adapters stop: the body's last chunk has not arrived yet
                    assert seen == [b'{"n":1}', b"[DONE]"]
                await asyncio.sleep(0.1)  # the last chunk arrives while the connection waits for it
        finally:
            await c.aclose()
        assert up.connections == 1
