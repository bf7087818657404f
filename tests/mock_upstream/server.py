"""A fast mock OpenAI-compatible upstream (raw asyncio + httptools).

The behaviour of every request (the *scenario*) is chosen by the request's
``model`` field (or the ``x-mock-scenario`` header, or a script installed with
``POST /_control/script``).  See README.md in this directory for the grammar.

Design notes
------------
* One ``asyncio.Protocol`` per connection, httptools for parsing, HTTP/1.1
  keep-alive.  Requests arriving while an (async) response is still being
  produced are queued and answered in order.
* The hot path ("ok", non-stream, no pacing) is handled synchronously inside
  ``data_received``: no task, no future, one ``transport.write``.
* Everything that needs time (streams, delays, faults) runs in one task per
  response; the peer closing the connection cancels it and marks the log
  record ``client_closed`` with ``closed_t``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import functools
import hashlib
import http
import itertools
import json
import os
import re
import socket
import struct
import sys
import threading
import time
import traceback
from typing import Any, Callable
from urllib.parse import parse_qsl

import httptools

try:  # msgspec is much faster; fall back to json if it is missing.
    import msgspec

    _encode: Callable[[Any], bytes] = msgspec.json.Encoder().encode
    _decode: Callable[[bytes], Any] = msgspec.json.decode
    _DecodeError: type[Exception] = msgspec.DecodeError
except ImportError:  # pragma: no cover
    def _encode(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    def _decode(data: bytes) -> Any:
        return json.loads(data)

    _DecodeError = ValueError

__all__ = ["MockUpstream", "ThreadHandle", "run_in_thread", "Scenario", "parse_scenario"]

_monotonic = time.monotonic
_now = time.time

SYSTEM_FINGERPRINT = "fp_mock0e5c4d"
MODELS = ("ok", "gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo-instruct", "text-embedding-3-small")
DEFAULT_EMBED_DIM = 1536

# ---------------------------------------------------------------------------
# Scenario parsing
# ---------------------------------------------------------------------------

_TRUE = frozenset(("1", "true", "yes", "on", ""))


class Scenario:
    """A parsed scenario string: ``name`` or ``name?k=v&k=v``."""

    __slots__ = ("raw", "name", "is_fault", "params")

    def __init__(self, raw: str) -> None:
        self.raw = raw
        base, sep, qs = raw.partition("?")
        self.params: dict[str, str] = dict(parse_qsl(qs, keep_blank_values=True)) if sep else {}
        if base.startswith("fault:"):
            self.is_fault = True
            self.name = base[6:]
        else:
            self.is_fault = False
            self.name = base

    def num(self, key: str, default: float = 0.0) -> float:
        v = self.params.get(key)
        if v is None or v == "":
            return default
        try:
            return float(v)
        except ValueError:
            return default

    def int(self, key: str, default: int = 0) -> int:
        return int(self.num(key, default))

    def flag(self, key: str) -> bool:
        v = self.params.get(key)
        return v is not None and v.lower() in _TRUE

    def __repr__(self) -> str:
        return f"Scenario({self.raw!r})"


_SCENARIO_CACHE: dict[str, Scenario] = {}


def parse_scenario(raw: str) -> Scenario:
    sc = _SCENARIO_CACHE.get(raw)
    if sc is None:
        if len(_SCENARIO_CACHE) > 4096:
            _SCENARIO_CACHE.clear()
        sc = _SCENARIO_CACHE[raw] = Scenario(raw)
    return sc


# ---------------------------------------------------------------------------
# HTTP helpers
# ---------------------------------------------------------------------------

_STATUS_LINES: dict[int, bytes] = {}


def _status_line(code: int) -> bytes:
    line = _STATUS_LINES.get(code)
    if line is None:
        try:
            phrase = http.HTTPStatus(code).phrase
        except ValueError:
            phrase = {529: "Site Overloaded"}.get(code, "Unknown")
        line = _STATUS_LINES[code] = b"HTTP/1.1 %d %s\r\n" % (code, phrase.encode())
    return line


_KA = b"connection: keep-alive\r\n"
_CLOSE = b"connection: close\r\n"
_JSON_CT = b"application/json"
_SSE_HEAD_TAIL = (
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\n"
    b"cache-control: no-cache\r\n"
)
_DONE = b"data: [DONE]\n\n"
_CHUNK_END = b"0\r\n\r\n"


def _head(status: int, ctype: bytes, length: int | None, ka: bool, rid: str, extra: bytes = b"") -> bytes:
    if length is None:  # SSE
        body_hdr = _SSE_HEAD_TAIL
    else:
        body_hdr = b"content-type: %s\r\ncontent-length: %d\r\n" % (ctype, length)
    return b"".join(
        (
            _status_line(status),
            body_hdr,
            b"x-request-id: ",
            rid.encode(),
            b"\r\nopenai-version: 2020-10-01\r\n",
            extra,
            _KA if ka else _CLOSE,
            b"\r\n",
        )
    )


def _frame(ev: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(ev), ev)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

_STATUS_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request (mock).", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model.", "permission_error", None),
    404: ("The model does not exist or you do not have access to it.", "invalid_request_error", "model_not_found"),
    408: ("Request timed out.", "timeout_error", None),
    409: ("Conflict.", "invalid_request_error", None),
    413: ("Request entity too large.", "invalid_request_error", None),
    422: ("Unprocessable entity.", "invalid_request_error", None),
    429: (
        "Rate limit reached for requests (mock). Please try again later.",
        "rate_limit_error",
        "rate_limit_exceeded",
    ),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", "overloaded"),
    504: ("Gateway timeout.", "server_error", None),
    529: ("Overloaded", "overloaded_error", "overloaded"),
}


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    return _encode({"error": {"message": message, "type": type_, "param": param, "code": code}})


def _status_error(status: int, sc: Scenario | None = None) -> bytes:
    msg, typ, code = _STATUS_ERRORS.get(
        status,
        (
            f"Mock error {status}.",
            "server_error" if status >= 500 else "invalid_request_error",
            None,
        ),
    )
    param = None
    if sc is not None:
        p = sc.params
        msg = p.get("message", msg)
        typ = p.get("type", typ)
        code = p.get("error_code", code)
        param = p.get("param") or None
    return error_body(msg, typ, param, code)


def _invalid_url(method: str, path: str) -> bytes:
    return error_body(f"Invalid URL ({method} {path})", "invalid_request_error")


# ---------------------------------------------------------------------------
# Content generation
# ---------------------------------------------------------------------------

_TOK_RE = re.compile(r"\s*\S+")
_FRAG_RE = re.compile(r"\w+|\W+")
_LOREM = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua"
).split()


def _tokenize(text: str) -> list[str]:
    return _TOK_RE.findall(text)


@functools.lru_cache(maxsize=256)
def _fixed_tokens(n: int) -> tuple[str, ...]:
    return tuple((_LOREM[i % len(_LOREM)] if i == 0 else " " + _LOREM[i % len(_LOREM)]) for i in range(n))


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict):
                t = part.get("text")
                if isinstance(t, str):
                    out.append(t)
            elif isinstance(part, str):
                out.append(part)
        return " ".join(out)
    return ""


def _scan_messages(msgs: Any) -> tuple[int, str]:
    """(prompt token count, text of last user message)."""
    words = 0
    last_user = ""
    if isinstance(msgs, list):
        for m in msgs:
            if not isinstance(m, dict):
                continue
            t = _text_of(m.get("content"))
            words += len(t.split()) + 1  # +1 per message, like role overhead
            if m.get("role") == "user":
                last_user = t
    return words, last_user


def _as_int(v: Any, default: int, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return default
    return max(lo, min(hi, int(v)))


def _fill_schema(schema: Any, root: Any, depth: int = 0) -> Any:
    """A minimal value valid against ``schema``: required props filled, strings "x"."""
    if depth > 16 or not isinstance(schema, dict):
        return {} if depth == 0 else "x"
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        node: Any = root
        for part in ref.lstrip("#").strip("/").split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return _fill_schema(node, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "default" in schema and depth > 0:
        return schema["default"]
    for key in ("anyOf", "oneOf", "allOf"):
        alts = schema.get(key)
        if isinstance(alts, list) and alts:
            for a in alts:
                if not (isinstance(a, dict) and a.get("type") == "null"):
                    return _fill_schema(a, root, depth + 1)
            return None
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "null")
    if t == "object" or (t is None and "properties" in schema) or (t is None and depth == 0):
        props = schema.get("properties")
        if not isinstance(props, dict):
            props = {}
        req = schema.get("required")
        if not isinstance(req, list):
            req = []
        return {k: _fill_schema(props.get(k, {}), root, depth + 1) for k in req if isinstance(k, str)}
    if t == "array":
        n = _as_int(schema.get("minItems"), 0, 0, 16)
        return [_fill_schema(schema.get("items", {}), root, depth + 1) for _ in range(n)]
    if t == "string":
        return "x" * max(1, _as_int(schema.get("minLength"), 1, 1, 64))
    if t == "integer":
        return _as_int(schema.get("minimum"), 0, -(2**53), 2**53)
    if t == "number":
        m = schema.get("minimum")
        return m if isinstance(m, (int, float)) and not isinstance(m, bool) else 0
    if t == "boolean":
        return False
    if t == "null":
        return None
    return "x"


def _pick_tool(body: dict) -> dict | None:
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    choice = body.get("tool_choice")
    if choice == "none":
        return None
    fn_tools = [t.get("function") for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if not fn_tools:
        return None
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else choice.get("name")
        if isinstance(name, str):
            for t in fn_tools:
                if t.get("name") == name:
                    return t
    return fn_tools[0]


def _logprob(i: int) -> float:
    return -round(0.0125 * ((i * 7) % 13) + 0.0001 * (i % 5) + 0.0003, 6)


def _chat_lp(tok: str, i: int, top: int) -> dict:
    lp = _logprob(i)
    tops = []
    if top:
        tops.append({"token": tok, "logprob": lp, "bytes": list(tok.encode())})
        for j in range(1, top):
            alt = f" alt{j}"
            tops.append({"token": alt, "logprob": round(lp - 1.5 * j, 6), "bytes": list(alt.encode())})
    return {"token": tok, "logprob": lp, "bytes": list(tok.encode()), "top_logprobs": tops}


def _legacy_lp(toks: list[str], top: int, offset0: int) -> dict:
    token_lps = []
    tops = []
    offsets = []
    off = offset0
    for i, tok in enumerate(toks):
        lp = _logprob(i)
        token_lps.append(lp)
        d = {tok: lp}
        for j in range(1, top):
            d[f" alt{j}"] = round(lp - 1.5 * j, 6)
        tops.append(d)
        offsets.append(off)
        off += len(tok)
    return {"tokens": list(toks), "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


def _apply_limits(toks: list[str], body: dict, keys: tuple[str, ...]) -> tuple[list[str], str]:
    """Cut tokens at max_tokens / stop; returns (tokens, finish_reason)."""
    finish = "stop"
    mt = None
    for k in keys:
        v = body.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            mt = v
            break
    if mt is not None and len(toks) > mt:
        toks = toks[: max(0, mt)]
        finish = "length"
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, list) and stop:
        text = "".join(toks)
        cut = -1
        for s in stop:
            if isinstance(s, str) and s:
                i = text.find(s)
                if i != -1 and (cut == -1 or i < cut):
                    cut = i
        if cut != -1:
            out = []
            pos = 0
            for t in toks:
                if pos + len(t) <= cut:
                    out.append(t)
                    pos += len(t)
                else:
                    if cut > pos:
                        out.append(t[: cut - pos])
                    break
            toks = out
            finish = "stop"
    return toks, finish


def _usage(prompt: int, completion: int, details: bool = True) -> dict:
    u: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if details:
        u["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
        u["completion_tokens_details"] = {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
    return u


_VEC_CACHE: dict[tuple[str, int], tuple[list[float], str]] = {}


def _embedding(key: str, dim: int) -> tuple[list[float], str]:
    hit = _VEC_CACHE.get((key, dim))
    if hit is not None:
        return hit
    raw = hashlib.shake_128(key.encode("utf-8", "surrogatepass")).digest(dim * 2)
    ints = struct.unpack(f"<{dim}H", raw)
    vals = [(v - 32767.5) / 32767.5 for v in ints]
    norm = sum(v * v for v in vals) ** 0.5 or 1.0
    packed = struct.pack(f"<{dim}f", *[v / norm for v in vals])
    floats = list(struct.unpack(f"<{dim}f", packed))  # float32-rounded, same as base64
    out = (floats, base64.b64encode(packed).decode())
    if len(_VEC_CACHE) > 2048:
        _VEC_CACHE.clear()
    _VEC_CACHE[(key, dim)] = out
    return out


def _models_body() -> bytes:
    return _encode(
        {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": 1700000000, "owned_by": "escalade-mock"} for m in MODELS],
        }
    )


_MODELS_BODY = _models_body()


# ---------------------------------------------------------------------------
# Plans: what a normal answer looks like, before delivery faults are applied.
# ---------------------------------------------------------------------------


class _Json:
    __slots__ = ("status", "body", "ctype", "extra", "tokens")

    def __init__(self, status: int, body: bytes, ctype: bytes = _JSON_CT, extra: bytes = b"", tokens: int = 0):
        self.status = status
        self.body = body
        self.ctype = ctype
        self.extra = extra
        self.tokens = tokens  # completion tokens, for pacing non-stream answers


class _Sse:
    """SSE events as (bytes, is_content).  ``prefix`` = leading non-content events."""

    __slots__ = ("events", "prefix")

    def __init__(self, events: list[tuple[bytes, bool]], prefix: int):
        self.events = events
        self.prefix = prefix


_MALFORMED = b"data: {not json\n\n"


# ---------------------------------------------------------------------------
# Dialects: how a provider family spells errors.  The default is OpenAI's;
# the other families (anthropic_wire.py, gemini_wire.py, azure_wire.py,
# mistral_wire.py) subclass it and register their paths through ``Route``.
# ---------------------------------------------------------------------------


class Dialect:
    """OpenAI's error shapes.  Subclasses override what their provider spells differently."""

    name = "openai"
    malformed = _MALFORMED

    def status_error(self, status: int, sc: Scenario, path: str) -> _Json:
        extra = b""
        if "retry_after" in sc.params:
            extra += b"retry-after: %s\r\n" % sc.params["retry_after"].encode()
        if "retry_after_ms" in sc.params:
            extra += b"retry-after-ms: %s\r\n" % sc.params["retry_after_ms"].encode()
        if status == 429:
            extra += b"x-ratelimit-remaining-requests: 0\r\nx-ratelimit-remaining-tokens: 0\r\n"
        return _Json(status, _status_error(status, sc), extra=extra)

    def context_length(self, sc: Scenario, path: str) -> _Json:
        param = {"/v1/completions": "prompt", "/v1/embeddings": "input"}.get(path, "messages")
        msg = sc.params.get(
            "message",
            "This model's maximum context length is 128000 tokens. However, your messages resulted in "
            "131072 tokens. Please reduce the length of the messages.",
        )
        return _Json(400, error_body(msg, "invalid_request_error", param, "context_length_exceeded"))

    def auth_error(self, headers: dict) -> _Json:
        auth = headers.get("authorization")
        if auth is not None:
            key = auth[7:] if auth[:7].lower() == "bearer " else auth
        else:
            key = headers.get("api-key")
        if key is not None:
            msg = (f"Incorrect API key provided: {key}. You can find your API key at "
                   "https://platform.openai.com/account/api-keys.")
        else:
            msg = ("You didn't provide an API key. You need to provide your API key in an Authorization "
                   "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        return _Json(401, error_body(msg, "invalid_request_error", None, "invalid_api_key"))

    def error_200_body(self, sc: Scenario) -> bytes:
        """A 200 whose body is an error (non-stream ``error_200``)."""
        return _status_error(500, sc)

    def error_event(self, sc: Scenario) -> bytes:
        """One in-stream error event (``error_200`` streams, ``stream_error``)."""
        return b"data: " + _status_error(500, sc) + b"\n\n"

    def invalid(self, status: int, message: str, param: str | None = None, code: str | None = None) -> _Json:
        """A 4xx produced by the mock itself (bad JSON, unknown fault, missing field)."""
        return _Json(status, error_body(message, "invalid_request_error", param, code))


OPENAI = Dialect()


class Route:
    """What a registered path resolves to.  ``model``/``stream`` come from the path when the
    provider puts them there (Azure deployments, Gemini models); ``check`` validates the request
    (auth headers, api versions) before any scenario runs and returns an error answer or None."""

    __slots__ = ("check", "dialect", "handler", "model", "stream")

    def __init__(self, handler: Callable, dialect: Dialect = OPENAI, model: str | None = None,
                 stream: bool | None = None, check: Callable[[dict, dict, Any], _Json | None] | None = None) -> None:
        self.handler = handler
        self.dialect = dialect
        self.model = model
        self.stream = stream
        self.check = check


# ---------------------------------------------------------------------------
# Connection protocol
# ---------------------------------------------------------------------------


class _Closed(Exception):
    pass


class _Conn(asyncio.Protocol):
    __slots__ = (
        "srv", "parser", "transport", "cid", "_url", "_headers", "_body", "_chunked",
        "_queue", "_busy", "_task", "rec", "closed", "server_closed", "_paused", "_drain",
        "_expect",
    )

    def __init__(self, srv: "MockUpstream") -> None:
        self.srv = srv
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.cid = next(srv._conn_ids)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._chunked = False
        self._expect = False
        self._queue: collections.deque = collections.deque()
        self._busy = False
        self._task: asyncio.Task | None = None
        self.rec: dict | None = None
        self.closed = False
        self.server_closed = False
        self._paused = False
        self._drain: asyncio.Future | None = None

    # -- asyncio callbacks --------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.srv._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.srv._conns.discard(self)
        rec = self.rec
        if rec is not None and rec["outcome"] == "pending":
            now = _monotonic()
            if self.srv._stopping:
                rec["outcome"] = "server_stopped"
            elif not self.server_closed:
                rec["outcome"] = "client_closed"
                rec["closed_t"] = now
            rec["t_done"] = now
        if self._task is not None:
            self._task.cancel()
        d = self._drain
        if d is not None and not d.done():
            d.set_exception(_Closed())
        self._queue.clear()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        d = self._drain
        if d is not None and not d.done():
            d.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._send_raw(400, error_body("Upgrades are not supported.", "invalid_request_error"), False)
        except httptools.HttpParserError as e:
            if not self.closed and not self._busy:
                self._send_raw(400, error_body(f"Malformed HTTP request: {e}", "invalid_request_error"), False)
            elif self.transport is not None:
                self.transport.close()

    # -- httptools callbacks -----------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._chunked = False
        self._expect = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        n = name.lower()
        if n == b"transfer-encoding" and b"chunked" in value.lower():
            self._chunked = True
        elif n == b"expect" and value.lower() == b"100-continue":
            self._expect = True

    def on_headers_complete(self) -> None:
        if self._expect and self.transport is not None and not self._busy:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        p = self.parser
        req = (
            p.get_method(),
            self._url,
            self._headers,
            b"".join(self._body),
            p.should_keep_alive(),
            self._chunked,
        )
        if self._busy or self._queue:
            self._queue.append(req)
        else:
            self._dispatch(req)

    def _dispatch(self, req: tuple) -> None:
        try:
            self.srv._handle(self, *req)
        except Exception as e:  # a bug in the mock: answer 500 instead of hiding it
            traceback.print_exc()
            if self.rec is None and not self._busy:
                self._send_raw(500, error_body(f"mock upstream internal error: {e!r}", "server_error"), False)
            elif self.transport is not None:
                self.transport.abort()

    # -- helpers ------------------------------------------------------------
    def _send_raw(self, status: int, body: bytes, ka: bool, rid: str = "req_mock") -> None:
        t = self.transport
        if t is None or self.closed:
            return
        t.write(_head(status, _JSON_CT, len(body), ka, rid) + body)
        if not ka:
            self.server_closed = True
            t.close()

    def spawn(self, coro: Any, rec: dict | None) -> None:
        self._busy = True
        self.rec = rec
        self._task = self.srv._loop.create_task(coro)
        self._task.add_done_callback(self._task_done)

    def _task_done(self, t: asyncio.Task) -> None:
        self._task = None
        self._busy = False
        rec = self.rec
        self.rec = None
        if not t.cancelled():
            exc = t.exception()
            if exc is not None and not isinstance(exc, (_Closed, ConnectionError)):
                print(f"mock_upstream: response task failed: {exc!r}", file=sys.stderr)
                if rec is not None and rec["outcome"] == "pending":
                    rec["outcome"] = "error"
                if self.transport is not None:
                    self.transport.abort()
                return
        if not self.closed:
            self.next_request()

    def hold(self, rec: dict) -> None:
        """Never answer: stay busy forever (until the peer or the server closes)."""
        self._busy = True
        self.rec = rec

    def next_request(self) -> None:
        while self._queue and not self._busy and not self.closed:
            self._dispatch(self._queue.popleft())

    def write(self, data: bytes) -> None:
        if self.closed:
            raise _Closed()
        self.transport.write(data)  # type: ignore[union-attr]

    async def drain(self) -> None:
        if self.closed:
            raise _Closed()
        if self._paused:
            self._drain = self.srv._loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None

    def close(self, rst: bool = False) -> None:
        """Server-initiated close (FIN, or RST with SO_LINGER 0)."""
        self.server_closed = True
        t = self.transport
        if t is None:
            return
        if rst:
            sock = t.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            t.abort()
        else:
            t.close()

    def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.transport is not None:
            self.transport.abort()


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


class MockUpstream:
    """Mock OpenAI-compatible server.  ``await start()`` / ``await stop()``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_enabled: bool = True,
        max_log: int = 20_000,
        reuse_port: bool = False,
    ) -> None:
        self.host = host
        self._port = port
        self.log: list[dict] = []
        self.log_enabled = log_enabled
        self.max_log = max_log
        self.scripts: dict[str, list] = {}
        self._reuse_port = reuse_port
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._conns: set[_Conn] = set()
        self._conn_ids = itertools.count(1)
        self._ids = itertools.count(1)
        self._idp = os.urandom(4).hex()
        self._stopping = False
        self._routes: dict[tuple[bytes, bytes], Callable] = {
            (b"POST", b"/v1/chat/completions"): self._chat,
            (b"POST", b"/v1/completions"): self._completions,
            (b"POST", b"/v1/embeddings"): self._embeddings,
            (b"GET", b"/v1/models"): self._models,
        }
        # Routing extension: matchers for other providers' paths, tried when the table above misses.
        self._matchers: list[Callable[[bytes, bytes, dict], Route | None]] = []
        # Fault extension: more `fault:<name>` behaviours, tried before the built-in ones.
        self._faults: dict[str, Callable[..., None]] = {}
        from tests.mock_upstream import extensions

        extensions.register(self)

    def add_matcher(self, matcher: Callable[[bytes, bytes, dict], Route | None]) -> None:
        """``matcher(method, path, query)`` returns a Route for the paths it serves, else None."""
        self._matchers.append(matcher)

    def add_fault(self, name: str, handler: Callable[..., None]) -> None:
        """``fault:<name>`` runs ``handler(server, conn, rec, sc, route, body, stream, ka, rid, headers, dialect)``."""
        self._faults[name] = handler

    def _resolve(self, method: bytes, path: bytes, query: dict) -> Route | None:
        fn = self._routes.get((method, path))
        if fn is not None:
            return Route(fn)
        if method == b"GET" and path.startswith(b"/v1/models/"):
            return Route(self._model_get)
        for matcher in self._matchers:
            found = matcher(method, path, query)
            if found is not None:
                return found
        return None

    # -- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        kw: dict[str, Any] = {"backlog": 2048}
        if self._reuse_port:
            kw["reuse_port"] = True
        self._server = await self._loop.create_server(lambda: _Conn(self), self.host, self._port, **kw)
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._stopping = True
        srv = self._server
        if srv is not None:
            srv.close()
        for c in list(self._conns):
            c.abort()
        if srv is not None:
            await srv.wait_closed()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        self._server = None

    async def __aenter__(self) -> "MockUpstream":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self._port}/v1"

    def reset(self) -> None:
        """Clear scripts and the log (the ``log`` list object is kept)."""
        self.log.clear()
        self.scripts.clear()

    def script(self, model: str, steps: list[str]) -> None:
        """Requests whose ``model`` is exactly ``model`` take ``steps`` in order
        (the last step repeats).  An empty list removes the script."""
        steps = [str(s) for s in steps]
        if steps:
            self.scripts[model] = [steps, 0]
        else:
            self.scripts.pop(model, None)

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{self._idp}{next(self._ids):016d}"

    def _append_log(self, rec: dict) -> None:
        log = self.log
        log.append(rec)
        if len(log) > self.max_log:
            del log[: max(1, self.max_log // 10)]

    # -- request entry point --------------------------------------------------
    def _handle(self, conn: _Conn, method: bytes, url: bytes, raw_headers: list, body: bytes, ka: bool, chunked: bool) -> None:
        path, _, query = url.partition(b"?")
        if path.startswith(b"/_control/"):
            self._control(conn, method, path, query, body, ka)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
        rid = "req_" + self._next_id("")
        rec: dict[str, Any] = {
            "t": _monotonic(),
            "method": method.decode("latin-1"),
            "path": path.decode("latin-1"),
            "headers": headers,
            "body": None,
            "model": None,
            "scenario": None,
            "stream": False,
            "outcome": "pending",
            "conn": conn.cid,
            "request_id": rid,
        }
        if self.log_enabled:
            self._append_log(rec)

        q = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True)) if query else {}
        if q:
            rec["query"] = q
        resolved = self._resolve(method, path, q)
        if resolved is None:
            status = 405 if any(p == path for (_, p) in self._routes) else 404
            self._finish_json(conn, rec, _Json(status, _invalid_url(rec["method"], rec["path"])), ka, rid, "error")
            return
        route, dialect = resolved.handler, resolved.dialect

        parsed: Any = None
        if method == b"POST":
            if chunked:
                self._finish_json(
                    conn, rec, dialect.invalid(400, "Chunked request bodies are not supported by the mock upstream."),
                    ka, rid, "error",
                )
                return
            try:
                parsed = _decode(body)
            except (_DecodeError, ValueError, UnicodeDecodeError):
                parsed = None
            if not isinstance(parsed, dict):
                self._finish_json(
                    conn, rec,
                    dialect.invalid(400,
                        "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                        "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
                        "sent was not valid JSON.)"),
                    ka, rid, "error",
                )
                return
            rec["body"] = parsed
        else:
            parsed = {}

        model = resolved.model if resolved.model is not None else parsed.get("model")
        rec["model"] = model
        rec["stream"] = stream = resolved.stream if resolved.stream is not None else parsed.get("stream") is True
        if resolved.check is not None:
            refused = resolved.check(headers, q, parsed)
            if refused is not None:
                self._finish_json(conn, rec, refused, ka, rid, "error")
                return
        raw = headers.get("x-mock-scenario")
        if raw is None:
            if isinstance(model, str):
                script = self.scripts.get(model)
                if script is not None:
                    steps, i = script
                    raw = steps[i] if i < len(steps) else steps[-1]
                    script[1] = i + 1
                    rec["step"] = i
                else:
                    raw = model
            elif method == b"POST":
                self._finish_json(
                    conn, rec, dialect.invalid(400, "you must provide a model parameter"), ka, rid, "error",
                )
                return
            else:
                raw = "ok"
        rec["scenario"] = raw
        sc = parse_scenario(raw)

        if sc.is_fault:
            self._fault(conn, rec, sc, route, parsed, stream, ka, rid, headers, dialect)
            return

        plan = route(parsed, sc, stream, rec)
        if isinstance(plan, _Json):
            lat = self._latency(sc, plan.tokens)
            if lat > 0:
                conn.spawn(self._delayed_json(conn, rec, plan, ka, rid, lat, "ok"), rec)
            else:
                self._finish_json(conn, rec, plan, ka, rid, "ok")
        else:
            fd, d, hd = sc.num("first_delay"), sc.num("delay"), sc.num("head_delay")
            if fd > 0 or d > 0 or hd > 0:
                conn.spawn(self._stream(conn, rec, plan.events, ka, rid, fd, d, "end", "ok", hd), rec)
                return
            # Unpaced stream: the whole chunked body in a single write.
            t = conn.transport
            if t is None or conn.closed:
                return
            parts = [_head(200, b"", None, ka, rid)]
            parts.extend(_frame(ev) for ev, _ in plan.events)
            parts.append(_CHUNK_END)
            t.write(b"".join(parts))
            rec["outcome"] = "ok"
            rec["status"] = 200
            rec["t_done"] = _monotonic()
            if not ka:
                conn.server_closed = True
                t.close()

    @staticmethod
    def _latency(sc: Scenario, tokens: int) -> float:
        p = sc.params
        if not p:
            return 0.0
        if "latency" in p:
            return sc.num("latency")
        return sc.num("head_delay") + sc.num("first_delay") + sc.num("delay") * tokens

    # -- delivery -------------------------------------------------------------
    def _finish_json(self, conn: _Conn, rec: dict, plan: _Json, ka: bool, rid: str, outcome: str) -> None:
        t = conn.transport
        if t is None or conn.closed:
            return
        t.write(_head(plan.status, plan.ctype, len(plan.body), ka, rid, plan.extra) + plan.body)
        rec["outcome"] = outcome
        rec["status"] = plan.status
        rec["t_done"] = _monotonic()
        if not ka:
            conn.server_closed = True
            t.close()

    async def _delayed_json(self, conn: _Conn, rec: dict, plan: _Json, ka: bool, rid: str, delay: float, outcome: str) -> None:
        await asyncio.sleep(delay)
        self._finish_json(conn, rec, plan, ka, rid, outcome)

    async def _stream(
        self,
        conn: _Conn,
        rec: dict,
        events: list[tuple[bytes, bool]],
        ka: bool,
        rid: str,
        first_delay: float,
        delay: float,
        tail: str,
        outcome: str,
        head_delay: float = 0.0,
        rst: bool = False,
    ) -> None:
        """Send an SSE response.  tail: "end" (terminate chunked body), "cut"
        (close the socket mid-body), "stall" (stay silent forever)."""
        if head_delay > 0:
            await asyncio.sleep(head_delay)
        conn.write(_head(200, b"", None, ka, rid))
        rec["status"] = 200
        for i, (ev, is_content) in enumerate(events):
            d = first_delay if i == 0 else (delay if is_content else 0.0)
            if d > 0:
                await asyncio.sleep(d)
            conn.write(_frame(ev))
            await conn.drain()
        if tail == "end":
            conn.write(_CHUNK_END)
            rec["outcome"] = outcome
            rec["t_done"] = _monotonic()
            if not ka:
                conn.close()
        elif tail == "cut":
            rec["outcome"] = outcome
            rec["t_done"] = _monotonic()
            conn.close(rst=rst)
        else:  # stall
            await self._loop.create_future()

    async def _drip(self, conn: _Conn, rec: dict, data: bytes, interval: float, size: int, ka: bool, outcome: str) -> None:
        for i in range(0, len(data), size):
            if i:
                await asyncio.sleep(interval)
            conn.write(data[i : i + size])
            await conn.drain()
        rec["outcome"] = outcome
        rec["t_done"] = _monotonic()
        if not ka:
            conn.close()

    # -- faults ---------------------------------------------------------------
    def _fault(self, conn: _Conn, rec: dict, sc: Scenario, route: Callable, body: dict, stream: bool,
               ka: bool, rid: str, headers: dict, dialect: Dialect = OPENAI) -> None:
        name = sc.name
        outcome = "fault:" + name
        path = rec["path"]
        extra = self._faults.get(name)
        if extra is not None:
            return extra(self, conn, rec, sc, route, body, stream, ka, rid, headers, dialect)
        if name.isdigit():
            name, status = "status", int(name)
        else:
            status = sc.int("code", 500)

        if name == "status":
            plan = dialect.status_error(status, sc, path)
            return self._json_maybe_delayed(conn, rec, plan, ka, rid, sc.num("delay"), outcome)

        if name == "context_length":
            plan = dialect.context_length(sc, path)
            return self._json_maybe_delayed(conn, rec, plan, ka, rid, sc.num("delay"), outcome)

        if name == "auth":
            plan = dialect.auth_error(headers)
            return self._json_maybe_delayed(conn, rec, plan, ka, rid, sc.num("delay"), outcome)

        if name == "redirect":
            to = sc.params.get("to") or (self.url + path)
            code = sc.int("code", 307)
            plan = _Json(code, b"", extra=b"location: %s\r\n" % to.encode())
            return self._json_maybe_delayed(conn, rec, plan, ka, rid, 0.0, outcome)

        if name == "html":
            plan = _Json(sc.int("code", 200), b"<html>Network connection lost.</html>", ctype=b"text/html")
            return self._json_maybe_delayed(conn, rec, plan, ka, rid, sc.num("delay"), outcome)

        if name == "reset":
            delay = sc.num("delay")
            if delay > 0:
                conn.spawn(self._reset_later(conn, rec, delay, outcome), rec)
            else:
                rec["outcome"] = outcome
                rec["t_done"] = _monotonic()
                conn.close(rst=True)
            return

        if name == "never":
            conn.hold(rec)
            return

        if name == "error_200":
            if stream:
                events = [(dialect.error_event(sc), False)]
                conn.spawn(self._stream(conn, rec, events, ka, rid, 0.0, 0.0, "end", outcome), rec)
            else:
                self._finish_json(conn, rec, _Json(200, dialect.error_200_body(sc)), ka, rid, outcome)
            return

        if name not in ("slow_first", "cut", "stall", "drip", "malformed", "stream_error"):
            plan = dialect.invalid(400, f"Unknown mock fault {sc.raw!r}.", "model", "unknown_mock_fault")
            return self._finish_json(conn, rec, plan, ka, rid, "error")

        # Delivery faults: build the normal answer, then mangle its delivery.
        plan = route(body, sc, stream, rec)
        if isinstance(plan, _Json) and plan.status != 200:
            return self._finish_json(conn, rec, plan, ka, rid, "error")  # the request itself was refused

        if name == "stream_error":
            if isinstance(plan, _Json):  # non-stream: the error arrives as a 200 error body
                return self._finish_json(conn, rec, _Json(200, dialect.error_200_body(sc)), ka, rid, outcome)
            events = [*plan.events[: plan.prefix + max(0, sc.int("after", 3))], (dialect.error_event(sc), False)]
            conn.spawn(self._stream(conn, rec, events, ka, rid, 0.0, sc.num("delay"), "end", outcome), rec)
            return

        if name == "slow_first":
            delay = sc.num("delay", 1.0)
            if isinstance(plan, _Json):
                conn.spawn(self._delayed_json(conn, rec, plan, ka, rid, delay, outcome), rec)
            else:
                conn.spawn(
                    self._stream(conn, rec, plan.events, ka, rid, delay, sc.num("chunk_delay"), "end", outcome), rec
                )
            return

        if name == "malformed":
            if isinstance(plan, _Json):
                b = plan.body
                plan.body = b[: max(1, len(b) // 2)]
                self._finish_json(conn, rec, plan, ka, rid, outcome)
            else:
                at = max(1, sc.int("at", 2))
                ev = plan.events
                if at <= len(ev):
                    ev[at - 1] = (dialect.malformed, ev[at - 1][1])
                conn.spawn(self._stream(conn, rec, ev, ka, rid, 0.0, sc.num("delay"), "end", outcome), rec)
            return

        if name in ("cut", "stall"):
            tail = name
            if isinstance(plan, _Json):
                nbytes = sc.int("bytes", len(plan.body) // 2)
                data = _head(plan.status, plan.ctype, len(plan.body), ka, rid, plan.extra) + plan.body[:nbytes]

                async def partial() -> None:
                    d = sc.num("delay")
                    if d > 0:
                        await asyncio.sleep(d)
                    conn.write(data)
                    rec["status"] = plan.status
                    if tail == "cut":
                        rec["outcome"] = outcome
                        rec["t_done"] = _monotonic()
                        conn.close(rst=sc.flag("rst"))
                    else:
                        await self._loop.create_future()

                conn.spawn(partial(), rec)
            else:
                after = max(0, sc.int("after", 3))
                events = plan.events[: plan.prefix + after]
                if tail == "cut" and sc.flag("terminate"):
                    # End the chunked body cleanly, but without finish chunk / [DONE].
                    conn.spawn(self._stream(conn, rec, events, ka, rid, 0.0, sc.num("delay"), "end", outcome), rec)
                else:
                    conn.spawn(
                        self._stream(conn, rec, events, ka, rid, 0.0, sc.num("delay"), tail, outcome,
                                     rst=sc.flag("rst")),
                        rec,
                    )
            return

        if name == "drip":
            interval = sc.num("interval", 0.2)
            size = max(1, sc.int("size", 1))
            if isinstance(plan, _Json):
                data = _head(plan.status, plan.ctype, len(plan.body), ka, rid, plan.extra) + plan.body
            else:
                data = _head(200, b"", None, ka, rid) + b"".join(_frame(e) for e, _ in plan.events) + _CHUNK_END
            rec["status"] = 200 if not isinstance(plan, _Json) else plan.status
            conn.spawn(self._drip(conn, rec, data, interval, size, ka, outcome), rec)
            return

    async def _reset_later(self, conn: _Conn, rec: dict, delay: float, outcome: str) -> None:
        await asyncio.sleep(delay)
        rec["outcome"] = outcome
        rec["t_done"] = _monotonic()
        conn.close(rst=True)

    def _json_maybe_delayed(self, conn: _Conn, rec: dict, plan: _Json, ka: bool, rid: str, delay: float, outcome: str) -> None:
        if delay > 0:
            conn.spawn(self._delayed_json(conn, rec, plan, ka, rid, delay, outcome), rec)
        else:
            self._finish_json(conn, rec, plan, ka, rid, outcome)

    # -- control API ----------------------------------------------------------
    def _control(self, conn: _Conn, method: bytes, path: bytes, query: bytes, body: bytes, ka: bool) -> None:
        status, out = 200, None
        try:
            if path == b"/_control/script" and method == b"POST":
                data = _decode(body)
                model, steps = data.get("model"), data.get("steps")
                if not isinstance(model, str) or not isinstance(steps, list):
                    raise ValueError('expected {"model": str, "steps": [str, ...]}')
                self.script(model, steps)
                out = {"ok": True, "model": model, "steps": len(steps)}
            elif path == b"/_control/reset" and method == b"POST":
                self.reset()
                out = {"ok": True}
            elif path == b"/_control/log" and method == b"GET":
                q = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
                recs = list(self.log)
                if "model" in q:
                    recs = [r for r in recs if r.get("model") == q["model"]]
                if "scenario" in q:
                    recs = [r for r in recs if r.get("scenario") == q["scenario"]]
                if "path" in q:
                    recs = [r for r in recs if r.get("path") == q["path"]]
                out = recs
            elif path == b"/_control/health" and method == b"GET":
                out = {"ok": True, "port": self._port}
            else:
                status, out = 404, {"error": {"message": f"unknown control endpoint {path.decode()}",
                                              "type": "invalid_request_error", "param": None, "code": None}}
        except Exception as e:  # noqa: BLE001 - report anything as 400
            status, out = 400, {"error": {"message": str(e), "type": "invalid_request_error",
                                          "param": None, "code": None}}
        conn._send_raw(status, _encode(out), ka)

    # -- endpoint builders ----------------------------------------------------
    def _chat(self, body: dict, sc: Scenario, stream: bool, rec: dict) -> _Json | _Sse:
        if sc.name.startswith("replay:") or "replay" in sc.params:  # recorded answers with logprobs
            from .replay import replay_chat

            return replay_chat(self, body, sc, stream)
        model = body.get("model")
        if not isinstance(model, str):
            model = "ok"
        n = _as_int(body.get("n"), 1, 1, 128)
        ptoks, last_user = _scan_messages(body.get("messages"))
        want_lp = body.get("logprobs") is True
        top = _as_int(body.get("top_logprobs"), 0, 0, 20) if want_lp else 0
        tool = _pick_tool(body)
        cid = self._next_id("chatcmpl-")
        created = int(_now())

        if tool is not None:
            name = tool.get("name") if isinstance(tool.get("name"), str) else "tool"
            params = tool.get("parameters")
            args = json.dumps(_fill_schema(params if isinstance(params, dict) else {}, params))
            frags = _FRAG_RE.findall(args)
            # tool_calls=N: N parallel calls of the chosen tool (one when parallel_tool_calls is false).
            k = 1 if body.get("parallel_tool_calls") is False else max(1, min(sc.int("tool_calls", 1), 64))
            call_ids = [[self._next_id("call_") for _ in range(k)] for _ in range(n)]
            usage = _usage(ptoks, len(frags) * n * k)
            if not stream:
                choices = [
                    {
                        "index": i,
                        "message": {
                            "role": "assistant",
                            "content": None,
                            "tool_calls": [
                                {"id": cid_, "type": "function", "function": {"name": name, "arguments": args}}
                                for cid_ in call_ids[i]
                            ],
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": "tool_calls",
                    }
                    for i in range(n)
                ]
                return _Json(200, self._chat_body(cid, created, model, choices, usage), tokens=len(frags) * k)
            pre, suf = self._chunk_affixes(cid, created, model, body, "chat.completion.chunk")
            events: list[tuple[bytes, bool]] = []
            for j in range(k):
                for i in range(n):
                    head = {"index": j, "id": call_ids[i][j], "type": "function",
                            "function": {"name": name, "arguments": ""}}
                    if j == 0:
                        delta = {"role": "assistant", "content": None, "tool_calls": [head], "refusal": None}
                    else:
                        delta = {"tool_calls": [head]}
                    events.append((self._chunk(pre, suf, [_cchoice(i, delta, None, None)]), j > 0))
                for f in frags:
                    for i in range(n):
                        delta = {"tool_calls": [{"index": j, "function": {"arguments": f}}]}
                        events.append((self._chunk(pre, suf, [_cchoice(i, delta, None, None)]), True))
            for i in range(n):
                events.append((self._chunk(pre, suf, [_cchoice(i, {}, None, "tool_calls")]), False))
            return self._finish_events(events, n, pre, usage, body)

        # Text content.
        p = sc.params
        rf = body.get("response_format")
        if "text" in p:
            toks = _tokenize(p["text"])
        elif isinstance(rf, dict) and rf.get("type") in ("json_object", "json_schema"):
            if rf.get("type") == "json_schema":
                js = rf.get("json_schema")
                schema = js.get("schema") if isinstance(js, dict) else None
                obj = _fill_schema(schema if isinstance(schema, dict) else {}, schema)
            else:
                obj = {}
            toks = _tokenize(json.dumps(obj))
        elif "tokens" in p:
            toks = list(_fixed_tokens(max(0, min(sc.int("tokens"), 1_000_000))))
        else:
            toks = _tokenize("mock answer to: " + last_user[:40])
        toks, finish = _apply_limits(toks, body, ("max_completion_tokens", "max_tokens"))
        usage = _usage(ptoks, len(toks) * n)

        if not stream:
            content = "".join(toks)
            lp_obj = None
            if want_lp:
                lp_obj = {"content": [_chat_lp(t, j, top) for j, t in enumerate(toks)], "refusal": None}
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                    "logprobs": lp_obj,
                    "finish_reason": finish,
                }
                for i in range(n)
            ]
            return _Json(200, self._chat_body(cid, created, model, choices, usage), tokens=len(toks))

        pre, suf = self._chunk_affixes(cid, created, model, body, "chat.completion.chunk")
        events = []
        for i in range(n):
            delta = {"role": "assistant", "content": "", "refusal": None}
            events.append((self._chunk(pre, suf, [_cchoice(i, delta, None, None)]), False))
        if n == 1 and not want_lp:
            # Fast path: splice the pre-encoded prefix/suffix around each token.
            mid = b'"choices":[{"index":0,"delta":{"content":'
            end = b'},"logprobs":null,"finish_reason":null}]'
            for t in toks:
                events.append((b"data: " + pre + mid + _encode(t) + end + suf + b"\n\n", True))
        else:
            for j, t in enumerate(toks):
                lp = {"content": [_chat_lp(t, j, top)], "refusal": None} if want_lp else None
                for i in range(n):
                    events.append((self._chunk(pre, suf, [_cchoice(i, {"content": t}, lp, None)]), True))
        for i in range(n):
            events.append((self._chunk(pre, suf, [_cchoice(i, {}, None, finish)]), False))
        return self._finish_events(events, n, pre, usage, body)

    @staticmethod
    def _chat_body(cid: str, created: int, model: str, choices: list, usage: dict) -> bytes:
        return _encode(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": choices,
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": SYSTEM_FINGERPRINT,
            }
        )

    @staticmethod
    def _include_usage(body: dict) -> bool:
        so = body.get("stream_options")
        return isinstance(so, dict) and so.get("include_usage") is True

    def _chunk_affixes(self, cid: str, created: int, model: str, body: dict, obj: str) -> tuple[bytes, bytes]:
        head = _encode({"id": cid, "object": obj, "created": created, "model": model})
        extra = b',"service_tier":"default"' if obj == "chat.completion.chunk" else b""
        pre = head[:-1] + extra + b',"system_fingerprint":"' + SYSTEM_FINGERPRINT.encode() + b'",'
        suf = b',"usage":null}' if self._include_usage(body) else b"}"
        return pre, suf

    @staticmethod
    def _chunk(pre: bytes, suf: bytes, choices: list) -> bytes:
        return b"data: " + pre + b'"choices":' + _encode(choices) + suf + b"\n\n"

    def _finish_events(self, events: list, n: int, pre: bytes, usage: dict, body: dict) -> _Sse:
        if self._include_usage(body):
            events.append((b"data: " + pre + b'"choices":[],"usage":' + _encode(usage) + b"}\n\n", False))
        events.append((_DONE, False))
        return _Sse(events, n)

    def _completions(self, body: dict, sc: Scenario, stream: bool, rec: dict) -> _Json | _Sse:
        model = body.get("model")
        if not isinstance(model, str):
            model = "ok"
        n = _as_int(body.get("n"), 1, 1, 128)
        prompt = body.get("prompt", "")
        prompts: list[tuple[str, int]] = []  # (text, prompt tokens)
        if isinstance(prompt, str):
            prompts.append((prompt, len(prompt.split())))
        elif isinstance(prompt, list) and prompt:
            if all(isinstance(x, int) for x in prompt):
                prompts.append(("", len(prompt)))
            else:
                for x in prompt:
                    if isinstance(x, str):
                        prompts.append((x, len(x.split())))
                    elif isinstance(x, list):
                        prompts.append(("", len(x)))
        if not prompts:
            prompts.append(("", 0))
        echo = body.get("echo") is True
        lpn = body.get("logprobs")
        want_lp = isinstance(lpn, int) and not isinstance(lpn, bool)
        top = max(0, min(5, lpn)) if want_lp else 0
        p = sc.params
        cid = self._next_id("cmpl-")
        created = int(_now())

        per_prompt = []
        total_c = 0
        for text, _ in prompts:
            if "text" in p:
                toks = _tokenize(p["text"])
            elif "tokens" in p:
                toks = list(_fixed_tokens(max(0, min(sc.int("tokens"), 1_000_000))))
            else:
                toks = _tokenize("mock answer to: " + text[:40])
            toks, finish = _apply_limits(toks, body, ("max_tokens",))
            per_prompt.append((text, toks, finish))
            total_c += len(toks) * n
        usage = _usage(sum(c for _, c in prompts), total_c, details=False)

        if not stream:
            choices = []
            for pi, (text, toks, finish) in enumerate(per_prompt):
                content = "".join(toks)
                for j in range(n):
                    choices.append(
                        {
                            "text": (text + content) if echo else content,
                            "index": pi * n + j,
                            "logprobs": _legacy_lp(toks, top, len(text) if echo else 0) if want_lp else None,
                            "finish_reason": finish,
                        }
                    )
            out = _encode(
                {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": SYSTEM_FINGERPRINT,
                    "choices": choices,
                    "usage": usage,
                }
            )
            return _Json(200, out, tokens=max((len(t) for _, t, _ in per_prompt), default=0))

        pre, suf = self._chunk_affixes(cid, created, model, body, "text_completion")
        events: list[tuple[bytes, bool]] = []
        prefix = 0
        if echo:
            for pi, (text, _, _) in enumerate(per_prompt):
                for j in range(n):
                    events.append((self._chunk(pre, suf, [_tchoice(pi * n + j, text, None, None)]), False))
                    prefix += 1
        longest = max(len(t) for _, t, _ in per_prompt)
        for k in range(longest):
            for pi, (text, toks, _) in enumerate(per_prompt):
                if k >= len(toks):
                    continue
                t = toks[k]
                lp = _legacy_lp([t], top, 0) if want_lp else None
                for j in range(n):
                    events.append((self._chunk(pre, suf, [_tchoice(pi * n + j, t, lp, None)]), True))
        for pi, (_, _, finish) in enumerate(per_prompt):
            for j in range(n):
                events.append((self._chunk(pre, suf, [_tchoice(pi * n + j, "", None, finish)]), False))
        sse = self._finish_events(events, 0, pre, usage, body)
        sse.prefix = prefix
        return sse

    def _embeddings(self, body: dict, sc: Scenario, stream: bool, rec: dict) -> _Json:
        model = body.get("model")
        if not isinstance(model, str):
            model = "ok"
        inp = body.get("input")
        items: list[tuple[str, int]] = []
        if isinstance(inp, str):
            items.append((inp, len(inp.split())))
        elif isinstance(inp, list) and inp:
            if all(isinstance(x, int) for x in inp):
                items.append((repr(inp), len(inp)))
            else:
                for x in inp:
                    if isinstance(x, str):
                        items.append((x, len(x.split())))
                    elif isinstance(x, list):
                        items.append((repr(x), len(x)))
        if not items:
            return _Json(400, error_body("'input' is a required property", "invalid_request_error", "input"))
        dim = _as_int(body.get("dimensions"), 0, 1, 65536) or sc.int("dim", DEFAULT_EMBED_DIM)
        dim = max(1, min(dim, 65536))
        b64 = body.get("encoding_format") == "base64"
        data = []
        ptoks = 0
        for i, (key, c) in enumerate(items):
            floats, enc = _embedding(key, dim)
            data.append({"object": "embedding", "index": i, "embedding": enc if b64 else floats})
            ptoks += c
        out = _encode(
            {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": ptoks, "total_tokens": ptoks}}
        )
        return _Json(200, out)

    def _models(self, body: dict, sc: Scenario, stream: bool, rec: dict) -> _Json:
        return _Json(200, _MODELS_BODY)

    def _model_get(self, body: dict, sc: Scenario, stream: bool, rec: dict) -> _Json:
        mid = rec["path"][len("/v1/models/"):]
        if mid not in MODELS and not mid.startswith("fault:"):
            return _Json(404, error_body(f"The model '{mid}' does not exist", "invalid_request_error", "model",
                                         "model_not_found"))
        return _Json(200, _encode({"id": mid, "object": "model", "created": 1700000000, "owned_by": "escalade-mock"}))


def _cchoice(i: int, delta: dict, lp: Any, finish: str | None) -> dict:
    return {"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}


def _tchoice(i: int, text: str, lp: Any, finish: str | None) -> dict:
    return {"text": text, "index": i, "logprobs": lp, "finish_reason": finish}


# ---------------------------------------------------------------------------
# Thread runner
# ---------------------------------------------------------------------------


def _new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    if use_uvloop:
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()


class ThreadHandle:
    """A MockUpstream running in a daemon thread with its own event loop."""

    def __init__(self, server: MockUpstream, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.server = server
        self.loop = loop
        self.thread = thread
        self._stopped = False

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def log(self) -> list[dict]:
        return self.server.log

    def _call(self, fn: Callable, *args: Any) -> Any:
        if self._stopped:
            return fn(*args)

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(5)

    def reset(self) -> None:
        self._call(self.server.reset)

    def script(self, model: str, steps: list[str]) -> None:
        self._call(self.server.script, model, steps)

    def records(self, model: str | None = None) -> list[dict]:
        return [r for r in list(self.server.log) if model is None or r.get("model") == model]

    def wait_for(self, pred: Callable[[list[dict]], Any], timeout: float = 5.0, interval: float = 0.005) -> Any:
        """Poll ``pred(log)`` until truthy; returns its value or raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            v = pred(list(self.server.log))
            if v:
                return v
            if time.monotonic() > deadline:
                raise TimeoutError("mock upstream: condition not met in time")
            time.sleep(interval)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)

    def __enter__(self) -> "ThreadHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def run_in_thread(port: int = 0, host: str = "127.0.0.1", *, use_uvloop: bool = True, **kwargs: Any) -> ThreadHandle:
    """Start a MockUpstream in a daemon thread; returns once it is listening."""
    started = threading.Event()
    box: dict[str, Any] = {}

    def main() -> None:
        loop = _new_loop(use_uvloop)
        asyncio.set_event_loop(loop)
        srv = MockUpstream(host, port, **kwargs)
        try:
            loop.run_until_complete(srv.start())
        except BaseException as e:  # noqa: BLE001
            box["error"] = e
            started.set()
            loop.close()
            return
        box["server"], box["loop"] = srv, loop
        started.set()
        try:
            loop.run_forever()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                loop.close()

    th = threading.Thread(target=main, name=f"mock-upstream:{port}", daemon=True)
    th.start()
    if not started.wait(10):
        raise RuntimeError("mock upstream did not start within 10 s")
    if "error" in box:
        raise box["error"]
    return ThreadHandle(box["server"], box["loop"], th)
