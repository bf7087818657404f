"""OpenAI chat-completions wire schema: request, response and stream chunk, as msgspec Structs.

Conventions:
- Requests (``Wire``): ``UNSET`` means absent; unknown fields are ignored when decoding (the raw body
  keeps them for pass-through to OpenAI-compatible upstreams).
- Responses and chunks (``Out``): a field whose default is ``None`` is always encoded (OpenAI sends
  explicit ``null``s, e.g. ``"logprobs": null``); a field whose default is ``UNSET`` is omitted when
  absent. Decoding is lenient: OpenAI-compatible servers (vLLM, Mistral, ...) omit or add fields.
"""

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from providers.schema.errors import ErrorDetail


class Wire(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of request-side structs. UNSET means absent on the wire."""


class Out(msgspec.Struct, kw_only=True):
    """Base of response-side structs: None defaults are encoded as null, UNSET ones are omitted."""


# ---------------------------------------------------------------- request: content parts


class ImageURL(Wire):
    url: str
    detail: str | UnsetType = UNSET


class InputAudio(Wire):
    data: str
    format: str


class FileRef(Wire):
    file_id: str | UnsetType = UNSET
    file_data: str | UnsetType = UNSET
    filename: str | UnsetType = UNSET


class TextPart(Wire, tag_field="type", tag="text"):
    text: str


class ImagePart(Wire, tag_field="type", tag="image_url"):
    image_url: ImageURL


class AudioPart(Wire, tag_field="type", tag="input_audio"):
    input_audio: InputAudio


class FilePart(Wire, tag_field="type", tag="file"):
    file: FileRef


class RefusalPart(Wire, tag_field="type", tag="refusal"):
    refusal: str


UserPart = TextPart | ImagePart | AudioPart | FilePart
AssistantPart = TextPart | RefusalPart

# ---------------------------------------------------------------- request: messages and tools


class FunctionCall(Wire):
    name: str
    arguments: str


class ToolCall(Wire, omit_defaults=False):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class SystemMessage(Wire, tag_field="role", tag="system"):
    content: str | list[TextPart]
    name: str | UnsetType = UNSET


class DeveloperMessage(Wire, tag_field="role", tag="developer"):
    content: str | list[TextPart]
    name: str | UnsetType = UNSET


class UserMessage(Wire, tag_field="role", tag="user"):
    content: str | list[UserPart]
    name: str | UnsetType = UNSET


class AssistantMessage(Wire, tag_field="role", tag="assistant", omit_defaults=False):
    content: str | list[AssistantPart] | None = None
    refusal: str | None | UnsetType = UNSET
    name: str | UnsetType = UNSET
    tool_calls: list[ToolCall] | UnsetType = UNSET
    function_call: FunctionCall | None | UnsetType = UNSET
    reasoning_content: str | None | UnsetType = UNSET
    thinking_blocks: list[dict[str, Any]] | None | UnsetType = UNSET
    """Signed thinking blocks a previous answer carried (Anthropic), handed back for tool-use turns."""


class ToolMessage(Wire, tag_field="role", tag="tool"):
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(Wire, tag_field="role", tag="function"):
    content: str | None
    name: str


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage


class FunctionDef(Wire):
    name: str
    description: str | UnsetType = UNSET
    parameters: dict[str, Any] | UnsetType = UNSET
    strict: bool | None | UnsetType = UNSET


class Tool(Wire, omit_defaults=False):
    function: FunctionDef
    type: Literal["function"] = "function"


class NamedFunction(Wire):
    name: str


class NamedToolChoice(Wire, omit_defaults=False):
    function: NamedFunction
    type: Literal["function"] = "function"


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JSONSchemaSpec(Wire):
    name: str
    description: str | UnsetType = UNSET
    schema: dict[str, Any] | UnsetType = UNSET
    strict: bool | None | UnsetType = UNSET


class ResponseFormatText(Wire, tag_field="type", tag="text"):
    pass


class ResponseFormatJSONObject(Wire, tag_field="type", tag="json_object"):
    pass


class ResponseFormatJSONSchema(Wire, tag_field="type", tag="json_schema"):
    json_schema: JSONSchemaSpec


ResponseFormat = ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema


class StreamOptions(Wire):
    include_usage: bool | UnsetType = UNSET
    include_obfuscation: bool | UnsetType = UNSET


class ChatRequest(Wire):
    """POST /v1/chat/completions. Only the fields escalade reads or translates are typed here."""

    model: str
    messages: list[Message]
    stream: bool | None | UnsetType = UNSET
    stream_options: StreamOptions | None | UnsetType = UNSET
    n: int | None | UnsetType = UNSET
    max_tokens: int | None | UnsetType = UNSET
    max_completion_tokens: int | None | UnsetType = UNSET
    temperature: float | None | UnsetType = UNSET
    top_p: float | None | UnsetType = UNSET
    stop: str | list[str] | None | UnsetType = UNSET
    seed: int | None | UnsetType = UNSET
    presence_penalty: float | None | UnsetType = UNSET
    frequency_penalty: float | None | UnsetType = UNSET
    logit_bias: dict[str, int | float] | None | UnsetType = UNSET
    logprobs: bool | None | UnsetType = UNSET
    top_logprobs: int | None | UnsetType = UNSET
    tools: list[Tool] | None | UnsetType = UNSET
    tool_choice: ToolChoice | None | UnsetType = UNSET
    parallel_tool_calls: bool | None | UnsetType = UNSET
    response_format: ResponseFormat | None | UnsetType = UNSET
    reasoning_effort: str | None | UnsetType = UNSET
    user: str | None | UnsetType = UNSET
    metadata: dict[str, str] | None | UnsetType = UNSET

    @property
    def is_stream(self) -> bool:
        return bool(self.stream)

    @property
    def output_cap(self) -> int | None:
        """The output-token cap the client asked for, whichever field it used."""
        for value in (self.max_completion_tokens, self.max_tokens):
            if isinstance(value, int):
                return value
        return None

    @property
    def wants_usage_chunk(self) -> bool:
        return isinstance(self.stream_options, StreamOptions) and self.stream_options.include_usage is True


def with_overrides(req: ChatRequest, overrides: dict[str, Any]) -> ChatRequest:
    """The request with the policy's per-attempt fields (e.g. a rung's reasoning_effort) set over the
    client's. Fields ChatRequest does not type are ignored here (native adapters translate typed fields)."""
    known = {k: v for k, v in overrides.items() if k in ChatRequest.__struct_fields__}
    if not known:
        return req
    return msgspec.convert({**msgspec.to_builtins(req), **known}, ChatRequest)


