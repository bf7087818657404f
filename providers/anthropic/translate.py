"""OpenAI chat <-> Anthropic Messages, as pure functions: request, response and the stream step.

No I/O, no clock, no globals: the adapter passes in what varies (`created`, the provider name).
Every quirk handled here cites the Anthropic doc page it comes from (read 2026-05):

- messages: https://docs.anthropic.com/en/api/messages
- streaming: https://docs.anthropic.com/en/docs/build-with-claude/streaming
- tool use: https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use
- extended thinking: https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking
- structured outputs: https://platform.claude.com/docs/en/build-with-claude/structured-outputs
- stop reasons: https://platform.claude.com/docs/en/build-with-claude/handling-stop-reasons
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import msgspec
from msgspec import UNSET, UnsetType

from providers.anthropic import wire
from providers.anthropic.config import AnthropicConf
from providers.anthropic.errors import anthropic_error
from providers.errors import (
    InvalidRequest,
    UpstreamProtocolError,
)
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
    FilePart,
    FunctionCallDelta,
    FunctionMessage,
    ImagePart,
    Message,
    NamedToolChoice,
    OutFunctionCall,
    OutToolCall,
    PromptTokensDetails,
    RefusalPart,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    ResponseMessage,
    SystemMessage,
    TextPart,
    ToolCallDelta,
    ToolMessage,
    Usage,
    UserMessage,
)

PROVIDER = "anthropic"

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
"""The image media types the Messages API accepts (vision docs, 2026-05)."""

_TYPED = frozenset(ChatRequest.__struct_fields__)
_HARMLESS_EXTRAS = frozenset(
    {"store", "service_tier", "prompt_cache_key", "prompt_cache_retention", "safety_identifier", "top_k"}
)
"""Untyped request fields that do not change the answer (OpenAI-side storage, caching and billing
hints) and are left out, plus `top_k`, which Anthropic has and is translated."""

_DROPPED_TYPED = ("seed", "metadata")
"""Typed fields left out: Anthropic has no seed (OpenAI calls its own seed best-effort) and its
`metadata` holds only `user_id`, which comes from `user`."""

_JSON_TOOL = "json_response"
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_STOP_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class Translated(NamedTuple):
    body: wire.MessagesRequest
    json_tool: str | None
    """Name of the forced tool that carries a JSON answer (structured_output: tool), if any."""


# ================================================================ request


def to_anthropic_request(
    req: ChatRequest,
    *,
    model: str,
    conf: AnthropicConf,
    raw: Mapping[str, Any] | None = None,
    stream: bool = False,
) -> Translated:
    """An OpenAI chat request as a Messages API request, or InvalidRequest naming what cannot be sent."""
    raw = raw or {}
    _check_supported(req, raw)
    thinking, effort, max_tokens = _thinking(req, conf)
    if thinking is not UNSET and _tool_loop_without_signatures(req.messages):
        # A tool-use turn with thinking on must resend the previous thinking block with its signature
        # (extended-thinking docs, "preserving thinking blocks"); a client that did not keep
        # `thinking_blocks` cannot, so this one request goes without thinking.
        thinking, effort, max_tokens = UNSET, UNSET, _cap(req) or conf.max_tokens_default
    _check_thinking_compatible(req, raw, thinking)
    system, messages = _to_messages(req.messages, keep_thinking=thinking is not UNSET)
    tools = _to_tools(req, strict_ok=conf.structured_output == "native")
    tool_choice = _to_tool_choice(req, tools)
    tools, tool_choice, json_tool, fmt = _json_output(req, conf, tools, tool_choice, thinking)
    output_config: wire.OutputConfig | UnsetType = UNSET
    if fmt is not UNSET or effort is not UNSET:
        output_config = wire.OutputConfig(format=fmt, effort=effort)
    body = wire.MessagesRequest(
        model=model,
        max_tokens=max_tokens,
        messages=messages,
        system=system or UNSET,
        stop_sequences=_stop(req.stop),
        temperature=_number(req.temperature),
        top_p=_number(req.top_p),
        top_k=raw["top_k"] if isinstance(raw.get("top_k"), int) else UNSET,
        tools=tools or UNSET,
        tool_choice=tool_choice,
        thinking=thinking,
        output_config=output_config,
        metadata=wire.Metadata(user_id=req.user) if isinstance(req.user, str) and req.user else UNSET,
        stream=True if stream else UNSET,
    )
    return Translated(body=body, json_tool=json_tool)


def _check_supported(req: ChatRequest, raw: Mapping[str, Any]) -> None:
    """Parameters Anthropic has no equivalent for, when set to a value that would change the answer."""
    if isinstance(req.n, int) and req.n != 1:
        raise _unsupported("n", "only one choice per request (n=1)")
    if req.logprobs is True:
        raise _unsupported("logprobs", "logprobs are not returned")
    if isinstance(req.top_logprobs, int) and req.top_logprobs > 0:
        raise _unsupported("top_logprobs", "logprobs are not returned")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name) not in (UNSET, None, 0, 0.0):
            raise _unsupported(name, f"{name} is not supported")
    if req.logit_bias:
        raise _unsupported("logit_bias", "logit_bias is not supported")
    if isinstance(req.temperature, int | float) and req.temperature > 1:
        raise _unsupported("temperature", "temperature ranges from 0 to 1 at Anthropic")
    modalities = raw.get("modalities")
    if modalities not in (None, ["text"]):
        raise _unsupported("modalities", "only text output is supported")
    for name in raw:
        if name not in _TYPED and name not in _HARMLESS_EXTRAS and name != "modalities":
            raise _unsupported(name, f"the parameter '{name}' has no Anthropic equivalent")


def _unsupported(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{PROVIDER}: {why}", param=param, code="unsupported_parameter")


def _cap(req: ChatRequest) -> int | None:
    return req.output_cap


def _cap_param(req: ChatRequest) -> str:
    return "max_completion_tokens" if isinstance(req.max_completion_tokens, int) else "max_tokens"


def _number(value: float | None | UnsetType) -> float | UnsetType:
    return float(value) if isinstance(value, int | float) else UNSET


def _stop(stop: str | list[str] | None | UnsetType) -> list[str] | UnsetType:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and stop:
        return list(stop)
    return UNSET


# ---------------------------------------------------------------- thinking


def _thinking(req: ChatRequest, conf: AnthropicConf) -> tuple[wire.Thinking | UnsetType, str | UnsetType, int]:
    """reasoning_effort -> (thinking, output_config.effort, max_tokens)."""
    cap = _cap(req)
    effort = req.reasoning_effort
    if effort in (UNSET, None, "none", "minimal"):
        return UNSET, UNSET, cap or conf.max_tokens_default
    if not isinstance(effort, str) or effort not in conf.thinking_budgets.__struct_fields__:
        raise InvalidRequest(
            f"{PROVIDER}: reasoning_effort must be one of none, minimal, low, medium, high, xhigh",
            param="reasoning_effort",
            code="invalid_value",
        )
    if conf.thinking == "adaptive":
        # Adaptive thinking takes its depth from output_config.effort (effort docs, 2026-05).
        return wire.ThinkingAdaptive(), effort, cap or conf.max_tokens_default
    budget: int = getattr(conf.thinking_budgets, effort)
    if cap is None:
        # max_tokens counts thinking too: leave the usual room for the answer on top of the budget.
        return wire.ThinkingEnabled(budget_tokens=budget), UNSET, conf.max_tokens_default + budget
    budget = min(budget, cap - 1)  # budget_tokens must be below max_tokens
    if budget < 1024:
        raise InvalidRequest(
            f"{PROVIDER}: reasoning_effort={effort} needs {_cap_param(req)} above 1024 "
            "(Anthropic's smallest thinking budget is 1024 tokens)",
            param=_cap_param(req),
            code="invalid_value",
        )
    return wire.ThinkingEnabled(budget_tokens=budget), UNSET, cap


def _tool_loop_without_signatures(messages: list[Message]) -> bool:
    """The conversation ends in tool results for an assistant turn whose thinking was not kept."""
    if not messages or not isinstance(messages[-1], ToolMessage):
        return False
    for message in reversed(messages):
        if isinstance(message, AssistantMessage):
            return bool(message.tool_calls) and not message.thinking_blocks
    return False


def _check_thinking_compatible(req: ChatRequest, raw: Mapping[str, Any], thinking: Any) -> None:
    """Thinking forbids forced tool use, a changed temperature or top_k, and top_p below 0.95."""
    if thinking is UNSET:
        return
    if req.tool_choice == "required" or isinstance(req.tool_choice, NamedToolChoice):
        raise _unsupported("tool_choice", "with reasoning_effort, tool_choice must be auto or none")
    if isinstance(req.temperature, int | float) and req.temperature != 1:
        raise _unsupported("temperature", "with reasoning_effort, temperature cannot be changed")
    if isinstance(req.top_p, int | float) and req.top_p < 0.95:
        raise _unsupported("top_p", "with reasoning_effort, top_p must be between 0.95 and 1")
    if "top_k" in raw:
        raise _unsupported("top_k", "with reasoning_effort, top_k cannot be set")


# ---------------------------------------------------------------- messages


def _to_messages(
    messages: list[Message], *, keep_thinking: bool
) -> tuple[list[wire.TextBlock], list[wire.MessageParam]]:
    """System and developer messages become the top-level `system`; the rest alternate user/assistant."""
    system: list[wire.TextBlock] = []
    turns: list[wire.MessageParam] = []
    for i, message in enumerate(messages):
        match message:
            case SystemMessage() | DeveloperMessage():
                system.extend(_text_blocks(message.content))
            case UserMessage():
                _append(turns, "user", _user_blocks(message.content, i))
            case AssistantMessage():
                _append(turns, "assistant", _assistant_blocks(message, i, keep_thinking))
            case ToolMessage():
                result = wire.ToolResultBlock(tool_use_id=message.tool_call_id, content=_tool_content(message.content))
                _append(turns, "user", [result])
            case FunctionMessage():
                raise _unsupported(f"messages[{i}]", "legacy function messages are not supported; use tool messages")
    for turn in turns:
        if turn.role == "user":  # tool results must come first in their user turn (tool-use docs)
            turn.content.sort(key=lambda b: not isinstance(b, wire.ToolResultBlock))
    return system, turns


def _append(turns: list[wire.MessageParam], role: Literal["user", "assistant"], blocks: list[wire.Block]) -> None:
    """Consecutive same-role messages (e.g. parallel tool results) merge into one turn."""
    if not blocks:
        return
    if turns and turns[-1].role == role:
        turns[-1].content.extend(blocks)
    else:
        turns.append(wire.MessageParam(role=role, content=blocks))


def _text_blocks(content: str | list[TextPart]) -> list[wire.TextBlock]:
    """Anthropic rejects empty text blocks, so empty strings are left out."""
    if isinstance(content, str):
        return [wire.TextBlock(text=content)] if content else []
    return [wire.TextBlock(text=p.text) for p in content if p.text]


def _tool_content(content: str | list[TextPart]) -> str | list[wire.TextBlock | wire.ImageBlock] | UnsetType:
    if isinstance(content, str):
        return content or UNSET
    return list(_text_blocks(content)) or UNSET


def _user_blocks(content: Any, i: int) -> list[wire.Block]:
    if isinstance(content, str):
        return list(_text_blocks(content))
    blocks: list[wire.Block] = []
    for j, part in enumerate(content):
        param = f"messages[{i}].content[{j}]"
        match part:
            case TextPart(text=text) if text:
                blocks.append(wire.TextBlock(text=text))
            case ImagePart():
                blocks.append(_image_block(part.image_url.url, param))
            case AudioPart() | FilePart():
                raise _unsupported(param, f"{part.__struct_config__.tag} content parts are not supported")
    return blocks


def _image_block(url: str, param: str) -> wire.ImageBlock:
    """An image URL (sent by reference) or a base64 data URL (sent inline)."""
    if url.startswith(("https://", "http://")):
        return wire.ImageBlock(source=wire.URLSource(url=url))
    head, sep, data = url.partition(",")
    if url.startswith("data:") and sep and head.endswith(";base64"):
        media_type = head[5:-7].lower()
        if media_type in _IMAGE_TYPES:
            return wire.ImageBlock(source=wire.Base64Source(media_type=media_type, data=data))
        raise _unsupported(f"{param}.image_url", f"image type {media_type!r} is not supported (jpeg, png, gif, webp)")
    raise _unsupported(f"{param}.image_url", "image_url must be an http(s) URL or a base64 data URL")


def _assistant_blocks(message: AssistantMessage, i: int, keep_thinking: bool) -> list[wire.Block]:
    blocks: list[wire.Block] = []
    if keep_thinking and message.thinking_blocks:
        blocks.extend(
            _thinking_block(b, f"messages[{i}].thinking_blocks[{k}]") for k, b in enumerate(message.thinking_blocks)
        )
    if message.function_call not in (UNSET, None):
        raise _unsupported(f"messages[{i}].function_call", "legacy function_call is not supported; use tool_calls")
    content = message.content
    if isinstance(content, str):
        blocks.extend(_text_blocks(content))
    elif isinstance(content, list):
        for part in content:
            text = part.refusal if isinstance(part, RefusalPart) else part.text
            if text:
                blocks.append(wire.TextBlock(text=text))
    for k, call in enumerate(message.tool_calls or ()):
        param = f"messages[{i}].tool_calls[{k}].function.arguments"
        blocks.append(
            wire.ToolUseBlock(id=call.id, name=call.function.name, input=_arguments(call.function.arguments, param))
        )
    return blocks


def _thinking_block(block: dict[str, Any], param: str) -> wire.Block:
    kind = block.get("type")
    if kind == "thinking" and isinstance(block.get("signature"), str):
        return wire.ThinkingBlock(thinking=str(block.get("thinking", "")), signature=block["signature"])
    if kind == "redacted_thinking" and isinstance(block.get("data"), str):
        return wire.RedactedThinkingBlock(data=block["data"])
    raise InvalidRequest(f"{PROVIDER}: a thinking block needs type and signature (or data)", param=param)


def _arguments(arguments: str, param: str) -> dict[str, Any]:
    """Tool-call arguments (a JSON string in OpenAI) as the object Anthropic's `input` must be."""
    try:
        value = msgspec.json.decode(arguments or "{}")
    except msgspec.DecodeError:
        raise InvalidRequest(f"{PROVIDER}: tool call arguments are not valid JSON", param=param) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{PROVIDER}: tool call arguments must be a JSON object", param=param)
    return value


