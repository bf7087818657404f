"""More faults, for the fault suite (tests/faults): an answer that never ends, an outage that ends at a
given moment, a complete stream without its ``[DONE]``.

``fault:trickle`` -- the upstream keeps sending bytes and never finishes:

* stream: headers, the role chunk and ``after`` content events at once (default 1), then the same
  content event again and again forever, written ``size`` bytes (default 16) every ``interval``
  seconds (default 0.01). Every SSE event is well formed; there is no finish chunk and no ``[DONE]``.
  No idle timeout ever fires; only a cap on the whole answer ends it.
* non-stream: a 200 whose ``content-length`` promises 1 GB, then JSON whitespace trickled the same way.

``fault:outage?until=T`` -- before ``time.monotonic()`` reaches ``T`` every request gets the status
error of ``code`` (default 503, with ``retry_after``/``message`` as for ``fault:status``); from ``T``
on the normal answer (``tokens=``/``text=`` apply). ``time.monotonic()`` is system-wide on Linux, so a
test in another process can compute ``T``. The log's ``outcome`` is ``fault:outage`` while down, ``ok``
once recovered.

``fault:no_done`` -- stream: the normal stream (finish chunk and usage included) whose chunked body
ends cleanly without ``data: [DONE]``. Non-stream: the normal answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .server import _DONE, _frame, _head, _Json, _Sse

if TYPE_CHECKING:
    from .server import Dialect, MockUpstream, Scenario, _Conn

_ENDLESS_LENGTH = 1 << 30


def _trickle(
    srv: MockUpstream,
    conn: _Conn,
    rec: dict,
    sc: Scenario,
    route: Callable,
    body: dict,
    stream: bool,
    ka: bool,
    rid: str,
    headers: dict,
    dialect: Dialect,
) -> None:
    plan = route(body, sc, stream, rec)
    if isinstance(plan, _Json) and plan.status != 200:
        srv._finish_json(conn, rec, plan, ka, rid, "error")
        return
    if isinstance(plan, _Sse):
        content = [ev for ev, is_content in plan.events if is_content]
        if not content:
            srv._finish_json(conn, rec, dialect.invalid(400, "trickle needs an answer with content"), ka, rid, "error")
            return
        after = max(0, sc.int("after", 1))
        first = _head(200, b"", None, ka, rid) + b"".join(_frame(ev) for ev, _ in plan.events[: plan.prefix + after])
        unit = _frame(content[min(after, len(content) - 1)])
    else:
        first = _head(200, plan.ctype, _ENDLESS_LENGTH, ka, rid, plan.extra)
        unit = b" " * 64
    rec["status"] = 200
    conn.spawn(_send_forever(conn, first, unit, max(1, sc.int("size", 16)), sc.num("interval", 0.01)), rec)


async def _send_forever(conn: _Conn, first: bytes, unit: bytes, size: int, interval: float) -> None:
    conn.write(first)
    pending = b""
    while True:
        if len(pending) < size:
            pending += unit
        piece, pending = pending[:size], pending[size:]
        await asyncio.sleep(interval)
        conn.write(piece)
        await conn.drain()


def _outage(
    srv: MockUpstream,
    conn: _Conn,
    rec: dict,
    sc: Scenario,
    route: Callable,
    body: dict,
    stream: bool,
    ka: bool,
    rid: str,
    headers: dict,
    dialect: Dialect,
) -> None:
    if time.monotonic() < sc.num("until"):
        plan = dialect.status_error(sc.int("code", 503), sc, rec["path"])
        srv._finish_json(conn, rec, plan, ka, rid, "fault:outage")
        return
    answer = route(body, sc, stream, rec)
    if isinstance(answer, _Json):
        srv._finish_json(conn, rec, answer, ka, rid, "ok" if answer.status == 200 else "error")
        return
    conn.spawn(srv._stream(conn, rec, answer.events, ka, rid, 0.0, 0.0, "end", "ok"), rec)


def _no_done(
    srv: MockUpstream,
    conn: _Conn,
    rec: dict,
    sc: Scenario,
    route: Callable,
    body: dict,
    stream: bool,
    ka: bool,
    rid: str,
    headers: dict,
    dialect: Dialect,
) -> None:
    answer = route(body, sc, stream, rec)
    if isinstance(answer, _Json):
        srv._finish_json(conn, rec, answer, ka, rid, "fault:no_done" if answer.status == 200 else "error")
        return
    events = [(ev, is_content) for ev, is_content in answer.events if ev != _DONE]
    conn.spawn(srv._stream(conn, rec, events, ka, rid, 0.0, 0.0, "end", "fault:no_done"), rec)


def register(srv: MockUpstream) -> None:
    srv.add_fault("trickle", _trickle)
    srv.add_fault("outage", _outage)
    srv.add_fault("no_done", _no_done)
