"""The mock's Gemini API: /v1beta/models/{model}:generateContent, :streamGenerateContent, :embedContent,
:batchEmbedContents (also under /v1/).

Shapes follow https://ai.google.dev/api/generate-content and /api/embeddings and the Google API error
model (https://ai.google.dev/gemini-api/docs/troubleshooting), read 2026-05. The model in the path
(URL-decoded) is the scenario. ``:streamGenerateContent?alt=sse`` streams ``data: {json}`` events (no
``[DONE]``); without ``alt=sse`` it answers one JSON array of the same chunks. See README.md ("Gemini").
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from .server import (
    DEFAULT_EMBED_DIM,
    Dialect,
    MockUpstream,
    Route,
    Scenario,
    _embedding,
    _encode,
    _fill_schema,
    _fixed_tokens,
    _Json,
    _Sse,
    _tokenize,
)

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MESSAGES = {
    "INVALID_ARGUMENT": "Request contains an invalid argument.",
    "PERMISSION_DENIED": "The caller does not have permission.",
    "NOT_FOUND": "models/mock is not found for API version v1beta, or is not supported for generateContent.",
    "RESOURCE_EXHAUSTED": "You exceeded your current quota, please check your plan and billing details.",
    "INTERNAL": "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    "UNAVAILABLE": "The model is overloaded. Please try again later.",
    "DEADLINE_EXCEEDED": "The request timed out. Please try again.",
}
_SEP = b"\r\n\r\n"


def error_json(code: int, message: str, status: str, details: list | None = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return _encode({"error": error})


class GeminiDialect(Dialect):
    name = "gemini"
    malformed = b"data: {not json" + _SEP

    def _error(self, code: int, sc: Scenario | None) -> bytes:
        status = _STATUS.get(code, "INTERNAL" if code >= 500 else "INVALID_ARGUMENT")
        message = _MESSAGES.get(status, f"Mock error {code}.")
        details = None
        if sc is not None:
            status = sc.params.get("type", status)
            message = sc.params.get("message", message)
            if "retry_after" in sc.params:  # Gemini says when to retry in the body, not in a header
                details = [
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{sc.params['retry_after']}s"}
                ]
        return error_json(code, message, status, details)

    def status_error(self, status: int, sc: Scenario, path: str) -> _Json:
        return _Json(status, self._error(status, sc))

    def context_length(self, sc: Scenario, path: str) -> _Json:
        message = sc.params.get(
            "message", "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576)."
        )
        return _Json(400, error_json(400, message, "INVALID_ARGUMENT"))

    def auth_error(self, headers: dict) -> _Json:
        """Gemini answers a bad key with 400 INVALID_ARGUMENT and reason API_KEY_INVALID."""
        key = headers.get("x-goog-api-key")
        info = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ]
        return _Json(
            400, error_json(400, f"API key not valid: {key}. Please pass a valid API key.", "INVALID_ARGUMENT", info)
        )

    def error_200_body(self, sc: Scenario) -> bytes:
        return self._error(503, sc)

    def error_event(self, sc: Scenario) -> bytes:
        return b"data: " + self._error(503, sc) + _SEP

    def invalid(self, status: int, message: str, param: str | None = None, code: str | None = None) -> _Json:
        return _Json(status, error_json(status, message, _STATUS.get(status, "INVALID_ARGUMENT")))


GEMINI = GeminiDialect()


def _check(headers: dict, query: dict, body: Any) -> _Json | None:
    if headers.get("x-goog-api-key") or query.get("key"):
        return None
    return _Json(
        403,
        error_json(
            403,
            "Method doesn't allow unregistered callers (callers without established "
            "identity). Please use API Key or other form of API consumer identity to "
            "call this API.",
            "PERMISSION_DENIED",
        ),
    )


def _text(parts: Any) -> str:
    return " ".join(p["text"] for p in parts or () if isinstance(p, dict) and isinstance(p.get("text"), str))


class _Candidate:
    def __init__(self) -> None:
        self.thoughts: list[str] = []
        self.text: list[str] = []
        self.calls: list[dict] = []
        self.finish = "STOP"


def _answer(body: dict, sc: Scenario) -> tuple[_Candidate, int]:
    contents = body["contents"]
    words = len(_text((body.get("systemInstruction") or {}).get("parts")).split())
    last_user = ""
    for c in contents:
        t = _text(c.get("parts")) if isinstance(c, dict) else ""
        words += len(t.split()) + 1
        if isinstance(c, dict) and c.get("role", "user") == "user":
            last_user = t or last_user
    gen = body.get("generationConfig") or {}
    a = _Candidate()
    thinking = gen.get("thinkingConfig") or {}
    if thinking.get("includeThoughts"):
        a.thoughts = _tokenize("mock thinking about: " + last_user[:24])
    decls = [d for t in body.get("tools") or () for d in (t.get("functionDeclarations") or ()) if isinstance(d, dict)]
    mode_conf = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    mode = mode_conf.get("mode", "AUTO")
    allowed = mode_conf.get("allowedFunctionNames") or []
    if decls and mode != "NONE":
        if allowed:
            decls = [d for d in decls if d.get("name") in allowed] or decls
        for i in range(max(1, sc.int("tool_calls", 1))):
            d = decls[i % len(decls)]
            schema = d.get("parametersJsonSchema") or d.get("parameters")
            a.calls.append({"functionCall": {"name": d.get("name"), "args": _fill_schema(schema or {}, schema)}})
        return a, words
    p = sc.params
    schema = gen.get("responseJsonSchema") or gen.get("responseSchema")
    if "text" in p:
        toks = _tokenize(p["text"])
    elif gen.get("responseMimeType") == "application/json":
        toks = _tokenize(json.dumps(_fill_schema(schema or {}, schema)))
    elif "tokens" in p:
        toks = list(_fixed_tokens(max(0, min(sc.int("tokens"), 1_000_000))))
    else:
        toks = _tokenize("mock answer to: " + last_user[:40])
    cap = gen.get("maxOutputTokens")
    if isinstance(cap, int) and len(toks) > cap:
        toks, a.finish = toks[:cap], "MAX_TOKENS"
    text = "".join(toks)
    hits = [text.find(s) for s in gen.get("stopSequences") or () if isinstance(s, str) and s and s in text]
    if hits:
        toks = _tokenize(text[: min(hits)])
    a.text = toks
    a.finish = p.get("finish", a.finish)
    return a, words


def _usage(sc: Scenario, prompt: int, a: _Candidate, n: int) -> dict:
    out = (len(a.text) + len(a.calls)) * n
    usage: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": out}
    if a.thoughts:
        usage["thoughtsTokenCount"] = len(a.thoughts) * n
    if sc.int("cached", 0):
        usage["cachedContentTokenCount"] = sc.int("cached", 0)
    usage["totalTokenCount"] = prompt + out + usage.get("thoughtsTokenCount", 0)
    return usage


def _generate(srv: MockUpstream):
    def handler(body: dict, sc: Scenario, stream: bool, rec: dict) -> _Json | _Sse:
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            return GEMINI.invalid(400, "* GenerateContentRequest.contents: contents is not specified")
        a, prompt = _answer(body, sc)
        n = max(1, int((body.get("generationConfig") or {}).get("candidateCount") or 1))
        usage = _usage(sc, prompt, a, n)
        head = {"modelVersion": rec["model"], "responseId": srv._next_id("resp")}
        if "block" in sc.params:  # the prompt itself was blocked: no candidates at all
            blocked = {"promptFeedback": {"blockReason": sc.params["block"]}, "usageMetadata": usage, **head}
            return (
                _Json(200, _encode(blocked)) if not stream else _Sse([(b"data: " + _encode(blocked) + _SEP, False)], 0)
            )
        if not stream:
            parts = [{"text": "".join(a.thoughts), "thought": True}] if a.thoughts else []
            parts += [{"text": "".join(a.text)}] if a.text else []
            parts += a.calls
            cands = [
                {"content": {"parts": parts, "role": "model"}, "finishReason": a.finish, "index": i} for i in range(n)
            ]
            return _Json(200, _encode({"candidates": cands, "usageMetadata": usage, **head}), tokens=len(a.text))
        return _stream(a, n, usage, head, prompt, rec.get("query", {}).get("alt") == "sse")

    return handler


def _stream(a: _Candidate, n: int, usage: dict, head: dict, prompt: int, sse: bool) -> _Sse | _Json:
    pieces: list[tuple[list[dict], bool]] = [([{"text": t, "thought": True}], False) for t in a.thoughts]
    pieces += [([{"text": t}], True) for t in a.text]
    if a.calls:
        pieces.append((a.calls, True))  # Gemini sends a function call whole, in one chunk
    chunks: list[tuple[dict, bool]] = []
    running = {"promptTokenCount": prompt, "totalTokenCount": prompt}
    for i, (parts, is_content) in enumerate(pieces):
        last = i == len(pieces) - 1
        cands = [
            {"content": {"parts": parts, "role": "model"}, "index": k, **({"finishReason": a.finish} if last else {})}
            for k in range(n)
        ]
        chunks.append(({"candidates": cands, "usageMetadata": usage if last else running, **head}, is_content))
    if not pieces:
        cands = [
            {"content": {"parts": [{"text": ""}], "role": "model"}, "finishReason": a.finish, "index": k}
            for k in range(n)
        ]
        chunks.append(({"candidates": cands, "usageMetadata": usage, **head}, False))
    if not sse:  # without alt=sse the stream is one JSON array, sent as it grows (here: at once)
        return _Json(200, _encode([c for c, _ in chunks]), tokens=len(a.text))
    return _Sse([(b"data: " + _encode(c) + _SEP, is_content) for c, is_content in chunks], len(a.thoughts))


def _embed(body: dict, sc: Scenario) -> list[float]:
    text = _text((body.get("content") or {}).get("parts"))
    dim = body.get("outputDimensionality")
    dim = dim if isinstance(dim, int) and dim > 0 else sc.int("dim", DEFAULT_EMBED_DIM // 2)
    return _embedding(text, max(1, min(dim, 65536)))[0]


def _embed_content(body: dict, sc: Scenario, stream: bool, rec: dict) -> _Json:
    if not isinstance(body.get("content"), dict):
        return GEMINI.invalid(400, "* EmbedContentRequest.content: content is not specified")
    return _Json(200, _encode({"embedding": {"values": _embed(body, sc)}}))


def _batch_embed(body: dict, sc: Scenario, stream: bool, rec: dict) -> _Json:
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        return GEMINI.invalid(400, "* BatchEmbedContentsRequest.requests: requests is not specified")
    return _Json(200, _encode({"embeddings": [{"values": _embed(r, sc)} for r in requests if isinstance(r, dict)]}))


def register(srv: MockUpstream) -> None:
    generate = _generate(srv)
    methods = {
        "generateContent": (generate, False),
        "streamGenerateContent": (generate, True),
        "embedContent": (_embed_content, False),
        "batchEmbedContents": (_batch_embed, False),
    }

    def match(method: bytes, path: bytes, query: dict) -> Route | None:
        if method != b"POST" or not path.startswith((b"/v1beta/models/", b"/v1/models/")):
            return None
        rest = unquote(path.split(b"/models/", 1)[1].decode("latin-1"))
        model, sep, verb = rest.rpartition(":")
        found = methods.get(verb)
        if not sep or not model or found is None:
            return None
        handler, stream = found
        return Route(handler, GEMINI, model=model, stream=stream, check=_check)

    srv.add_matcher(match)
