"""OpenAI chat/embeddings <-> Gemini generateContent/batchEmbedContents. Pure: no I/O, no clock, no globals.

Wire format from ai.google.dev/api/generate-content (read 2026-06). Quirks handled here cite their
page. A parameter Gemini cannot honour raises InvalidRequest naming it; nothing that changes the
answer is dropped silently.
"""

import base64
import posixpath
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import UNSET, UnsetType

from providers.errors import InvalidRequest, UpstreamProtocolError
from providers.gemini import wire
from providers.gemini.errors import error_from_status
from providers.schema.chat import (
    AssistantMessage,
    AudioPart,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionTokensDetails,
    Delta,
    DeveloperMessage,
    FilePart,
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
    ResponseMessage,
    SystemMessage,
    TextPart,
    TokenLogprob,
    ToolCallDelta,
    ToolMessage,
    TopLogprob,
    Usage,
    UserMessage,
    UserPart,
)
from providers.schema.completions import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage

ThinkingMode = Literal["level", "budget"]

SIGNATURE_SEP = "#sig:"
"""Separates our tool-call id from Gemini's thought signature, carried inside the id (see _tool_call_id)."""

SKIP_SIGNATURE = "skip_thought_signature_validator"
"""Documented stand-in for a function call whose signature was lost (ai.google.dev/gemini-api/docs/
thought-signatures, FAQ, read 2026-06): Gemini 3 rejects a function call in the current turn without one."""

_CONTENT_FILTER = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
_BROKEN_CALL = frozenset({"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"})

# Image types Gemini reads (ai.google.dev/gemini-api/docs/image-understanding, read 2026-06).
_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".heic": "image/heic",
    ".heif": "image/heif",
}

# reasoning_effort -> thinkingLevel (Gemini 3) / thinkingBudget tokens (Gemini 2.5), per the thinking guide
# (ai.google.dev/gemini-api/docs/thinking, read 2026-06). Gemini 3 cannot switch thinking off: "none" asks
# for its least thinking.
_LEVELS = {"none": "minimal", "minimal": "minimal", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"}
_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576}


def thinking_mode(model: str, configured: str) -> ThinkingMode:
    """Which thinking control a model takes: explicit from the policy, else from the model family."""
    if configured in ("level", "budget"):
        return configured  # type: ignore[return-value]
    name = model.removeprefix("models/")
    return "budget" if name.startswith(("gemini-1", "gemini-2")) else "level"


# ================================================================ request


def to_gemini_request(req: ChatRequest, *, thinking: ThinkingMode) -> wire.GenerateContentRequest:
    """OpenAI chat request -> GenerateContentRequest (the model goes in the URL, not the body)."""
    system, contents = _contents(req.messages, signature_fallback=thinking == "level")
    return wire.GenerateContentRequest(
        contents=contents,
        system_instruction=wire.Content(parts=system) if system else UNSET,
        tools=_tools(req),
        tool_config=_tool_config(req),
        generation_config=_generation_config(req, thinking),
    )


def _contents(messages: list[Message], *, signature_fallback: bool) -> tuple[list[wire.Part], list[wire.Content]]:
    """System text parts, and the turns with consecutive same-role turns merged (Gemini alternates roles)."""
    names = _tool_names(messages)
    system: list[wire.Part] = []
    contents: list[wire.Content] = []
    for i, message in enumerate(messages):
        if isinstance(message, SystemMessage | DeveloperMessage):
            system.extend(wire.Part(text=t) for t in _texts(message.content))
            continue
        role, parts = _turn(message, i, names, signature_fallback)
        if not parts:
            continue
        if contents and contents[-1].role == role:
            contents[-1].parts.extend(parts)
        else:
            contents.append(wire.Content(role=role, parts=parts))
    return system, contents


def _tool_names(messages: list[Message]) -> dict[str, str]:
    """tool_call_id -> function name: Gemini's functionResponse needs the name, OpenAI's tool message has the id."""
    names: dict[str, str] = {}
    for message in messages:
        if isinstance(message, AssistantMessage) and isinstance(message.tool_calls, list):
            for call in message.tool_calls:
                names[call.id] = call.function.name
    return names


