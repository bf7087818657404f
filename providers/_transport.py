"""escalade's HTTP/1.1 transport under httpx: keep-alive pools on asyncio protocols, llhttp parsing.

httpx stays the HTTP API of the adapters (requests, responses, headers, timeouts, exceptions, and
`httpx.MockTransport` in tests); this module is only what moves bytes. It replaces httpx's own pool
(measured 4-7x slower than aiohttp's under concurrency, encode/httpx#3215) and the aiohttp transport
that came after it: one object per connection, the response parsed by httptools (llhttp, the parser
Node.js uses) as it arrives, no task per request, nothing between the socket and the adapter's reader.

What it guarantees, because the gateway's semantics rest on it:
- a body that ends before its Content-Length or its last chunk raises `httpx.RemoteProtocolError`
  (a cut answer must never look complete); so does a connection closed before a response;
- closing a response whose body was not read to the end closes the connection (the upstream sees the
  disconnect and stops generating); only a fully read keep-alive response returns it to the pool, or
  one the caller `finish`ed (it knows the answer is over) whose end arrives within a grace period;
- redirects are never followed (this layer does not know what one is);
- timeouts: `connect` bounds opening a connection (TLS included), `read` bounds each wait for bytes
  (the idle gap), `pool` bounds waiting for a free connection slot.
"""

import asyncio
import ssl
import time
from collections import deque
from typing import Any

import httptools
import httpx