# ---------------------------------------------------------------- response


class PromptTokensDetails(Out):
    cached_tokens: int | None = None
    audio_tokens: int | UnsetType = UNSET


class CompletionTokensDetails(Out):
    reasoning_tokens: int | None = None
    audio_tokens: int | UnsetType = UNSET
    accepted_prediction_tokens: int | UnsetType = UNSET
    rejected_prediction_tokens: int | UnsetType = UNSET


class Usage(Out):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None | UnsetType = UNSET
    completion_tokens_details: CompletionTokensDetails | None | UnsetType = UNSET


class TopLogprob(Out):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(Out):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(Out):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None | UnsetType = UNSET


class OutFunctionCall(Out):
    name: str = ""
    arguments: str = ""


class OutToolCall(Out):
    id: str = ""
    type: str = "function"
    function: OutFunctionCall = msgspec.field(default_factory=OutFunctionCall)


class ResponseMessage(Out):
    role: str = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[OutToolCall] | UnsetType = UNSET
    function_call: OutFunctionCall | None | UnsetType = UNSET
    annotations: list[Any] | None | UnsetType = UNSET
    audio: dict[str, Any] | None | UnsetType = UNSET
    reasoning_content: str | None | UnsetType = UNSET
    reasoning: str | None | UnsetType = UNSET
    thinking_blocks: list[dict[str, Any]] | UnsetType = UNSET
    """Anthropic thinking blocks with their signatures (LiteLLM's field name), to be sent back in
    the next turn's assistant message; `reasoning_content` holds the same text for display."""


class Choice(Out):
    index: int = 0
    message: ResponseMessage = msgspec.field(default_factory=ResponseMessage)
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None
    content_filter_results: dict[str, Any] | UnsetType = UNSET
    """Azure OpenAI's per-choice content-filter annotations, passed through."""


class ChatCompletion(Out):
    id: str = ""
    object: str = "chat.completion"
    created: int = 0
    model: str = ""
    choices: list[Choice] = []
    usage: Usage | None = None
    system_fingerprint: str | None | UnsetType = UNSET
    service_tier: str | None | UnsetType = UNSET
    prompt_filter_results: list[Any] | UnsetType = UNSET
    """Azure OpenAI's content-filter annotations of the prompt, passed through."""
    error: ErrorDetail | UnsetType = UNSET
    """Set when an upstream answered 200 with an error body; never sent to a client."""


# ---------------------------------------------------------------- stream chunk


class FunctionCallDelta(Out):
    name: str | UnsetType = UNSET
    arguments: str | UnsetType = UNSET


class ToolCallDelta(Out):
    index: int = 0
    id: str | UnsetType = UNSET
    type: str | UnsetType = UNSET
    function: FunctionCallDelta | UnsetType = UNSET


class Delta(Out):
    role: str | UnsetType = UNSET
    content: str | None | UnsetType = UNSET
    refusal: str | None | UnsetType = UNSET
    tool_calls: list[ToolCallDelta] | UnsetType = UNSET
    function_call: FunctionCallDelta | UnsetType = UNSET
    reasoning_content: str | None | UnsetType = UNSET
    reasoning: str | None | UnsetType = UNSET
    thinking_blocks: list[dict[str, Any]] | UnsetType = UNSET
    """Anthropic: a thinking block's signature once it is known (see ResponseMessage.thinking_blocks)."""

    def shows_progress(self) -> bool:
        """True when the upstream is generating: answer or reasoning text (liveness, not the commit point)."""
        return self.carries_answer() or bool(self.reasoning_content) or bool(self.reasoning)

    def carries_answer(self) -> bool:
        """True once this delta holds content or a tool call: the stream's commit point."""
        return bool(self.content) or bool(self.tool_calls) or bool(self.refusal) or bool(self.function_call)


class ChunkChoice(Out):
    index: int = 0
    delta: Delta = msgspec.field(default_factory=Delta)
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None
    content_filter_results: dict[str, Any] | UnsetType = UNSET
    """Azure OpenAI's per-choice content-filter annotations, passed through."""


class ChatCompletionChunk(Out):
    id: str = ""
    object: str = "chat.completion.chunk"
    created: int = 0
    model: str = ""
    choices: list[ChunkChoice] = []
    usage: Usage | None | UnsetType = UNSET
    system_fingerprint: str | None | UnsetType = UNSET
    service_tier: str | None | UnsetType = UNSET
    obfuscation: str | UnsetType = UNSET
    prompt_filter_results: list[Any] | UnsetType = UNSET
    """Azure OpenAI's content-filter annotations of the prompt, passed through."""
    error: ErrorDetail | UnsetType = UNSET
    """Set when an upstream sent an in-band error event; never forwarded as a chunk."""

    def carries_answer(self) -> bool:
        return any(c.delta.carries_answer() for c in self.choices)

    def shows_progress(self) -> bool:
        return any(c.delta.shows_progress() for c in self.choices)