def _turn(message: Message, i: int, names: dict[str, str], signature_fallback: bool) -> tuple[str, list[wire.Part]]:
    if isinstance(message, UserMessage):
        if isinstance(message.content, str):
            return "user", [wire.Part(text=message.content)]
        return "user", [_user_part(p, f"messages[{i}].content[{j}]") for j, p in enumerate(message.content)]
    if isinstance(message, AssistantMessage):
        return "model", _assistant_parts(message, i, signature_fallback)
    if isinstance(message, ToolMessage):
        name = names.get(message.tool_call_id)
        if name is None:
            raise InvalidRequest(
                f"messages[{i}]: tool_call_id {message.tool_call_id!r} matches no earlier assistant tool call "
                "(Gemini needs the function name of each tool result)",
                param=f"messages[{i}].tool_call_id",
            )
        return "user", [_function_response(name, "".join(_texts(message.content)))]
    if isinstance(message, FunctionMessage):
        return "user", [_function_response(message.name, message.content or "")]
    raise InvalidRequest(f"messages[{i}]: unsupported role", param=f"messages[{i}].role")  # pragma: no cover


def _texts(content: str | list[TextPart] | list[Any]) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [p.text if isinstance(p, TextPart) else p.refusal for p in content]


def _function_response(name: str, text: str) -> wire.Part:
    """A tool result: a JSON object is passed as the response object, anything else as {"result": text}."""
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        value = None
    response = value if isinstance(value, dict) else {"result": text}
    return wire.Part(function_response=wire.FunctionResponse(name=name, response=response))


def _assistant_parts(message: AssistantMessage, i: int, signature_fallback: bool) -> list[wire.Part]:
    parts: list[wire.Part] = []
    if message.content is not None:
        parts.extend(wire.Part(text=t) for t in _texts(message.content) if t)
    if isinstance(message.tool_calls, list):
        for j, call in enumerate(message.tool_calls):
            args = _arguments(call.function.arguments, f"messages[{i}].tool_calls[{j}].function.arguments")
            _, _, signature = call.id.partition(SIGNATURE_SEP)
            if not signature and j == 0 and signature_fallback:
                signature = SKIP_SIGNATURE
            parts.append(
                wire.Part(
                    function_call=wire.FunctionCall(name=call.function.name, args=args),
                    thought_signature=signature or UNSET,
                )
            )
    return parts


def _arguments(arguments: str, param: str) -> dict[str, Any]:
    if not arguments.strip():
        return {}
    try:
        value = msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        raise InvalidRequest(f"{param} is not valid JSON", param=param) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{param} must be a JSON object", param=param)
    return value


def _user_part(part: UserPart, param: str) -> wire.Part:
    if isinstance(part, TextPart):
        return wire.Part(text=part.text)
    if isinstance(part, ImagePart):
        return _image(part.image_url.url, f"{param}.image_url.url")
    if isinstance(part, AudioPart):
        fmt = part.input_audio.format
        return wire.Part(inline_data=wire.Blob(mime_type=f"audio/{fmt}", data=part.input_audio.data))
    return _file(part, param)


def _image(url: str, param: str) -> wire.Part:
    """A data: URL becomes inlineData; an https URL becomes fileData, which Gemini fetches itself
    (external URL input, ai.google.dev/gemini-api/docs/file-input-methods, 2026-01). fileData needs a
    MIME type, taken from the URL path's extension."""
    if url.startswith("data:"):
        mime, data = _data_url(url, param)
        return wire.Part(inline_data=wire.Blob(mime_type=mime, data=data))
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise InvalidRequest(
            f"{param}: Gemini fetches images only from https URLs; send this one as a data: URL", param=param
        )
    url_mime = _IMAGE_TYPES.get(posixpath.splitext(parts.path)[1].lower())
    if url_mime is None:
        raise InvalidRequest(
            f"{param}: cannot tell the image type from the URL (Gemini needs it for a URL image); use a URL "
            f"ending in one of {', '.join(sorted(_IMAGE_TYPES))}, or a data: URL",
            param=param,
        )
    return wire.Part(file_data=wire.FileData(file_uri=url, mime_type=url_mime))