_HIGH_WATER = 1 << 20
"""Buffered, unread body bytes above which the socket stops being read (back-pressure to the upstream)."""
_LOW_WATER = 1 << 18
_Origin = tuple[str, str, int]


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: httptools parser callbacks fill the current response's state."""

    def __init__(self, origin: _Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._lingering: tuple[H1Transport, asyncio.TimerHandle] | None = None
        self._reset()

    def _reset(self) -> None:
        self.busy = False
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.framed = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.error: Exception | None = None
        self.paused = False

    # ------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.busy or self.complete:  # bytes nobody asked for: this connection cannot be trusted
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response from upstream ({exc})"))
            self.close()

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost settles the response

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._lingering is not None:
            self._end_linger(reuse=False)
            return
        if not self.busy or self.complete or self.error is not None:
            self._wake()
            return
        if not self.head_done:
            self._fail(httpx.RemoteProtocolError("server disconnected without sending a response"))
        elif self.framed:
            self._fail(httpx.RemoteProtocolError("incomplete response body: the connection closed early"))
        else:  # no Content-Length, not chunked: the body is whatever came before the close
            self.complete = True
            self._wake()

    # ------------------------------------------------ httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            self.raw_headers = []
            return
        self.status = status
        for name, value in self.raw_headers:
            lower = name.lower()
            if lower == b"content-length" or (lower == b"transfer-encoding" and b"chunked" in value.lower()):
                self.framed = True
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._lingering is not None:  # body after the caller knew the answer was over: do not trust it
            self._end_linger(reuse=False)
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.head_done:  # the end of an interim (1xx) message
            return
        self.keep_alive = self.parser.should_keep_alive()  # (llhttp forgets it once the message is over)
        self.complete = True
        if self._lingering is not None:
            self._end_linger(reuse=True)
            return
        self._wake()

    # ------------------------------------------------ the reader's side

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        if self._lingering is not None:
            self._end_linger(reuse=False)
            return
        self._wake()

    def linger(self, pool: "H1Transport", grace_s: float) -> None:
        """The caller is done with a response whose last bytes (the end of its framing) may still be in
        flight: back to `pool` when the message completes within `grace_s`, closed on anything else."""
        timer = asyncio.get_running_loop().call_later(grace_s, self._end_linger, False)
        self._lingering = (pool, timer)

    def _end_linger(self, reuse: bool) -> None:
        if self._lingering is None:
            return
        pool, timer = self._lingering
        self._lingering = None
        timer.cancel()
        pool.release(self, reuse=reuse)

    async def wait(self, timeout: float | None, what: str) -> None:
        """Wait for the next parser event; `timeout` seconds without one is httpx.ReadTimeout."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter, what) if timeout is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def take(self) -> bytes:
        """Every buffered body byte, at once."""
        chunks = self.chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    @property
    def reusable(self) -> bool:
        return (
            self.complete
            and self.error is None
            and not self.lost
            and not self.chunks
            and self.keep_alive
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def _expire(waiter: "asyncio.Future[None]", what: str) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout(f"no data from upstream within the read timeout ({what})"))


class _Body(httpx.AsyncByteStream):
    """A response body as it arrives; returns the connection to the pool once read to its end."""

    def __init__(self, pool: "H1Transport", conn: _Connection, read_timeout: float | None) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self._read_timeout = read_timeout

    async def __aiter__(self) -> Any:
        conn = self._conn
        while conn is not None:
            if conn.chunks:
                yield conn.take()
                continue
            if conn.error is not None:
                error = conn.error
                self._release(reuse=False)
                raise error
            if conn.complete:
                self._release(reuse=True)
                return
            await conn.wait(self._read_timeout, "response body")

    def _release(self, *, reuse: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn, reuse=reuse)

    def finish(self, grace_s: float) -> None:
        """The caller knows the answer is over (an SSE stream's [DONE]) though the body may not have ended:
        the connection is kept for reuse if the rest of the message (e.g. the last chunk of a chunked body,
        which servers such as uvicorn write separately) arrives within `grace_s` and carries no more body;
        otherwise it is closed. Without this, every such stream would cost a new connection."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.complete or conn.error is not None or conn.lost or conn.chunks:
            self._pool.release(conn, reuse=True)  # (reused only when `reusable`)
            return
        conn.linger(self._pool, grace_s)

    async def aclose(self) -> None:
        # Unread body left: the upstream may still be generating; closing the connection stops it.
        self._release(reuse=True)


class H1Transport(httpx.AsyncBaseTransport):
    """An httpx transport: HTTP/1.1 keep-alive connections per origin, at most `max_connections` open."""

    def __init__(self, *, max_connections: int = 512, keepalive_s: float = 30.0) -> None:
        self._limit = max_connections
        self._keepalive_s = keepalive_s
        self._open = 0
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("the transport is closed")
        timeouts = request.extensions.get("timeout") or {}
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        origin = (scheme, url.host, url.port or (443 if scheme == "https" else 80))
        body = await request.aread()  # the bytes it was built with (a streamed body: read whole)
        head = _head(request, body)
        conn = await self._acquire(origin, timeouts.get("connect"), timeouts.get("pool"))
        conn.busy = True
        assert conn.transport is not None
        conn.transport.writelines((head, body))  # one send for both where the loop can
        read_timeout = timeouts.get("read")
        try:
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                if conn.lost:  # closed while idle in the pool, before this request was written
                    raise httpx.RemoteProtocolError("server disconnected without sending a response")
                await conn.wait(read_timeout, "response headers")
        except BaseException:
            self.release(conn, reuse=False)
            raise
        return httpx.Response(
            status_code=conn.status,
            headers=conn.raw_headers,
            stream=_Body(self, conn, read_timeout),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    # ------------------------------------------------ the pool

    async def _acquire(self, origin: _Origin, connect_s: float | None, pool_s: float | None) -> _Connection:
        while True:
            conn = self._take_idle(origin)
            if conn is not None:
                return conn
            if self._open < self._limit:
                break
            if not self._evict_one():
                await self._wait_for_slot(pool_s)
        self._open += 1
        try:
            return await self._connect(origin, connect_s)
        except BaseException:
            self._open -= 1
            self._wake_slot()
            raise

    def _take_idle(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        cutoff = time.monotonic() - self._keepalive_s
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed by the server
            if not conn.lost and conn.idle_since >= cutoff and not conn.transport.is_closing():  # type: ignore[union-attr]
                return conn
            self._drop(conn)
        return None

    def _evict_one(self) -> bool:
        """At the connection limit, close an idle connection to another origin to make room."""
        for idle in self._idle.values():
            if idle:
                self._drop(idle.pop(0))
                return True
        return False

    async def _connect(self, origin: _Origin, connect_s: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = self._ssl_context() if scheme == "https" else None
        try:
            async with asyncio.timeout(connect_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(origin), host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"could not connect within {connect_s}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"connection failed ({type(exc).__name__})") from None
        return conn

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    async def _wait_for_slot(self, pool_s: float | None) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            async with asyncio.timeout(pool_s):
                await waiter
        except TimeoutError:
            raise httpx.PoolTimeout(f"no free connection within {pool_s}s") from None
        finally:
            if waiter in self._slot_waiters:
                self._slot_waiters.remove(waiter)

    def _wake_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def release(self, conn: _Connection, *, reuse: bool) -> None:
        if reuse and conn.reusable and not self._closed:
            conn._reset()
            conn.idle_since = time.monotonic()
            self._idle.setdefault(conn.origin, []).append(conn)
            self._wake_slot()  # a waiter for this origin takes it; another origin opens a new one only if it can
            return
        self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1
        self._wake_slot()

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _head(request: httpx.Request, body: bytes) -> bytes:
    """The request line and headers. httpx.Request has already added Host and Content-Length."""
    url = request.url
    lines = [request.method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"]
    chunked = False
    for name, value in request.headers.raw:
        if name.lower() == b"transfer-encoding":  # a streamed request body, read whole above
            chunked = True
            continue
        lines += (name, b": ", value, b"\r\n")
    if chunked:
        lines.append(b"content-length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    return b"".join(lines)
