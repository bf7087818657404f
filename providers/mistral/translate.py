"""OpenAI chat/embeddings <-> Mistral's API. Pure: no I/O, no clock, no globals.

Mistral's chat API looks like OpenAI's but differs in names and rules (docs.mistral.ai/api, read
2026-06): `random_seed` not `seed`, `max_tokens` only, tool_choice `any` not `required`, no
`developer` role, no message `name`, tool-call ids of exactly 9 characters [a-zA-Z0-9], no
`logprobs`/`logit_bias`/`user`, unknown fields rejected with 422, `model_length` and `error` finish
reasons, and reasoning traces as `thinking` content chunks.
"""

import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from providers._http import error_from_detail
from providers.errors import GatewayError, InvalidRequest, UpstreamProtocolError, UpstreamUnavailable
from providers.mistral import wire
from providers.schema.chat import (
    AssistantMessage,
    AudioPart,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    ChunkChoice,
    Delta,
    DeveloperMessage,
    FunctionCallDelta,
    FunctionMessage,
    ImagePart,
    Message,
    NamedToolChoice,
    OutFunctionCall,
    OutToolCall,
    PromptTokensDetails,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    ResponseFormatText,
    ResponseMessage,
    SystemMessage,
    TextPart,
    ToolCallDelta,
    ToolMessage,
    Usage,
    UserMessage,
    UserPart,
)
from providers.schema.completions import EmbeddingRequest
from providers.schema.errors import ErrorDetail

_EFFORT_ORDER = ("none", "minimal", "low", "medium", "high", "xhigh")
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

PASS_THROUGH = ("prediction", "prompt_cache_key", "prompt_mode", "safe_prompt")
"""Fields a client may send in the raw body that Mistral understands and the OpenAI schema does not type."""


def _set(value: Any) -> Any:
    """None (an explicit JSON null from the client) means "not set"."""
    return UNSET if value is None else value


# ================================================================ request


def to_mistral_request(
    req: ChatRequest,
    *,
    model: str,
    stream: bool,
    raw: dict[str, Any] | None = None,
    efforts: tuple[str, ...] = ("none", "high"),
) -> wire.ChatCompletionRequest:
    """OpenAI chat request -> Mistral chat request. Parameters Mistral cannot honour raise InvalidRequest."""
    _reject_unsupported(req)
    extra = {k: v for k, v in (raw or {}).items() if k in PASS_THROUGH and v is not None}
    body = wire.ChatCompletionRequest(
        model=model,
        messages=_messages(req.messages),
        temperature=_set(req.temperature),
        top_p=_set(req.top_p),
        max_tokens=req.output_cap if req.output_cap is not None else UNSET,
        stream=True if stream else UNSET,
        stop=_set(req.stop),
        random_seed=_set(req.seed),
        metadata=_set(req.metadata),
        response_format=_response_format(req),
        tools=_tools(req),
        tool_choice=_tool_choice(req),
        presence_penalty=_set(req.presence_penalty),
        frequency_penalty=_set(req.frequency_penalty),
        n=_set(req.n),
        parallel_tool_calls=_set(req.parallel_tool_calls),
        reasoning_effort=mistral_effort(req.reasoning_effort, efforts),
    )
    return msgspec.structs.replace(body, **extra) if extra else body


def _reject_unsupported(req: ChatRequest) -> None:
    if req.logprobs is True:
        raise InvalidRequest("Mistral's chat API does not return logprobs", param="logprobs")
    if req.logit_bias:
        raise InvalidRequest("Mistral's chat API does not support logit_bias", param="logit_bias")


def mistral_effort(effort: str | None | UnsetType, efforts: tuple[str, ...]) -> str | UnsetType:
    """reasoning_effort -> the nearest value the deployment accepts (docs.mistral.ai/capabilities/reasoning,
    read 2026-06: Small 4 and Medium 3.5 take none and high). "minimal" thinks as little as "none";
    anything else rounds up, so a client asking for some reasoning gets at least that."""
    if not isinstance(effort, str):
        return UNSET
    if effort not in _EFFORT_ORDER:
        raise InvalidRequest(
            f"reasoning_effort {effort!r} is not one of {', '.join(_EFFORT_ORDER)}", param="reasoning_effort"
        )
    wanted = "none" if effort == "minimal" else effort
    if wanted in efforts:
        return wanted
    rank = _EFFORT_ORDER.index(wanted)
    above = [e for e in efforts if _EFFORT_ORDER.index(e) >= rank]
    return min(above, key=_EFFORT_ORDER.index) if above else max(efforts, key=_EFFORT_ORDER.index)