def _file(part: FilePart, param: str) -> wire.Part:
    data = part.file.file_data
    if not isinstance(data, str):
        raise InvalidRequest(
            f"{param}: OpenAI file ids mean nothing to Gemini; send the file inline as file_data", param=f"{param}.file"
        )
    if data.startswith("data:"):
        mime, payload = _data_url(data, f"{param}.file.file_data")
        return wire.Part(inline_data=wire.Blob(mime_type=mime, data=payload))
    raise InvalidRequest(f"{param}.file.file_data must be a base64 data: URL", param=f"{param}.file.file_data")


def _data_url(url: str, param: str) -> tuple[str, str]:
    header, sep, data = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise InvalidRequest(f"{param}: only base64 data: URLs are supported", param=param)
    mime = header[5:-7] or "application/octet-stream"
    return mime, data


def _tools(req: ChatRequest) -> list[wire.Tool] | UnsetType:
    if not req.tools:
        return UNSET
    declarations = [
        wire.FunctionDeclaration(
            name=t.function.name,
            description=t.function.description,
            parameters_json_schema=t.function.parameters,
        )
        for t in req.tools
    ]
    return [wire.Tool(function_declarations=declarations)]


def _tool_config(req: ChatRequest) -> wire.ToolConfig | UnsetType:
    """tool_choice -> functionCallingConfig (ai.google.dev/gemini-api/docs/function-calling, read 2026-06)."""
    choice = req.tool_choice
    if not req.tools or choice in (UNSET, None):
        return UNSET
    if isinstance(choice, NamedToolChoice):
        config = wire.FunctionCallingConfig(mode="ANY", allowed_function_names=[choice.function.name])
    else:
        config = wire.FunctionCallingConfig(mode={"auto": "AUTO", "required": "ANY", "none": "NONE"}[choice])
    return wire.ToolConfig(function_calling_config=config)


def _set(value: Any) -> Any:
    """None (an explicit JSON null from the client) means "not set"."""
    return UNSET if value is None else value


def _generation_config(req: ChatRequest, thinking: ThinkingMode) -> wire.GenerationConfig | UnsetType:
    if req.logit_bias:
        raise InvalidRequest("Gemini does not support logit_bias", param="logit_bias")
    stop = req.stop if isinstance(req.stop, list) else [req.stop] if isinstance(req.stop, str) else UNSET
    logprobs = req.logprobs is True
    mime, schema = _response_format(req)
    config = wire.GenerationConfig(
        stop_sequences=stop,
        candidate_count=_set(req.n),
        max_output_tokens=req.output_cap if req.output_cap is not None else UNSET,
        temperature=_set(req.temperature),
        top_p=_set(req.top_p),
        seed=_set(req.seed),
        presence_penalty=_set(req.presence_penalty),
        frequency_penalty=_set(req.frequency_penalty),
        response_mime_type=mime,
        response_json_schema=schema,
        response_logprobs=True if logprobs else UNSET,
        logprobs=_set(req.top_logprobs) if logprobs else UNSET,
        thinking_config=_thinking_config(req.reasoning_effort, thinking),
    )
    return UNSET if config == wire.GenerationConfig() else config


def _response_format(req: ChatRequest) -> tuple[str | UnsetType, dict[str, Any] | UnsetType]:
    """JSON mode -> responseMimeType; json_schema -> responseJsonSchema too, which takes JSON Schema as-is
    (responseSchema takes only an OpenAPI subset; ai.google.dev/api/generate-content#generationconfig)."""
    fmt = req.response_format
    if isinstance(fmt, ResponseFormatJSONObject):
        return "application/json", UNSET
    if isinstance(fmt, ResponseFormatJSONSchema):
        schema = fmt.json_schema.schema
        return "application/json", schema if isinstance(schema, dict) else {}
    return UNSET, UNSET


def _thinking_config(effort: str | None | UnsetType, mode: ThinkingMode) -> wire.ThinkingConfig | UnsetType:
    if not isinstance(effort, str):
        return UNSET
    if effort not in _LEVELS:
        raise InvalidRequest(
            f"reasoning_effort {effort!r} is not one of {', '.join(_LEVELS)}", param="reasoning_effort"
        )
    show = effort not in ("none", "minimal")
    if mode == "level":
        return wire.ThinkingConfig(thinking_level=_LEVELS[effort], include_thoughts=show)
    return wire.ThinkingConfig(thinking_budget=_BUDGETS[effort], include_thoughts=show)