# ---------------------------------------------------------------- tools and structured output


def _to_tools(req: ChatRequest, *, strict_ok: bool) -> list[wire.ToolParam]:
    tools: list[wire.ToolParam] = []
    for tool in req.tools or ():
        fn = tool.function
        schema = fn.parameters if isinstance(fn.parameters, dict) else {"type": "object", "properties": {}}
        tools.append(
            wire.ToolParam(
                name=fn.name,
                description=fn.description,
                input_schema=schema,
                # Strict tool use comes with structured outputs (structured-outputs docs, 2026-05).
                strict=True if fn.strict is True and strict_ok else UNSET,
            )
        )
    return tools


def _to_tool_choice(req: ChatRequest, tools: list[wire.ToolParam]) -> wire.ToolChoice | UnsetType:
    choice = req.tool_choice
    disable = True if req.parallel_tool_calls is False else UNSET
    if not tools:
        if choice == "required" or isinstance(choice, NamedToolChoice):
            raise _unsupported("tool_choice", "tool_choice needs tools")
        return UNSET
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in {t.name for t in tools}:
            raise InvalidRequest(f"{PROVIDER}: tool_choice names a tool that is not in tools", param="tool_choice")
        return wire.ToolChoiceTool(name=choice.function.name, disable_parallel_tool_use=disable)
    if choice == "none":
        return wire.ToolChoiceNone()
    if choice == "required":
        return wire.ToolChoiceAny(disable_parallel_tool_use=disable)
    if choice == "auto" or disable is not UNSET:
        return wire.ToolChoiceAuto(disable_parallel_tool_use=disable)
    return UNSET


