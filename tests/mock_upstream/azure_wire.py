"""The mock's Azure OpenAI: /openai/deployments/{deployment}/{chat/completions,completions,embeddings}.

Bodies are OpenAI's (the OpenAI builders make them); what Azure adds is here (Azure OpenAI REST
reference and content-filtering docs, read 2026-05): the deployment in the path is the scenario
(URL-decoded), `api-version` is required (404 without it), the key comes in an `api-key` header,
errors are `{"error": {"code": "<status or name>", "message": ...}}`, and chat answers carry
`prompt_filter_results` and per-choice `content_filter_results`; a chat stream opens with a
choice-less chunk holding only `prompt_filter_results`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from .server import Dialect, MockUpstream, Route, Scenario, _decode, _encode, _Json, _Sse

_SAFE = {name: {"filtered": False, "severity": "safe"} for name in ("hate", "self_harm", "sexual", "violence")}
_PROMPT_FILTER = [{"prompt_index": 0, "content_filter_results": _SAFE}]
_MESSAGES = {
    401: "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
    "for an active subscription and use a correct regional API endpoint for your resource.",
    404: "The API deployment for this resource does not exist.",
    429: "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded "
    "token rate limit of your current OpenAI S0 pricing tier. Please retry after 1 second.",
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The service is temporarily unable to process your request. Please try again later.",
}
_FILTERED_PROMPT = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. "
    "Please modify your prompt and retry."
)


def error_json(code: str, message: str, **extra: Any) -> bytes:
    return _encode({"error": {"code": code, "message": message, **extra}})


class AzureDialect(Dialect):
    name = "azure"

    def status_error(self, status: int, sc: Scenario, path: str) -> _Json:
        code = sc.params.get("error_code", {404: "DeploymentNotFound"}.get(status, str(status)))
        message = sc.params.get("message", _MESSAGES.get(status, f"Mock error {status}."))
        plan = _Json(status, error_json(code, message))
        if "retry_after" in sc.params:
            plan.extra += b"retry-after: %s\r\n" % sc.params["retry_after"].encode()
        if "retry_after_ms" in sc.params:
            plan.extra += b"retry-after-ms: %s\r\n" % sc.params["retry_after_ms"].encode()
        return plan

    def auth_error(self, headers: dict) -> _Json:
        key = headers.get("api-key")
        if not key:
            return _Json(
                401,
                error_json(
                    "401",
                    "Access denied due to missing subscription key. Make sure to "
                    "include subscription key when making requests to an API.",
                ),
            )
        return _Json(
            401, error_json("401", f"Access denied due to invalid subscription key {key} or wrong API endpoint.")
        )

    def error_200_body(self, sc: Scenario) -> bytes:
        return error_json(sc.params.get("error_code", "500"), sc.params.get("message", _MESSAGES[500]))

    def error_event(self, sc: Scenario) -> bytes:
        return b"data: " + self.error_200_body(sc) + b"\n\n"

    def invalid(self, status: int, message: str, param: str | None = None, code: str | None = None) -> _Json:
        return _Json(status, error_json(code or "BadRequest", message, param=param))


AZURE = AzureDialect()
_OPERATIONS = {b"chat/completions": "chat", b"completions": "completions", b"embeddings": "embeddings"}


def _check(headers: dict, query: dict, body: Any) -> _Json | None:
    if not query.get("api-version"):
        return _Json(404, error_json("404", "Resource not found"))
    if not headers.get("api-key") and not headers.get("authorization", "").lower().startswith("bearer "):
        return AZURE.auth_error(headers)
    return None


def _chat(srv: MockUpstream):
    def handler(body: dict, sc: Scenario, stream: bool, rec: dict) -> _Json | _Sse:
        if sc.params.get("filter") == "prompt":  # the prompt tripped the content filter
            inner = {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": {**_SAFE, "violence": {"filtered": True, "severity": "high"}},
            }
            return _Json(
                400, error_json("content_filter", _FILTERED_PROMPT, param="prompt", status=400, innererror=inner)
            )
        plan = srv._chat({**body, "model": rec["model"]}, sc, stream, rec)
        filtered = sc.params.get("filter") == "completion"
        if isinstance(plan, _Json):
            answer = _decode(plan.body)
            answer["prompt_filter_results"] = _PROMPT_FILTER
            for choice in answer["choices"]:
                choice["content_filter_results"] = _choice_filter(filtered)
                if filtered:
                    choice["finish_reason"] = "content_filter"
                    choice["message"]["content"] = None
            plan.body = _encode(answer)
            return plan
        return _azure_stream(plan, filtered)

    return handler


def _choice_filter(filtered: bool) -> dict:
    if not filtered:
        return _SAFE
    return {**_SAFE, "violence": {"filtered": True, "severity": "medium"}}


def _azure_stream(plan: _Sse, filtered: bool) -> _Sse:
    """Azure's chat stream: a prompt-annotation chunk first, annotations on the choices, content_filter
    as the finish reason when the completion is filtered (content-filter docs: "Streaming")."""
    first = {"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": _PROMPT_FILTER}
    events: list[tuple[bytes, bool]] = [(b"data: " + _encode(first) + b"\n\n", False)]
    for data, is_content in plan.events:
        if not data.startswith(b"data: {"):
            events.append((data, is_content))
            continue
        chunk = _decode(data[6:])
        for choice in chunk.get("choices") or ():
            if choice.get("finish_reason"):
                choice["content_filter_results"] = _choice_filter(filtered)
                if filtered:
                    choice["finish_reason"] = "content_filter"
            elif not filtered or not is_content:
                choice["content_filter_results"] = {}
        if filtered and is_content:
            continue  # a filtered completion is cut off
        events.append((b"data: " + _encode(chunk) + b"\n\n", is_content))
    return _Sse(events, plan.prefix + 1)


def register(srv: MockUpstream) -> None:
    chat = _chat(srv)
    builders = {"chat": chat, "completions": srv._completions, "embeddings": srv._embeddings}

    def match(method: bytes, path: bytes, query: dict) -> Route | None:
        if method != b"POST" or not path.startswith(b"/openai/deployments/"):
            return None
        deployment, _, operation = path[len(b"/openai/deployments/") :].partition(b"/")
        kind = _OPERATIONS.get(operation)
        if kind is None or not deployment:
            return None
        model = unquote(deployment.decode("latin-1"))
        return Route(_with_model(builders[kind], model), AZURE, model=model, check=_check)

    srv.add_matcher(match)


def _with_model(builder, model: str):
    """The OpenAI builders read the model from the body; Azure's body has none (the path names it)."""

    def handler(body: dict, sc: Scenario, stream: bool, rec: dict) -> Any:
        return builder({**body, "model": model}, sc, stream, rec)

    return handler