# ================================================================ response


@dataclass(frozen=True, slots=True)
class Context:
    """What a response translation needs from outside the upstream body."""

    model: str
    created: int
    request_id: str
    provider: str = "gemini"
    n: int = 1
    one_call: bool = False
    """The client sent parallel_tool_calls=false: Gemini has no such switch, so extra calls are cut here."""


def context_for(req: ChatRequest, *, model: str, created: int, request_id: str, provider: str = "gemini") -> Context:
    n = req.n if isinstance(req.n, int) and req.n > 0 else 1
    return Context(model, created, request_id, provider, n, req.parallel_tool_calls is False)


def gemini_finish_reason(reason: str, *, has_tool_calls: bool, provider: str = "gemini") -> str:
    """Gemini finishReason -> OpenAI finish_reason (ai.google.dev/api/generate-content#FinishReason)."""
    if reason in _BROKEN_CALL:
        raise UpstreamProtocolError(f"{provider}: the model produced an unusable function call ({reason})")
    if reason in _CONTENT_FILTER:
        return "content_filter"
    if reason == "MAX_TOKENS":
        return "length"
    return "tool_calls" if has_tool_calls else "stop"


def from_gemini_usage(meta: wire.UsageMetadata) -> Usage:
    """usageMetadata -> OpenAI usage. Thoughts are output tokens (billed so), as OpenAI counts reasoning."""
    prompt = meta.prompt_token_count + meta.tool_use_prompt_token_count
    completion = meta.candidates_token_count + meta.thoughts_token_count
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=meta.cached_content_token_count),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=meta.thoughts_token_count),
    )


@dataclass(slots=True)
class _Pieces:
    """One candidate's parts, sorted into answer, thoughts and tool calls."""

    text: list[str] = field(default_factory=list)
    thoughts: list[str] = field(default_factory=list)
    calls: list[tuple[wire.FunctionCall, str | UnsetType]] = field(default_factory=list)


def _sort_parts(parts: Iterable[wire.Part], provider: str) -> _Pieces:
    pieces = _Pieces()
    for part in parts:
        if isinstance(part.function_call, wire.FunctionCall):
            pieces.calls.append((part.function_call, part.thought_signature))
        elif isinstance(part.text, str):
            (pieces.thoughts if part.thought is True else pieces.text).append(part.text)
        elif part.thought_signature is UNSET:
            # A signature-only part carries nothing to show; anything else (code execution, an image) is
            # something this adapter never asked for.
            raise UpstreamProtocolError(f"{provider}: unexpected content part from upstream", provider=provider)
    return pieces


def _tool_call_id(call: wire.FunctionCall, signature: str | UnsetType, base: str, choice: int, n: int) -> str:
    """A stable id for a call (Gemini's own, else derived from the response id), with the thought
    signature appended: OpenAI clients send the id back verbatim, and Gemini 3 needs the signature back
    on the function call (ai.google.dev/gemini-api/docs/thought-signatures, read 2026-06)."""
    call_id = call.id if isinstance(call.id, str) and call.id else f"call_{base}_{choice}_{n}"
    return f"{call_id}{SIGNATURE_SEP}{signature}" if isinstance(signature, str) and signature else call_id


def _arguments_json(call: wire.FunctionCall) -> str:
    return msgspec.json.encode(call.args if isinstance(call.args, dict) else {}).decode()


def _logprobs(result: wire.LogprobsResult | UnsetType) -> ChoiceLogprobs | None:
    if not isinstance(result, wire.LogprobsResult):
        return None
    tokens = []
    for i, chosen in enumerate(result.chosen_candidates):
        top = result.top_candidates[i].candidates if i < len(result.top_candidates) else []
        tokens.append(
            TokenLogprob(
                token=chosen.token,
                logprob=chosen.log_probability,
                bytes=list(chosen.token.encode()),
                top_logprobs=[
                    TopLogprob(token=t.token, logprob=t.log_probability, bytes=list(t.token.encode())) for t in top
                ],
            )
        )
    return ChoiceLogprobs(content=tokens)