def _json_output(
    req: ChatRequest,
    conf: AnthropicConf,
    tools: list[wire.ToolParam],
    tool_choice: wire.ToolChoice | UnsetType,
    thinking: Any,
) -> tuple[list[wire.ToolParam], wire.ToolChoice | UnsetType, str | None, wire.JSONSchemaFormat | UnsetType]:
    """response_format -> (tools, tool_choice, json tool name, output_config.format).

    json_schema goes natively as `output_config.format` (structured_output: native). JSON mode, which
    Anthropic has no native form of, and json_schema with structured_output: tool become one more
    tool that the model must call; its input is the answer, turned back into content on the way out.
    """
    fmt = req.response_format
    if isinstance(fmt, ResponseFormatJSONSchema):
        if not isinstance(fmt.json_schema.schema, dict):
            raise InvalidRequest(f"{PROVIDER}: json_schema needs a schema", param="response_format.json_schema.schema")
        if conf.structured_output == "native":
            return tools, tool_choice, None, wire.JSONSchemaFormat(schema=fmt.json_schema.schema)
        name = fmt.json_schema.name if _TOOL_NAME.match(fmt.json_schema.name) else _JSON_TOOL
        description = fmt.json_schema.description or "Give the final answer as the input of this tool."
        schema = fmt.json_schema.schema
    elif isinstance(fmt, ResponseFormatJSONObject):
        name, description = _JSON_TOOL, "Give the final answer, a JSON object, as the input of this tool."
        schema = {"type": "object"}
    else:
        return tools, tool_choice, None, UNSET
    if isinstance(tool_choice, wire.ToolChoiceAny | wire.ToolChoiceTool):
        return tools, tool_choice, None, UNSET  # the answer is a tool call: its arguments are JSON already
    if thinking is not UNSET:
        raise _unsupported("response_format", "JSON mode goes through a forced tool, which thinking does not allow")
    if any(t.name == name for t in tools):
        raise InvalidRequest(f"{PROVIDER}: a tool is named {name!r}, the name of the JSON answer", param="tools")
    json_tool = wire.ToolParam(name=name, description=description, input_schema=schema)
    if tools and not isinstance(tool_choice, wire.ToolChoiceNone):
        disable = tool_choice.disable_parallel_tool_use if isinstance(tool_choice, wire.ToolChoiceAuto) else UNSET
        return [*tools, json_tool], wire.ToolChoiceAny(disable_parallel_tool_use=disable), name, UNSET  # tool or answer
    return [*tools, json_tool], wire.ToolChoiceTool(name=name), name, UNSET


