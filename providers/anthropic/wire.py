"""Anthropic Messages API wire schema: request, response, stream events and error body (msgspec Structs).

Written from the API reference (https://docs.anthropic.com/en/api/messages and
/en/docs/build-with-claude/streaming, read 2026-05). Requests are encoded from typed Structs (UNSET =
absent). Responses and events are decoded leniently (unknown fields ignored, e.g. `stop_details`,
`usage.cache_creation`, `usage.service_tier`), but block, delta and event *types* are closed unions:
a type escalade does not know is a decode error, which the adapter reports as a protocol error.
"""

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType


class Req(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of request Structs: UNSET fields are left out."""


class Res(msgspec.Struct, kw_only=True):
    """Base of response Structs: lenient decoding."""


# ---------------------------------------------------------------- request: content blocks


class TextBlock(Req, tag_field="type", tag="text"):
    text: str


class Base64Source(Req, tag_field="type", tag="base64"):
    media_type: str
    data: str


class URLSource(Req, tag_field="type", tag="url"):
    url: str


class ImageBlock(Req, tag_field="type", tag="image"):
    source: Base64Source | URLSource


class ToolUseBlock(Req, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(Req, tag_field="type", tag="tool_result"):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock] | UnsetType = UNSET
    is_error: bool | UnsetType = UNSET


class ThinkingBlock(Req, tag_field="type", tag="thinking"):
    thinking: str
    signature: str


class RedactedThinkingBlock(Req, tag_field="type", tag="redacted_thinking"):
    data: str


Block = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock


class MessageParam(Req):
    role: Literal["user", "assistant"]
    content: list[Block]


# ---------------------------------------------------------------- request: tools, thinking, output


class ToolParam(Req):
    name: str
    input_schema: dict[str, Any]
    description: str | UnsetType = UNSET
    strict: bool | UnsetType = UNSET


class ToolChoiceAuto(Req, tag_field="type", tag="auto"):
    disable_parallel_tool_use: bool | UnsetType = UNSET


class ToolChoiceAny(Req, tag_field="type", tag="any"):
    disable_parallel_tool_use: bool | UnsetType = UNSET


class ToolChoiceTool(Req, tag_field="type", tag="tool"):
    name: str
    disable_parallel_tool_use: bool | UnsetType = UNSET


class ToolChoiceNone(Req, tag_field="type", tag="none"):
    pass


ToolChoice = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


class ThinkingEnabled(Req, tag_field="type", tag="enabled"):
    budget_tokens: int


class ThinkingAdaptive(Req, tag_field="type", tag="adaptive"):
    pass


class ThinkingDisabled(Req, tag_field="type", tag="disabled"):
    pass


Thinking = ThinkingEnabled | ThinkingAdaptive | ThinkingDisabled


class JSONSchemaFormat(Req, tag_field="type", tag="json_schema"):
    schema: dict[str, Any]


class OutputConfig(Req):
    format: JSONSchemaFormat | UnsetType = UNSET
    effort: str | UnsetType = UNSET


class Metadata(Req):
    user_id: str | UnsetType = UNSET


class MessagesRequest(Req):
    """POST /v1/messages."""

    model: str
    max_tokens: int
    messages: list[MessageParam]
    system: list[TextBlock] | UnsetType = UNSET
    stop_sequences: list[str] | UnsetType = UNSET
    temperature: float | UnsetType = UNSET
    top_p: float | UnsetType = UNSET
    top_k: int | UnsetType = UNSET
    tools: list[ToolParam] | UnsetType = UNSET
    tool_choice: ToolChoice | UnsetType = UNSET
    thinking: Thinking | UnsetType = UNSET
    output_config: OutputConfig | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET
    stream: bool | UnsetType = UNSET


# ---------------------------------------------------------------- response


class TextOut(Res, tag_field="type", tag="text"):
    text: str = ""


class ToolUseOut(Res, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any] = {}


class ThinkingOut(Res, tag_field="type", tag="thinking"):
    thinking: str = ""
    signature: str = ""


class RedactedThinkingOut(Res, tag_field="type", tag="redacted_thinking"):
    data: str = ""


ContentBlock = TextOut | ToolUseOut | ThinkingOut | RedactedThinkingOut


class AnthropicUsage(Res):
    """`input_tokens` excludes cached tokens; reads and writes of the prompt cache are counted apart."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class Message(Res):
    id: str = ""
    model: str = ""
    role: str = "assistant"
    content: list[ContentBlock] = []
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: AnthropicUsage = msgspec.field(default_factory=AnthropicUsage)


class ErrorInfo(Res):
    type: str = "api_error"
    message: str = ""


class ErrorResponse(Res):
    """`{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}`."""

    error: ErrorInfo
    type: str = "error"


# ---------------------------------------------------------------- stream events


class TextDelta(Res, tag_field="type", tag="text_delta"):
    text: str = ""


class InputJSONDelta(Res, tag_field="type", tag="input_json_delta"):
    partial_json: str = ""


class ThinkingDelta(Res, tag_field="type", tag="thinking_delta"):
    thinking: str = ""


class SignatureDelta(Res, tag_field="type", tag="signature_delta"):
    signature: str = ""


BlockDelta = TextDelta | InputJSONDelta | ThinkingDelta | SignatureDelta


class MessageStart(Res, tag_field="type", tag="message_start"):
    message: Message


class ContentBlockStart(Res, tag_field="type", tag="content_block_start"):
    index: int
    content_block: ContentBlock


class ContentBlockDelta(Res, tag_field="type", tag="content_block_delta"):
    index: int
    delta: BlockDelta


class ContentBlockStop(Res, tag_field="type", tag="content_block_stop"):
    index: int


class StopInfo(Res):
    stop_reason: str | None = None
    stop_sequence: str | None = None


class DeltaUsage(Res):
    """Cumulative counts; newer API versions repeat the input-side counts here as well."""

    output_tokens: int = 0
    input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class MessageDelta(Res, tag_field="type", tag="message_delta"):
    delta: StopInfo = msgspec.field(default_factory=StopInfo)
    usage: DeltaUsage = msgspec.field(default_factory=DeltaUsage)


class MessageStop(Res, tag_field="type", tag="message_stop"):
    pass


class Ping(Res, tag_field="type", tag="ping"):
    pass


class ErrorEvent(Res, tag_field="type", tag="error"):
    error: ErrorInfo


Event = (
    MessageStart
    | ContentBlockStart
    | ContentBlockDelta
    | ContentBlockStop
    | MessageDelta
    | MessageStop
    | Ping
    | ErrorEvent
)


# ---------------------------------------------------------------- codecs (built once)

encode = msgspec.json.Encoder().encode
decode_message = msgspec.json.Decoder(Message).decode
decode_event = msgspec.json.Decoder(Event).decode
decode_error = msgspec.json.Decoder(ErrorResponse).decode
