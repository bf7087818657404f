"""Mistral API wire schema: chat request, response, stream chunk, error body, embeddings request.

Source: the API reference (docs.mistral.ai/api, read 2026-06) and its OpenAPI document. The request
side is strict on Mistral's end (an unknown field is a 422), so only fields listed here are sent.
Responses decode leniently; a content chunk of an unknown type is a DecodeError (a protocol error).
"""

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType


class MWire(msgspec.Struct, kw_only=True, omit_defaults=True):
    """UNSET means absent on the wire."""


# ---------------------------------------------------------------- content chunks


class TextChunk(MWire, tag_field="type", tag="text"):
    text: str


class ImageURL(MWire):
    url: str
    detail: str | UnsetType = UNSET


class ImageURLChunk(MWire, tag_field="type", tag="image_url"):
    image_url: ImageURL | str


class AudioChunk(MWire, tag_field="type", tag="input_audio"):
    input_audio: str
    """Base64 audio."""


class FileChunk(MWire, tag_field="type", tag="file"):
    file_id: str


class ReferenceChunk(MWire, tag_field="type", tag="reference"):
    reference_ids: list[int] = []


class ThinkChunk(MWire, tag_field="type", tag="thinking"):
    """Reasoning traces (Magistral, and Mistral Small 4 / Medium 3.5 with reasoning_effort=high)."""

    thinking: list[TextChunk | ReferenceChunk] = []
    closed: bool | UnsetType = UNSET


UserChunk = TextChunk | ImageURLChunk | AudioChunk | FileChunk
OutChunk = TextChunk | ThinkChunk | ReferenceChunk

# ---------------------------------------------------------------- request


class FunctionCall(MWire):
    name: str = ""
    arguments: str | dict[str, Any] = ""


class ToolCall(MWire):
    function: FunctionCall
    id: str | None | UnsetType = UNSET
    type: str | None | UnsetType = UNSET
    """Always "function"; responses have been seen with null here."""
    index: int | None | UnsetType = UNSET


class SystemMessage(MWire, tag_field="role", tag="system"):
    content: str | list[TextChunk]


class UserMessage(MWire, tag_field="role", tag="user"):
    content: str | list[UserChunk]


class AssistantMessage(MWire, tag_field="role", tag="assistant"):
    content: str | UnsetType = UNSET
    tool_calls: list[ToolCall] | UnsetType = UNSET


class ToolMessage(MWire, tag_field="role", tag="tool"):
    content: str
    tool_call_id: str
    name: str | UnsetType = UNSET


Message = SystemMessage | UserMessage | AssistantMessage | ToolMessage


class Function(MWire):
    name: str
    description: str | UnsetType = UNSET
    parameters: dict[str, Any] = {}
    strict: bool | UnsetType = UNSET


class Tool(MWire):
    type: str
    function: Function


class FunctionName(MWire):
    name: str


class ToolChoice(MWire):
    type: str
    function: FunctionName


class JSONSchema(MWire):
    name: str
    schema: dict[str, Any]
    description: str | UnsetType = UNSET
    strict: bool | UnsetType = UNSET


class ResponseFormat(MWire):
    type: str
    """text, json_object or json_schema."""
    json_schema: JSONSchema | UnsetType = UNSET


class ChatCompletionRequest(MWire):
    model: str
    messages: list[Message]
    temperature: float | UnsetType = UNSET
    top_p: float | UnsetType = UNSET
    max_tokens: int | UnsetType = UNSET
    stream: bool | UnsetType = UNSET
    stop: str | list[str] | UnsetType = UNSET
    random_seed: int | UnsetType = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET
    response_format: ResponseFormat | UnsetType = UNSET
    tools: list[Tool] | UnsetType = UNSET
    tool_choice: str | ToolChoice | UnsetType = UNSET
    presence_penalty: float | UnsetType = UNSET
    frequency_penalty: float | UnsetType = UNSET
    n: int | UnsetType = UNSET
    prediction: dict[str, Any] | UnsetType = UNSET
    parallel_tool_calls: bool | UnsetType = UNSET
    reasoning_effort: str | UnsetType = UNSET
    prompt_mode: str | UnsetType = UNSET
    prompt_cache_key: str | UnsetType = UNSET
    safe_prompt: bool | UnsetType = UNSET


class EmbeddingRequest(MWire):
    model: str
    input: str | list[str]
    output_dimension: int | UnsetType = UNSET
    encoding_format: str | UnsetType = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET


# ---------------------------------------------------------------- response and stream chunk


class PromptTokensDetails(MWire):
    cached_tokens: int = 0


class Usage(MWire):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None | UnsetType = UNSET


class ResponseMessage(MWire):
    role: str | None = None
    content: str | list[OutChunk] | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(MWire):
    index: int = 0
    message: ResponseMessage = msgspec.field(default_factory=ResponseMessage)
    finish_reason: str | None = None


class StreamChoice(MWire):
    index: int = 0
    delta: ResponseMessage = msgspec.field(default_factory=ResponseMessage)
    finish_reason: str | None = None


class ErrorFields(MWire):
    """Mistral's error body: `{"object": "error", "message", "type", "param", "code"}`. `message` may be
    an object (FastAPI validation detail), and a bare gateway error may carry only `message` or `detail`."""

    object: str | None = None
    message: Any = None
    type: str | None = None
    param: str | None = None
    code: str | int | None = None
    detail: Any = None


class ChatCompletionResponse(ErrorFields):
    id: str = ""
    created: int = 0
    model: str = ""
    choices: list[Choice] = []
    usage: Usage | None = None


class CompletionChunk(ErrorFields):
    """One SSE event of a stream (or an error event, object == "error")."""

    id: str = ""
    created: int = 0
    model: str = ""
    choices: list[StreamChoice] = []
    usage: Usage | None = None


encode = msgspec.json.Encoder().encode
decode_response = msgspec.json.Decoder(ChatCompletionResponse).decode
decode_chunk = msgspec.json.Decoder(CompletionChunk).decode
decode_error = msgspec.json.Decoder(ErrorFields).decode