# ================================================================ response


def anthropic_finish_reason(stop_reason: str | None, *, tool_calls: bool) -> str:
    """Anthropic stop_reason -> OpenAI finish_reason (a new, unknown reason reads as a normal stop)."""
    if stop_reason == "tool_use" and not tool_calls:
        return "stop"  # the forced JSON tool: its input was the answer
    return _STOP_REASONS.get(stop_reason or "end_turn", "stop")


def anthropic_usage(input_tokens: int, output_tokens: int, cache_creation: int | None, cache_read: int | None) -> Usage:
    """Anthropic counts cache reads and writes apart from `input_tokens`; OpenAI's prompt_tokens has them all."""
    cached = cache_read or 0
    prompt = input_tokens + (cache_creation or 0) + cached
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=output_tokens,
        total_tokens=prompt + output_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


def from_anthropic_response(msg: wire.Message, *, created: int, model: str, json_tool: str | None) -> ChatCompletion:
    text: list[str] = []
    reasoning: list[str] = []
    thinking_blocks: list[dict[str, Any]] = []
    calls: list[OutToolCall] = []
    for block in msg.content:
        match block:
            case wire.TextOut():
                text.append(block.text)
            case wire.ThinkingOut():
                reasoning.append(block.thinking)
                thinking_blocks.append({"type": "thinking", "thinking": block.thinking, "signature": block.signature})
            case wire.RedactedThinkingOut():
                thinking_blocks.append({"type": "redacted_thinking", "data": block.data})
            case wire.ToolUseOut() if block.name == json_tool:
                text.append(_json_text(block.input))
            case wire.ToolUseOut():
                arguments = _json_text(block.input)
                calls.append(OutToolCall(id=block.id, function=OutFunctionCall(name=block.name, arguments=arguments)))
    message = ResponseMessage(
        content="".join(text) if text or not calls else None,
        tool_calls=calls or UNSET,
        reasoning_content="".join(reasoning) if reasoning else UNSET,
        thinking_blocks=thinking_blocks or UNSET,
    )
    usage = msg.usage
    return ChatCompletion(
        id=msg.id,
        created=created,
        model=msg.model or model,
        choices=[
            Choice(message=message, finish_reason=anthropic_finish_reason(msg.stop_reason, tool_calls=bool(calls)))
        ],
        usage=anthropic_usage(
            usage.input_tokens, usage.output_tokens, usage.cache_creation_input_tokens, usage.cache_read_input_tokens
        ),
    )