def from_gemini_response(resp: wire.GenerateContentResponse, ctx: Context) -> ChatCompletion:
    """GenerateContentResponse -> ChatCompletion (an error body raises the mapped error)."""
    if isinstance(resp.error, wire.Status):
        raise error_from_status(resp.error, status=0, provider=ctx.provider)
    base = resp.response_id if isinstance(resp.response_id, str) else ctx.request_id
    if resp.candidates:
        choices = [_choice(c, base, ctx) for c in sorted(resp.candidates, key=lambda c: c.index)]
    elif _blocked(resp):
        # The prompt itself was blocked: no candidates at all (GenerateContentResponse docs).
        choices = [Choice(index=i, message=ResponseMessage(), finish_reason="content_filter") for i in range(ctx.n)]
    else:
        raise UpstreamProtocolError(f"{ctx.provider}: response without candidates", provider=ctx.provider)
    usage = resp.usage_metadata
    return ChatCompletion(
        id=f"chatcmpl-{base}",
        created=ctx.created,
        model=resp.model_version if isinstance(resp.model_version, str) else ctx.model,
        choices=choices,
        usage=from_gemini_usage(usage if isinstance(usage, wire.UsageMetadata) else wire.UsageMetadata()),
    )


def _blocked(resp: wire.GenerateContentResponse) -> bool:
    return isinstance(resp.prompt_feedback, wire.PromptFeedback) and isinstance(resp.prompt_feedback.block_reason, str)


def _choice(candidate: wire.Candidate, base: str, ctx: Context) -> Choice:
    parts = candidate.content.parts if isinstance(candidate.content, wire.Content) else []
    pieces = _sort_parts(parts, ctx.provider)
    calls = pieces.calls[:1] if ctx.one_call else pieces.calls
    tool_calls = [
        OutToolCall(
            id=_tool_call_id(call, sig, base, candidate.index, n),
            function=OutFunctionCall(name=call.name, arguments=_arguments_json(call)),
        )
        for n, (call, sig) in enumerate(calls)
    ]
    reason = candidate.finish_reason if isinstance(candidate.finish_reason, str) else "STOP"
    return Choice(
        index=candidate.index,
        message=ResponseMessage(
            content="".join(pieces.text) if pieces.text else None,
            tool_calls=tool_calls or UNSET,
            reasoning_content="".join(pieces.thoughts) if pieces.thoughts else UNSET,
        ),
        logprobs=_logprobs(candidate.logprobs_result),
        finish_reason=gemini_finish_reason(reason, has_tool_calls=bool(tool_calls), provider=ctx.provider),
    )


# ================================================================ stream


@dataclass(slots=True)
class StreamState:
    """Everything the stream translation remembers between events."""

    ctx: Context
    id: str = ""
    model: str = ""
    started: bool = False
    calls: dict[int, int] = field(default_factory=dict)
    """Choice index -> tool calls emitted so far (the next call's OpenAI index)."""
    finished: set[int] = field(default_factory=set)
    usage: wire.UsageMetadata | None = None


def _chunk(state: StreamState, choices: list[ChunkChoice], usage: Usage | UnsetType = UNSET) -> ChatCompletionChunk:
    return ChatCompletionChunk(id=state.id, created=state.ctx.created, model=state.model, choices=choices, usage=usage)


def step(state: StreamState, event: wire.GenerateContentResponse) -> list[ChatCompletionChunk]:
    """One SSE event (a GenerateContentResponse chunk) -> the OpenAI chunks it yields, in order."""
    ctx = state.ctx
    if isinstance(event.error, wire.Status):
        raise error_from_status(event.error, status=0, provider=ctx.provider)
    out: list[ChatCompletionChunk] = []
    if not state.started:
        state.started = True
        state.id = f"chatcmpl-{event.response_id if isinstance(event.response_id, str) else ctx.request_id}"
        state.model = event.model_version if isinstance(event.model_version, str) else ctx.model
        roles = [ChunkChoice(index=i, delta=Delta(role="assistant", content="")) for i in range(ctx.n)]
        out.append(_chunk(state, roles))
    if isinstance(event.usage_metadata, wire.UsageMetadata):
        state.usage = event.usage_metadata
    if not event.candidates and _blocked(event):
        done = [ChunkChoice(index=i, finish_reason="content_filter") for i in range(ctx.n) if i not in state.finished]
        state.finished.update(range(ctx.n))
        out.append(_chunk(state, done))
    for candidate in event.candidates:
        choice = _chunk_choice(state, candidate)
        if choice is not None:
            out.append(_chunk(state, [choice]))
    return out


