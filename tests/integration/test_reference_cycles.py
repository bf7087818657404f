"""A request leaves nothing for the cyclic garbage collector: what it allocates is freed by reference counting.

Objects caught in a reference cycle wait for a collection, and every collection walks all young objects:
at thousands of requests a second that was a few percent of the gateway's CPU (tests/bench, --gc-stats).
The gateway and the mock upstream run in this process, so the garbage is filtered to the gateway's side:
objects of the ASGI server, Litestar and escalade, and frames and coroutines running their code.
"""

import contextlib
import gc
import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

ROUTES = {"chat": {"strategy": "priority", "models": ["ok"]}}
MODELS = {"ok": {"provider": "mock", "model": "ok"}}
_OURS = ("gateway", "providers", "policies", "uvicorn", "litestar")
_OUR_DIRS = tuple(f"/{name}/" for name in _OURS)


def _ours(obj: Any) -> bool:
    if type(obj).__module__.split(".")[0] in _OURS:
        return True
    code = getattr(obj, "f_code", None) or getattr(obj, "cr_code", None) or getattr(obj, "ag_code", None)
    return code is not None and any(part in code.co_filename for part in _OUR_DIRS)


def _post(conn: http.client.HTTPConnection, body: dict[str, Any]) -> int:
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status


@contextlib.contextmanager
def cyclic_garbage() -> Iterator[list[Any]]:
    """The gateway-side objects the cyclic collector would free, made inside the block (filled at its end;
    automatic collections are off meanwhile)."""
    garbage: list[Any] = []
    gc.collect()
    gc.disable()
    try:
        yield garbage
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        garbage.extend(o for o in gc.garbage if _ours(o))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


@pytest.mark.parametrize(
    "body, status",
    [
        ({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}, 200),
        ({"model": "chat", "stream": True, "messages": [{"role": "user", "content": "hi"}]}, 200),
        ({"model": "nowhere", "messages": [{"role": "user", "content": "hi"}]}, 404),
        ({"model": "chat", "messages": "hi"}, 422),
    ],
    ids=["unary", "stream", "unknown-route", "bad-field"],
)
def test_requests_leave_no_reference_cycles(make_gateway, body: dict[str, Any], status: int) -> None:
    gw = make_gateway(models=MODELS, routes=ROUTES)
    conn = http.client.HTTPConnection("127.0.0.1", gw.gateway.port, timeout=10)
    assert _post(conn, body) == status  # first request: connection pools, caches and the like come to stay
    with cyclic_garbage() as garbage:
        for _ in range(20):
            assert _post(conn, body) == status
    conn.close()
    kinds = sorted({type(o).__qualname__ for o in garbage})
    assert len(garbage) < 20, f"{len(garbage)} objects in reference cycles after 20 requests: {kinds}"