def _json_text(value: dict[str, Any]) -> str:
    return msgspec.json.encode(value).decode()


# ================================================================ stream


@dataclass(slots=True)
class _Block:
    kind: Literal["text", "thinking", "redacted", "tool", "json"]
    tool_index: int = -1
    has_arguments: bool = False
    thinking: list[str] = field(default_factory=list)
    signature: str = ""
    closed: bool = False


@dataclass(slots=True)
class StreamState:
    """Everything the stream translation remembers between events."""

    created: int
    model: str
    json_tool: str | None = None
    provider: str = PROVIDER
    id: str = ""
    started: bool = False
    done: bool = False
    blocks: dict[int, _Block] = field(default_factory=dict)
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation: int | None = None
    cache_read: int | None = None
    stop_reason: str | None = None


def step(state: StreamState, event: wire.Event) -> list[ChatCompletionChunk]:
    """One Anthropic stream event -> the OpenAI chunks it means (often none). Raises typed errors."""
    match event:
        case wire.Ping():
            return []
        case wire.ErrorEvent(error=error):
            raise anthropic_error(None, error.type, error.message, provider=state.provider)
        case wire.MessageStart(message=message):
            return _on_message_start(state, message)
    if not state.started or state.done:
        where = "before message_start" if not state.started else "after message_stop"
        raise _protocol(state, f"{type(event).__struct_config__.tag} event {where}")
    match event:
        case wire.ContentBlockStart():
            return _on_block_start(state, event.index, event.content_block)
        case wire.ContentBlockDelta():
            return _on_block_delta(state, event.index, event.delta)
        case wire.ContentBlockStop():
            return _on_block_stop(state, event.index)
        case wire.MessageDelta():
            _on_message_delta(state, event)
            return []
        case wire.MessageStop():
            return _on_message_stop(state)
    raise _protocol(state, "unexpected event")  # pragma: no cover - the union above is exhaustive


