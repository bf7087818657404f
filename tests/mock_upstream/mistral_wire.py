"""The mock's Mistral La Plateforme API, mounted under /mistral/v1/ (chat/completions, embeddings).

Mistral is OpenAI-shaped; what differs (API reference https://docs.mistral.ai/api and the error
glossary https://docs.mistral.ai/resources/error-glossary, read 2026-05): `tool_choice` also takes
`"any"`; tool call ids are 9 characters `[a-zA-Z0-9]`; a tool call streams whole in one chunk; the
usage rides on the chunk with the `finish_reason` (no separate usage chunk, `stream_options` is
ignored); `finish_reason` may also be `model_length` or `error`; errors are
`{"object": "error", "message", "type", "param", "code"}` at the top level. Point a provider's
base_url at ``<mock>/mistral/v1``. The body's `model` is the scenario, as for OpenAI.
"""

from __future__ import annotations

import hashlib
import string
from typing import Any

from .server import Dialect, MockUpstream, Route, Scenario, _decode, _encode, _Json, _Sse, _tokenize

_TYPES = {401: "authentication_error", 429: "rate_limit_error"}
_MESSAGES = {
    400: "Invalid request (mock).",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Invalid model: mock",
    422: "Unprocessable entity (mock).",
    429: "Requests rate limit exceeded",
    500: "Internal server error",
    503: "Service unavailable",
}
_ALNUM = string.ascii_letters + string.digits


def error_json(message: str, kind: str, param: str | None = None, code: str | None = None) -> bytes:
    return _encode({"object": "error", "message": message, "type": kind, "param": param, "code": code})


class MistralDialect(Dialect):
    name = "mistral"

    def status_error(self, status: int, sc: Scenario, path: str) -> _Json:
        kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        p = sc.params
        plan = _Json(
            status,
            error_json(
                p.get("message", _MESSAGES.get(status, f"Mock error {status}.")),
                p.get("type", kind),
                p.get("param") or None,
                p.get("error_code"),
            ),
        )
        if "retry_after" in p:
            plan.extra += b"retry-after: %s\r\n" % p["retry_after"].encode()
        return plan

    def context_length(self, sc: Scenario, path: str) -> _Json:
        message = sc.params.get(
            "message",
            "Prompt contains 40000 tokens and 0 draft tokens, too large for model with 32768 maximum context length",
        )
        return _Json(400, error_json(message, "invalid_request_error", None, "3051"))

    def auth_error(self, headers: dict) -> _Json:
        auth = headers.get("authorization", "")
        key = auth[7:] if auth[:7].lower() == "bearer " else auth
        message = f"Unauthorized: invalid API key {key}" if key else "Unauthorized"
        return _Json(401, error_json(message, "authentication_error"))

    def error_200_body(self, sc: Scenario) -> bytes:
        return error_json(sc.params.get("message", "Internal server error"), sc.params.get("type", "server_error"))

    def error_event(self, sc: Scenario) -> bytes:
        return b"data: " + self.error_200_body(sc) + b"\n\n"

    def invalid(self, status: int, message: str, param: str | None = None, code: str | None = None) -> _Json:
        return _Json(status, error_json(message, "invalid_request_error", param, code))


MISTRAL = MistralDialect()


def _check(headers: dict, query: dict, body: Any) -> _Json | None:
    if not headers.get("authorization", "").lower().startswith("bearer "):
        return MISTRAL.auth_error(headers)
    return None


def _short_id(seed: str) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(_ALNUM[b % len(_ALNUM)] for b in digest[:9])


def _chat(srv: MockUpstream):
    def handler(body: dict, sc: Scenario, stream: bool, rec: dict) -> _Json | _Sse:
        request = {k: v for k, v in body.items() if k != "stream_options"}
        if request.get("tool_choice") == "any":
            request["tool_choice"] = "required"
        plan = srv._chat(request, sc, False, rec)
        if not isinstance(plan, _Json) or plan.status != 200:
            return plan
        answer = _decode(plan.body)
        finish = sc.params.get("finish")
        for choice in answer["choices"]:
            message = choice["message"]
            for call in message.get("tool_calls") or ():
                call["id"] = _short_id(call["id"])
            message.pop("refusal", None)
            message.pop("annotations", None)
            if finish:
                choice["finish_reason"] = finish
        usage = {k: answer["usage"][k] for k in ("prompt_tokens", "total_tokens", "completion_tokens")}
        head = {"id": answer["id"].replace("chatcmpl-", ""), "created": answer["created"], "model": answer["model"]}
        if not stream:
            out = {**head, "object": "chat.completion", "choices": answer["choices"], "usage": usage}
            return _Json(200, _encode(out), tokens=usage["completion_tokens"])
        return _stream(head, answer["choices"], usage)

    return handler


def _stream(head: dict, choices: list[dict], usage: dict) -> _Sse:
    def event(choices: list[dict], **extra: Any) -> bytes:
        return b"data: " + _encode({**head, "object": "chat.completion.chunk", "choices": choices, **extra}) + b"\n\n"

    events: list[tuple[bytes, bool]] = []
    for c in choices:
        delta = {"role": "assistant", "content": ""}
        events.append((event([{"index": c["index"], "delta": delta, "finish_reason": None}]), False))
    for c in choices:
        message = c["message"]
        for token in _tokenize(message.get("content") or ""):
            events.append((event([{"index": c["index"], "delta": {"content": token}, "finish_reason": None}]), True))
        calls = [{**call, "index": i} for i, call in enumerate(message.get("tool_calls") or ())]
        if calls:
            events.append((event([{"index": c["index"], "delta": {"tool_calls": calls}, "finish_reason": None}]), True))
    for k, c in enumerate(choices):
        last = k == len(choices) - 1
        done = [{"index": c["index"], "delta": {"content": ""}, "finish_reason": c["finish_reason"]}]
        events.append((event(done, **({"usage": usage} if last else {})), False))
    events.append((b"data: [DONE]\n\n", False))
    return _Sse(events, len(choices))


def _embeddings(srv: MockUpstream):
    def handler(body: dict, sc: Scenario, stream: bool, rec: dict) -> _Json:
        # Mistral names the vector size `output_dimension` (codestral-embed); OpenAI's `dimensions` is unknown.
        request = {k: v for k, v in body.items() if k != "dimensions"}
        if isinstance(body.get("output_dimension"), int):
            request["dimensions"] = body["output_dimension"]
        plan = srv._embeddings(request, sc, False, rec)
        if plan.status != 200:
            return plan
        answer = _decode(plan.body)
        answer["id"] = srv._next_id("emb-")
        answer["usage"]["completion_tokens"] = 0
        plan.body = _encode(answer)
        return plan

    return handler


def register(srv: MockUpstream) -> None:
    routes = {b"/mistral/v1/chat/completions": _chat(srv), b"/mistral/v1/embeddings": _embeddings(srv)}

    def match(method: bytes, path: bytes, query: dict) -> Route | None:
        handler = routes.get(path) if method == b"POST" else None
        return Route(handler, MISTRAL, check=_check) if handler is not None else None

    srv.add_matcher(match)