def mistral_tool_call_id(call_id: str) -> str:
    """An id Mistral accepts: exactly 9 of [a-zA-Z0-9] (its 400 says "Tool call id was ... but must be
    a-z, A-Z, 0-9, with a length of 9"). Mistral's own ids pass unchanged; others (from another
    provider, earlier in the conversation) map to a stable hash, the same in the call and its result."""
    if len(call_id) == 9 and all(c in _ID_CHARS for c in call_id):
        return call_id
    number = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big")
    out = []
    for _ in range(9):
        number, digit = divmod(number, 62)
        out.append(_ID_CHARS[digit])
    return "".join(out)


def _messages(messages: list[Message]) -> list[wire.Message]:
    names: dict[str, str] = {}
    out: list[wire.Message] = []
    for i, message in enumerate(messages):
        if isinstance(message, SystemMessage | DeveloperMessage):
            # Mistral has no developer role; both are system instructions.
            content = message.content
            out.append(wire.SystemMessage(content=content if isinstance(content, str) else _text_chunks(content)))
        elif isinstance(message, UserMessage):
            out.append(_user(message, i))
        elif isinstance(message, AssistantMessage):
            out.append(_assistant(message, names))
        elif isinstance(message, ToolMessage):
            text = message.content if isinstance(message.content, str) else "".join(p.text for p in message.content)
            tool_id = mistral_tool_call_id(message.tool_call_id)
            out.append(wire.ToolMessage(content=text, tool_call_id=tool_id, name=names.get(tool_id, UNSET)))
        elif isinstance(message, FunctionMessage):
            raise InvalidRequest(
                f"messages[{i}]: the legacy function role is not supported by Mistral; use tool messages",
                param=f"messages[{i}].role",
            )
    return out


def _text_chunks(parts: list[TextPart]) -> list[wire.TextChunk]:
    return [wire.TextChunk(text=p.text) for p in parts]


def _user(message: UserMessage, i: int) -> wire.UserMessage:
    if isinstance(message.content, str):
        return wire.UserMessage(content=message.content)
    return wire.UserMessage(
        content=[_user_chunk(p, f"messages[{i}].content[{j}]") for j, p in enumerate(message.content)]
    )


def _user_chunk(part: UserPart, param: str) -> wire.UserChunk:
    if isinstance(part, TextPart):
        return wire.TextChunk(text=part.text)
    if isinstance(part, ImagePart):
        # Mistral takes https URLs and base64 data: URLs alike (docs.mistral.ai/capabilities/vision).
        return wire.ImageURLChunk(image_url=wire.ImageURL(url=part.image_url.url, detail=part.image_url.detail))
    if isinstance(part, AudioPart):
        return wire.AudioChunk(input_audio=part.input_audio.data)
    if isinstance(part.file.file_id, str):
        return wire.FileChunk(file_id=part.file.file_id)  # an id from Mistral's own Files API
    raise InvalidRequest(
        f"{param}: Mistral takes files by id (its Files API), not inline file_data", param=f"{param}.file.file_data"
    )


def _assistant(message: AssistantMessage, names: dict[str, str]) -> wire.AssistantMessage:
    content = message.content
    text = content if isinstance(content, str) else None
    if isinstance(content, list):
        text = "".join(p.text if isinstance(p, TextPart) else p.refusal for p in content)
    calls: list[wire.ToolCall] = []
    for call in message.tool_calls if isinstance(message.tool_calls, list) else []:
        call_id = mistral_tool_call_id(call.id)
        names[call_id] = call.function.name
        calls.append(
            wire.ToolCall(
                id=call_id,
                type="function",
                function=wire.FunctionCall(name=call.function.name, arguments=call.function.arguments),
            )
        )
    # reasoning_content is not replayed: Mistral accepts a conversation without its earlier thinking.
    return wire.AssistantMessage(content=text if text else UNSET, tool_calls=calls or UNSET)


def _tools(req: ChatRequest) -> list[wire.Tool] | UnsetType:
    if not req.tools:
        return UNSET
    return [
        wire.Tool(
            type="function",
            function=wire.Function(
                name=t.function.name,
                description=t.function.description,
                parameters=t.function.parameters if isinstance(t.function.parameters, dict) else {},
                strict=_set(t.function.strict),
            ),
        )
        for t in req.tools
    ]


def _tool_choice(req: ChatRequest) -> str | wire.ToolChoice | UnsetType:
    """`required` is spelled `any` (docs.mistral.ai/capabilities/function_calling); named choices keep
    OpenAI's shape."""
    choice = req.tool_choice
    if choice in (UNSET, None):
        return UNSET
    if isinstance(choice, NamedToolChoice):
        return wire.ToolChoice(type="function", function=wire.FunctionName(name=choice.function.name))
    return "any" if choice == "required" else choice