def _protocol(state: StreamState, what: str) -> UpstreamProtocolError:
    return UpstreamProtocolError(f"{state.provider}: malformed event stream ({what})", provider=state.provider)


def _chunk(state: StreamState, delta: Delta, finish_reason: str | None = None) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id=state.id,
        created=state.created,
        model=state.model,
        choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)],
    )


def _on_message_start(state: StreamState, message: wire.Message) -> list[ChatCompletionChunk]:
    if state.started:
        raise _protocol(state, "a second message_start")
    state.started = True
    state.id = message.id
    state.model = message.model or state.model
    usage = message.usage
    state.input_tokens = usage.input_tokens
    state.output_tokens = usage.output_tokens
    state.cache_creation = usage.cache_creation_input_tokens
    state.cache_read = usage.cache_read_input_tokens
    return [_chunk(state, Delta(role="assistant", content=""))]


def _on_block_start(state: StreamState, index: int, block: wire.ContentBlock) -> list[ChatCompletionChunk]:
    if index in state.blocks:
        raise _protocol(state, f"content block {index} started twice")
    match block:
        case wire.TextOut():
            state.blocks[index] = _Block("text")
            return [_chunk(state, Delta(content=block.text))] if block.text else []
        case wire.ThinkingOut():
            state.blocks[index] = _Block("thinking", thinking=[block.thinking], signature=block.signature)
            return [_chunk(state, Delta(reasoning_content=block.thinking))] if block.thinking else []
        case wire.RedactedThinkingOut():
            state.blocks[index] = _Block("redacted")
            return [_chunk(state, Delta(thinking_blocks=[{"type": "redacted_thinking", "data": block.data}]))]
        case wire.ToolUseOut() if block.name == state.json_tool:
            state.blocks[index] = _Block("json")
            return []
        case wire.ToolUseOut():
            state.blocks[index] = _Block("tool", tool_index=state.tool_calls)
            state.tool_calls += 1
            call = ToolCallDelta(
                index=state.blocks[index].tool_index,
                id=block.id,
                type="function",
                function=FunctionCallDelta(name=block.name, arguments=""),
            )
            return [_chunk(state, Delta(tool_calls=[call]))]
    raise _protocol(state, "unknown content block")  # pragma: no cover


