"""The mock's Anthropic Messages API: POST /v1/messages, JSON and SSE (``event:`` lines), Anthropic errors.

Shapes follow https://docs.anthropic.com/en/api/messages, /en/docs/build-with-claude/streaming and
/en/api/errors (read 2026-05). The scenario is the body's ``model`` (or a script / the header), as
for OpenAI. See README.md ("Anthropic") for what the mock checks and produces.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .server import (
    _FRAG_RE,
    Dialect,
    MockUpstream,
    Route,
    Scenario,
    _encode,
    _fill_schema,
    _fixed_tokens,
    _Json,
    _Sse,
    _tokenize,
)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_MESSAGES = {
    "invalid_request_error": "Invalid request (mock).",
    "authentication_error": "invalid x-api-key",
    "billing_error": "Your credit balance is too low to access the Anthropic API.",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "model: not found (mock)",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit (mock).",
    "api_error": "Internal server error",
    "timeout_error": "Request timed out (mock).",
    "overloaded_error": "Overloaded",
}


def error_json(kind: str, message: str) -> bytes:
    return _encode({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_mock0error"})


def _sse(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encode(data) + b"\n\n"


class AnthropicDialect(Dialect):
    name = "anthropic"
    malformed = b"event: content_block_delta\ndata: {not json\n\n"

    def _error(self, status: int, sc: Scenario | None, default_kind: str | None = None) -> _Json:
        kind = default_kind or _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        message = _MESSAGES.get(kind, f"Mock error {status}.")
        if sc is not None:
            kind = sc.params.get("type", kind)
            message = sc.params.get("message", message)
        return _Json(status, error_json(kind, message))

    def status_error(self, status: int, sc: Scenario, path: str) -> _Json:
        plan = self._error(status, sc)
        if "retry_after" in sc.params:
            plan.extra += b"retry-after: %s\r\n" % sc.params["retry_after"].encode()
        if status == 429:
            plan.extra += b"anthropic-ratelimit-requests-remaining: 0\r\n"
        return plan

    def context_length(self, sc: Scenario, path: str) -> _Json:
        message = sc.params.get("message", "prompt is too long: 208310 tokens > 200000 maximum")
        return _Json(400, error_json("invalid_request_error", message))

    def auth_error(self, headers: dict) -> _Json:
        key = headers.get("x-api-key")
        message = f"invalid x-api-key: {key}" if key else "x-api-key header is required"
        return _Json(401, error_json("authentication_error", message))

    def error_200_body(self, sc: Scenario) -> bytes:
        return self._error(529, sc).body

    def error_event(self, sc: Scenario) -> bytes:
        return b"event: error\ndata: " + self._error(529, sc).body + b"\n\n"

    def invalid(self, status: int, message: str, param: str | None = None, code: str | None = None) -> _Json:
        return _Json(status, error_json("invalid_request_error", message))


ANTHROPIC = AnthropicDialect()


def _check(headers: dict, query: dict, body: Any) -> _Json | None:
    if not headers.get("x-api-key"):
        return ANTHROPIC.auth_error(headers)
    if not headers.get("anthropic-version"):
        return ANTHROPIC.invalid(400, "anthropic-version: header is required")
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    out: list[str] = []
    for block in content if isinstance(content, list) else ():
        if isinstance(block, dict):
            if isinstance(block.get("text"), str):
                out.append(block["text"])
            elif block.get("type") == "tool_result":
                out.append(_text(block.get("content", "")))
    return " ".join(out)


def _validate(body: dict) -> str | None:
    """The checks the real API makes that an adapter is most likely to get wrong."""
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
    if "system" in body and not isinstance(body["system"], (str, list)):
        return "system: Input should be a valid string or list"
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        if budget >= max_tokens:
            return "`max_tokens` must be greater than `thinking.budget_tokens`"
    return None


class _Answer:
    """What the mock says, before it is framed as JSON or SSE."""

    def __init__(self) -> None:
        self.thinking: list[str] = []
        self.text: list[str] = []
        self.tools: list[tuple[str, str, str]] = []  # (id, name, arguments JSON)
        self.stop_reason = "end_turn"
        self.stop_sequence: str | None = None


def _answer(srv: MockUpstream, body: dict, sc: Scenario) -> tuple[_Answer, int]:
    """(the answer, prompt words)."""
    messages = body["messages"]
    words = len(_text(body.get("system", "")).split())
    last_user = ""
    for m in messages:
        t = _text(m.get("content"))
        words += len(t.split()) + 1
        if m.get("role") == "user":
            last_user = t
    a = _Answer()
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        a.thinking = _tokenize("mock thinking about: " + last_user[:24])
    tools = [t for t in body.get("tools") or () if isinstance(t, dict) and isinstance(t.get("name"), str)]
    choice = body.get("tool_choice") if isinstance(body.get("tool_choice"), dict) else {"type": "auto"}
    if tools and choice.get("type") != "none":
        if choice.get("type") == "tool":
            tools = [t for t in tools if t["name"] == choice.get("name")] or tools
        count = 1 if choice.get("disable_parallel_tool_use") else max(1, sc.int("tool_calls", 1))
        for i in range(count):
            tool = tools[i % len(tools)]
            schema = tool.get("input_schema")
            args = json.dumps(_fill_schema(schema if isinstance(schema, dict) else {}, schema))
            a.tools.append((srv._next_id("toolu_"), tool["name"], args))
        a.stop_reason = "tool_use"
        return a, words
    p = sc.params
    fmt = (body.get("output_config") or {}).get("format") if isinstance(body.get("output_config"), dict) else None
    if "text" in p:
        toks = _tokenize(p["text"])
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        toks = _tokenize(json.dumps(_fill_schema(fmt.get("schema") or {}, fmt.get("schema"))))
    elif "tokens" in p:
        toks = list(_fixed_tokens(max(0, min(sc.int("tokens"), 1_000_000))))
    else:
        toks = _tokenize("mock answer to: " + last_user[:40])
    room = body["max_tokens"] - len(a.thinking)
    if len(toks) > room:
        toks, a.stop_reason = toks[: max(0, room)], "max_tokens"
    stops = [s for s in body.get("stop_sequences") or () if isinstance(s, str) and s]
    text = "".join(toks)
    hits = [(text.find(s), s) for s in stops if s in text]
    if hits:
        cut, seq = min(hits)
        toks, a.stop_reason, a.stop_sequence = _tokenize(text[:cut]), "stop_sequence", seq
    a.text = toks
    a.stop_reason = p.get("stop_reason", a.stop_reason)
    return a, words


def _signature(a: _Answer) -> str:
    return "EqMock" + hashlib.sha256("".join(a.thinking).encode()).hexdigest()[:40]


def _usage(sc: Scenario, prompt: int, output: int) -> dict:
    return {
        "input_tokens": prompt,
        "cache_creation_input_tokens": sc.int("cache_write", 0),
        "cache_read_input_tokens": sc.int("cached", 0),
        "output_tokens": output,
    }


def _messages(srv: MockUpstream):
    def handler(body: dict, sc: Scenario, stream: bool, rec: dict) -> _Json | _Sse:
        problem = _validate(body)
        if problem is not None:
            return ANTHROPIC.invalid(400, problem)
        a, prompt = _answer(srv, body, sc)
        mid = srv._next_id("msg_")
        model = body["model"]
        output = len(a.thinking) + len(a.text) + sum(len(_FRAG_RE.findall(t[2])) for t in a.tools)
        usage = _usage(sc, prompt, output)
        if not stream:
            return _Json(200, _encode(_message(mid, model, a, usage)), tokens=output)
        return _stream(mid, model, a, usage)

    return handler


def _message(mid: str, model: str, a: _Answer, usage: dict) -> dict:
    content: list[dict] = []
    if a.thinking:
        content.append({"type": "thinking", "thinking": "".join(a.thinking), "signature": _signature(a)})
    if a.text:
        content.append({"type": "text", "text": "".join(a.text)})
    for tid, name, args in a.tools:
        content.append({"type": "tool_use", "id": tid, "name": name, "input": json.loads(args)})
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": a.stop_reason,
        "stop_sequence": a.stop_sequence,
        "usage": usage,
    }


def _stream(mid: str, model: str, a: _Answer, usage: dict) -> _Sse:
    start_usage = {**usage, "output_tokens": 1}
    head = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    events: list[tuple[bytes, bool]] = [(_sse("message_start", {"type": "message_start", "message": head}), False)]
    blocks: list[tuple[dict, list[dict]]] = []
    if a.thinking:
        deltas = [{"type": "thinking_delta", "thinking": t} for t in a.thinking]
        blocks.append(
            ({"type": "thinking", "thinking": ""}, [*deltas, {"type": "signature_delta", "signature": _signature(a)}])
        )
    if a.text:
        blocks.append(({"type": "text", "text": ""}, [{"type": "text_delta", "text": t} for t in a.text]))
    for tid, name, args in a.tools:
        frags = [{"type": "input_json_delta", "partial_json": ""}]
        frags += [{"type": "input_json_delta", "partial_json": f} for f in _FRAG_RE.findall(args)]
        blocks.append(({"type": "tool_use", "id": tid, "name": name, "input": {}}, frags))
    prefix = 1
    for index, (block, deltas) in enumerate(blocks):
        events.append(
            (
                _sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": block}),
                False,
            )
        )
        if index == 0:
            events.append((_sse("ping", {"type": "ping"}), False))
            prefix = 3
        for delta in deltas:
            is_content = delta["type"] in ("text_delta", "input_json_delta") and bool(
                delta.get("text") or delta.get("partial_json")
            )
            events.append(
                (
                    _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}),
                    is_content,
                )
            )
        events.append((_sse("content_block_stop", {"type": "content_block_stop", "index": index}), False))
    if a.thinking:  # thinking deltas precede the first content event: count them into the prefix
        prefix += len(a.thinking) + 3
    final = {
        "type": "message_delta",
        "delta": {"stop_reason": a.stop_reason, "stop_sequence": a.stop_sequence},
        "usage": {"output_tokens": usage["output_tokens"]},
    }
    events.append((_sse("message_delta", final), False))
    events.append((_sse("message_stop", {"type": "message_stop"}), False))
    return _Sse(events, prefix)


def register(srv: MockUpstream) -> None:
    handler = _messages(srv)

    def match(method: bytes, path: bytes, query: dict) -> Route | None:
        if method == b"POST" and path == b"/v1/messages":
            return Route(handler, ANTHROPIC, check=_check)
        return None

    srv.add_matcher(match)