def _response_format(req: ChatRequest) -> wire.ResponseFormat | UnsetType:
    fmt = req.response_format
    if isinstance(fmt, ResponseFormatText):
        return wire.ResponseFormat(type="text")
    if isinstance(fmt, ResponseFormatJSONObject):
        return wire.ResponseFormat(type="json_object")
    if isinstance(fmt, ResponseFormatJSONSchema):
        spec = fmt.json_schema
        return wire.ResponseFormat(
            type="json_schema",
            json_schema=wire.JSONSchema(
                name=spec.name,
                schema=spec.schema if isinstance(spec.schema, dict) else {},
                description=spec.description,
                strict=_set(spec.strict),
            ),
        )
    return UNSET


# ================================================================ response


def mistral_finish_reason(reason: str | None, *, provider: str = "mistral") -> str | None:
    """Mistral finish_reason -> OpenAI's: `model_length` (the context is full) is a length stop too;
    `error` means generation failed upstream, which is an error, never a finished answer."""
    if reason == "model_length":
        return "length"
    if reason == "error":
        raise UpstreamUnavailable(f"{provider}: generation failed upstream (finish_reason error)", provider=provider)
    return reason


def _split(content: str | list[wire.OutChunk] | None) -> tuple[str | None, str | None]:
    """Mistral content (a string, or chunks for reasoning models) -> (answer text, thinking text)."""
    if content is None or isinstance(content, str):
        return content, None
    text: list[str] = []
    thoughts: list[str] = []
    for chunk in content:
        if isinstance(chunk, wire.TextChunk):
            text.append(chunk.text)
        elif isinstance(chunk, wire.ThinkChunk):
            thoughts.extend(t.text for t in chunk.thinking if isinstance(t, wire.TextChunk))
    return ("".join(text) if text else None), ("".join(thoughts) if thoughts else None)


def _arguments(arguments: str | dict[str, Any]) -> str:
    return arguments if isinstance(arguments, str) else msgspec.json.encode(arguments).decode()


def from_mistral_usage(usage: wire.Usage) -> Usage:
    details = usage.prompt_tokens_details
    cached = details.cached_tokens if isinstance(details, wire.PromptTokensDetails) else 0
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


def from_mistral_response(resp: wire.ChatCompletionResponse, *, provider: str = "mistral") -> ChatCompletion:
    """Mistral chat response -> ChatCompletion (an error body raises the mapped error)."""
    if resp.object == "error":
        raise mistral_error(0, resp, provider=provider)
    choices = []
    for choice in resp.choices:
        text, thoughts = _split(choice.message.content)
        calls = [
            OutToolCall(
                id=c.id if isinstance(c.id, str) else "",
                function=OutFunctionCall(name=c.function.name, arguments=_arguments(c.function.arguments)),
            )
            for c in choice.message.tool_calls or []
        ]
        if calls and not text:
            text = None  # Mistral sends "" beside tool calls; OpenAI sends null
        message = ResponseMessage(content=text, tool_calls=calls or UNSET, reasoning_content=thoughts or UNSET)
        reason = mistral_finish_reason(choice.finish_reason, provider=provider)
        choices.append(Choice(index=choice.index, message=message, finish_reason=reason))
    usage = from_mistral_usage(resp.usage) if resp.usage is not None else None
    return ChatCompletion(id=resp.id, created=resp.created, model=resp.model, choices=choices, usage=usage)


# ================================================================ stream


@dataclass(slots=True)
class _Calls:
    """One choice's tool calls so far: Mistral sends each call whole, sometimes every one with index 0;
    a new id is a new call, and its OpenAI index is counted here."""

    count: int = 0
    last_id: str | None = None


@dataclass(slots=True)
class StreamState:
    """Everything the stream translation remembers between events."""

    n: int = 1
    provider: str = "mistral"
    started: bool = False
    calls: dict[int, _Calls] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)
    usage: wire.Usage | None = None
    last: wire.CompletionChunk | None = None


def _chunk(
    event: wire.CompletionChunk, choices: list[ChunkChoice], usage: Usage | UnsetType = UNSET
) -> ChatCompletionChunk:
    return ChatCompletionChunk(id=event.id, created=event.created, model=event.model, choices=choices, usage=usage)