def _open_block(state: StreamState, index: int) -> _Block:
    block = state.blocks.get(index)
    if block is None or block.closed:
        raise _protocol(state, f"content block {index} is not open")
    return block


def _on_block_delta(state: StreamState, index: int, delta: wire.BlockDelta) -> list[ChatCompletionChunk]:
    block = _open_block(state, index)
    match (block.kind, delta):
        case ("text", wire.TextDelta(text=text)):
            return [_chunk(state, Delta(content=text))] if text else []
        case ("thinking", wire.ThinkingDelta(thinking=text)):
            block.thinking.append(text)
            return [_chunk(state, Delta(reasoning_content=text))] if text else []
        case ("thinking", wire.SignatureDelta(signature=signature)):
            block.signature += signature
            return []
        case ("json", wire.InputJSONDelta(partial_json=fragment)):
            return [_chunk(state, Delta(content=fragment))] if fragment else []
        case ("tool", wire.InputJSONDelta(partial_json=fragment)) if fragment:
            block.has_arguments = True
            return [_chunk(state, _arguments_delta(block.tool_index, fragment))]
        case ("tool", wire.InputJSONDelta()):
            return []
    raise _protocol(state, f"{delta.__struct_config__.tag} in a {block.kind} block")


def _arguments_delta(tool_index: int, fragment: str) -> Delta:
    return Delta(tool_calls=[ToolCallDelta(index=tool_index, function=FunctionCallDelta(arguments=fragment))])


def _on_block_stop(state: StreamState, index: int) -> list[ChatCompletionChunk]:
    block = _open_block(state, index)
    block.closed = True
    if block.kind == "thinking":
        complete = {"type": "thinking", "thinking": "".join(block.thinking), "signature": block.signature}
        return [_chunk(state, Delta(thinking_blocks=[complete]))]
    if block.kind == "tool" and not block.has_arguments:
        return [_chunk(state, _arguments_delta(block.tool_index, "{}"))]  # a tool called without input
    return []


def _on_message_delta(state: StreamState, event: wire.MessageDelta) -> None:
    state.stop_reason = event.delta.stop_reason or state.stop_reason
    usage = event.usage
    state.output_tokens = usage.output_tokens or state.output_tokens
    if usage.input_tokens is not None:
        state.input_tokens = usage.input_tokens or state.input_tokens
    if usage.cache_creation_input_tokens is not None:
        state.cache_creation = usage.cache_creation_input_tokens
    if usage.cache_read_input_tokens is not None:
        state.cache_read = usage.cache_read_input_tokens


def _on_message_stop(state: StreamState) -> list[ChatCompletionChunk]:
    state.done = True
    finish = anthropic_finish_reason(state.stop_reason, tool_calls=state.tool_calls > 0)
    usage = anthropic_usage(state.input_tokens, state.output_tokens, state.cache_creation, state.cache_read)
    last = ChatCompletionChunk(id=state.id, created=state.created, model=state.model, choices=[], usage=usage)
    return [_chunk(state, Delta(), finish), last]