def _chunk_choice(state: StreamState, candidate: wire.Candidate) -> ChunkChoice | None:
    ctx, i = state.ctx, candidate.index
    parts = candidate.content.parts if isinstance(candidate.content, wire.Content) else []
    pieces = _sort_parts(parts, ctx.provider)
    deltas = []
    base = state.id.removeprefix("chatcmpl-")
    for call, sig in pieces.calls:
        n = state.calls.get(i, 0)
        if ctx.one_call and n >= 1:
            continue
        state.calls[i] = n + 1
        # Gemini sends each function call whole: one delta carries id, name and all the arguments.
        deltas.append(
            ToolCallDelta(
                index=n,
                id=_tool_call_id(call, sig, base, i, n),
                type="function",
                function=FunctionCallDelta(name=call.name, arguments=_arguments_json(call)),
            )
        )
    delta = Delta(
        content="".join(pieces.text) or UNSET,
        reasoning_content="".join(pieces.thoughts) or UNSET,
        tool_calls=deltas or UNSET,
    )
    finish = None
    if isinstance(candidate.finish_reason, str):
        finish = gemini_finish_reason(candidate.finish_reason, has_tool_calls=i in state.calls, provider=ctx.provider)
        state.finished.add(i)
    logprobs = _logprobs(candidate.logprobs_result)
    if finish is None and delta == Delta() and logprobs is None:
        return None
    return ChunkChoice(index=i, delta=delta, logprobs=logprobs, finish_reason=finish)


def finish(state: StreamState) -> list[ChatCompletionChunk]:
    """The stream closed: a cut answer is an error; a complete one ends with its usage chunk."""
    provider = state.ctx.provider
    if not state.started or not set(range(state.ctx.n)) <= state.finished:
        raise UpstreamProtocolError(f"{provider}: stream ended before the answer was complete", provider=provider)
    usage = from_gemini_usage(state.usage or wire.UsageMetadata())
    return [_chunk(state, [], usage=usage)]


# ================================================================ embeddings


def to_gemini_embeddings(req: EmbeddingRequest, *, model: str) -> wire.BatchEmbedContentsRequest:
    """OpenAI embeddings request -> batchEmbedContents (one EmbedContentRequest per input text)."""
    texts = [req.input] if isinstance(req.input, str) else req.input
    if not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest("Gemini embeds text only: input must be a string or a list of strings", param="input")
    name = model if model.startswith("models/") else f"models/{model}"
    dims = req.dimensions if isinstance(req.dimensions, int) else UNSET
    return wire.BatchEmbedContentsRequest(
        requests=[
            wire.EmbedContentRequest(
                model=name, content=wire.Content(parts=[wire.Part(text=t)]), output_dimensionality=dims
            )
            for t in texts
        ]
    )


def _base64_floats(values: list[float]) -> str:
    """OpenAI's base64 embedding: little-endian float32 bytes, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def from_gemini_embeddings(
    resp: wire.BatchEmbedContentsResponse,
    *,
    model: str,
    encoding_format: str | UnsetType = UNSET,
    provider: str = "gemini",
) -> EmbeddingResponse:
    if isinstance(resp.error, wire.Status):
        raise error_from_status(resp.error, status=0, provider=provider)
    as_base64 = encoding_format == "base64"
    data = [
        Embedding(index=i, embedding=_base64_floats(e.values) if as_base64 else e.values)
        for i, e in enumerate(resp.embeddings)
    ]
    tokens = resp.usage_metadata.prompt_token_count if isinstance(resp.usage_metadata, wire.UsageMetadata) else 0
    return EmbeddingResponse(data=data, model=model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))