def step(state: StreamState, event: wire.CompletionChunk) -> list[ChatCompletionChunk]:
    """One SSE event -> the OpenAI chunks it yields. The first chunk is always the role delta."""
    if event.object == "error":
        raise mistral_error(0, event, provider=state.provider)
    state.last = event
    out: list[ChatCompletionChunk] = []
    if not state.started:
        state.started = True
        out.append(
            _chunk(event, [ChunkChoice(index=i, delta=Delta(role="assistant", content="")) for i in range(state.n)])
        )
    if event.usage is not None:
        state.usage = event.usage
    choices = [c for c in (_chunk_choice(state, c) for c in event.choices) if c is not None]
    if choices:
        out.append(_chunk(event, choices))
    return out


def _chunk_choice(state: StreamState, choice: wire.StreamChoice) -> ChunkChoice | None:
    text, thoughts = _split(choice.delta.content)
    calls = [_tool_delta(state.calls.setdefault(choice.index, _Calls()), c) for c in choice.delta.tool_calls or []]
    delta = Delta(content=text or UNSET, reasoning_content=thoughts or UNSET, tool_calls=calls or UNSET)
    finish = mistral_finish_reason(choice.finish_reason, provider=state.provider)
    if finish is not None:
        state.finished.add(choice.index)
    if finish is None and delta == Delta():
        return None  # the role-only or empty deltas Mistral sends carry nothing new
    return ChunkChoice(index=choice.index, delta=delta, finish_reason=finish)


def _tool_delta(calls: _Calls, call: wire.ToolCall) -> ToolCallDelta:
    new = isinstance(call.id, str) and call.id not in ("", "null") and call.id != calls.last_id
    if new or calls.count == 0:
        calls.count += 1
        calls.last_id = call.id if isinstance(call.id, str) else None
        return ToolCallDelta(
            index=calls.count - 1,
            id=call.id if isinstance(call.id, str) else UNSET,
            type="function",
            function=FunctionCallDelta(name=call.function.name, arguments=_arguments(call.function.arguments)),
        )
    # A continuation of the current call: only more argument text.
    return ToolCallDelta(
        index=calls.count - 1, function=FunctionCallDelta(arguments=_arguments(call.function.arguments))
    )


def finish(state: StreamState) -> list[ChatCompletionChunk]:
    """The stream ended ([DONE] or close): a cut answer is an error; a complete one ends with usage."""
    if state.last is None or not set(range(state.n)) <= state.finished:
        raise UpstreamProtocolError(
            f"{state.provider}: stream ended before the answer was complete", provider=state.provider
        )
    if state.usage is None:
        return []
    return [_chunk(state.last, [], usage=from_mistral_usage(state.usage))]


# ================================================================ errors


def _message(body: wire.ErrorFields) -> str:
    """Mistral's message: a string, or FastAPI validation detail ([{"loc": [...], "msg": ...}])."""
    value = body.message if body.message is not None else body.detail
    if isinstance(value, dict) and "detail" in value:
        value = value["detail"]
    if isinstance(value, list):
        return "; ".join(_validation_item(v) for v in value)
    return str(value) if value is not None else ""


def _validation_item(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
    return f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", ""))


def mistral_error(
    status: int, body: wire.ErrorFields | None, *, provider: str = "mistral", retry_after_s: float | None = None
) -> GatewayError:
    """An error from Mistral (HTTP status and body) -> escalade's error family. status=0: in a 200 or an SSE event."""
    fields = body or wire.ErrorFields()
    message = _message(fields) or f"HTTP {status} from upstream"
    kind = fields.type
    if kind and kind.startswith("invalid_request"):
        kind = "invalid_request_error"  # Mistral also says invalid_request_message_error, ..._file_error
    detail = ErrorDetail(message=message, type=kind, param=fields.param, code=fields.code)
    return error_from_detail(detail, status=status, provider=provider, retry_after_s=retry_after_s)


def error_from_body(
    status: int, raw: bytes, *, provider: str = "mistral", retry_after_s: float | None = None
) -> GatewayError:
    try:
        body: wire.ErrorFields | None = wire.decode_error(raw)
    except msgspec.DecodeError:
        body = None
    return mistral_error(status, body, provider=provider, retry_after_s=retry_after_s)


# ================================================================ embeddings


def to_mistral_embeddings(req: EmbeddingRequest, *, model: str) -> wire.EmbeddingRequest:
    """OpenAI embeddings request -> Mistral's: `dimensions` is `output_dimension`; text only."""
    texts = req.input
    if not isinstance(texts, str) and not (texts and all(isinstance(t, str) for t in texts)):
        raise InvalidRequest("Mistral embeds text only: input must be a string or a list of strings", param="input")
    return wire.EmbeddingRequest(
        model=model,
        input=texts,
        output_dimension=req.dimensions,
        encoding_format=req.encoding_format,
    )
