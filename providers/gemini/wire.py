"""Gemini API wire schema (v1beta, camelCase on the wire): request, response, stream event, error, embeddings.

Sources: ai.google.dev/api/generate-content and /api/embeddings (read 2026-06). Decoding is lenient
(unknown fields are ignored: Google adds fields often); a body that is not the expected JSON shape
is a `msgspec.DecodeError`, which the adapter turns into UpstreamProtocolError.
"""

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType


class GWire(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel"):
    """Base of every Gemini struct: snake_case in Python, camelCase on the wire, UNSET means absent."""


# ---------------------------------------------------------------- content


class Blob(GWire):
    mime_type: str
    data: str
    """Base64 bytes."""


class FileData(GWire):
    file_uri: str
    mime_type: str | UnsetType = UNSET


class FunctionCall(GWire):
    name: str
    args: dict[str, Any] | UnsetType = UNSET
    id: str | UnsetType = UNSET


class FunctionResponse(GWire):
    name: str
    response: dict[str, Any]


class Part(GWire):
    """One part of a Content. Exactly one data field is set; `thought` marks a thought summary."""

    text: str | UnsetType = UNSET
    thought: bool | UnsetType = UNSET
    thought_signature: str | UnsetType = UNSET
    inline_data: Blob | UnsetType = UNSET
    file_data: FileData | UnsetType = UNSET
    function_call: FunctionCall | UnsetType = UNSET
    function_response: FunctionResponse | UnsetType = UNSET


class Content(GWire):
    parts: list[Part] = []
    role: str | UnsetType = UNSET
    """`user` or `model` (function responses travel in a `user` turn)."""


# ---------------------------------------------------------------- request


class FunctionDeclaration(GWire):
    name: str
    description: str | UnsetType = UNSET
    parameters_json_schema: dict[str, Any] | UnsetType = UNSET
    """JSON Schema as-is (the alternative to the OpenAPI-subset `parameters`)."""


class Tool(GWire):
    function_declarations: list[FunctionDeclaration]


class FunctionCallingConfig(GWire):
    mode: str
    """AUTO, ANY or NONE."""
    allowed_function_names: list[str] | UnsetType = UNSET


class ToolConfig(GWire):
    function_calling_config: FunctionCallingConfig


class ThinkingConfig(GWire):
    include_thoughts: bool | UnsetType = UNSET
    thinking_budget: int | UnsetType = UNSET
    thinking_level: str | UnsetType = UNSET


class GenerationConfig(GWire):
    stop_sequences: list[str] | UnsetType = UNSET
    candidate_count: int | UnsetType = UNSET
    max_output_tokens: int | UnsetType = UNSET
    temperature: float | UnsetType = UNSET
    top_p: float | UnsetType = UNSET
    seed: int | UnsetType = UNSET
    presence_penalty: float | UnsetType = UNSET
    frequency_penalty: float | UnsetType = UNSET
    response_mime_type: str | UnsetType = UNSET
    response_json_schema: dict[str, Any] | UnsetType = UNSET
    response_logprobs: bool | UnsetType = UNSET
    logprobs: int | UnsetType = UNSET
    thinking_config: ThinkingConfig | UnsetType = UNSET


class GenerateContentRequest(GWire):
    contents: list[Content]
    system_instruction: Content | UnsetType = UNSET
    tools: list[Tool] | UnsetType = UNSET
    tool_config: ToolConfig | UnsetType = UNSET
    generation_config: GenerationConfig | UnsetType = UNSET


# ---------------------------------------------------------------- response and stream event


class LogprobCandidate(GWire):
    token: str = ""
    log_probability: float = 0.0


class TopCandidates(GWire):
    candidates: list[LogprobCandidate] = []


class LogprobsResult(GWire):
    top_candidates: list[TopCandidates] = []
    chosen_candidates: list[LogprobCandidate] = []


class Candidate(GWire):
    content: Content | UnsetType = UNSET
    finish_reason: str | UnsetType = UNSET
    index: int = 0
    logprobs_result: LogprobsResult | UnsetType = UNSET
    finish_message: str | UnsetType = UNSET


class PromptFeedback(GWire):
    block_reason: str | UnsetType = UNSET
    block_reason_message: str | UnsetType = UNSET


class UsageMetadata(GWire):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    thoughts_token_count: int = 0
    cached_content_token_count: int = 0
    tool_use_prompt_token_count: int = 0
    total_token_count: int = 0


class Status(GWire):
    """google.rpc.Status, the body of every error: `{"error": {"code", "message", "status", "details"}}`."""

    code: int = 0
    message: str = ""
    status: str = ""
    details: list[dict[str, Any]] = []


class GenerateContentResponse(GWire):
    """The whole answer of generateContent, and each SSE event of streamGenerateContent?alt=sse."""

    candidates: list[Candidate] = []
    prompt_feedback: PromptFeedback | UnsetType = UNSET
    usage_metadata: UsageMetadata | UnsetType = UNSET
    model_version: str | UnsetType = UNSET
    response_id: str | UnsetType = UNSET
    error: Status | UnsetType = UNSET
    """Set on an error body, or an error event in the middle of a stream."""


class ErrorEnvelope(GWire):
    error: Status


# ---------------------------------------------------------------- embeddings


class EmbedContentRequest(GWire):
    model: str
    """`models/{model}`: must match the model in the URL."""
    content: Content
    output_dimensionality: int | UnsetType = UNSET


class BatchEmbedContentsRequest(GWire):
    requests: list[EmbedContentRequest]


class ContentEmbedding(GWire):
    values: list[float] = []


class BatchEmbedContentsResponse(GWire):
    embeddings: list[ContentEmbedding] = []
    usage_metadata: UsageMetadata | UnsetType = UNSET
    error: Status | UnsetType = UNSET


encode = msgspec.json.Encoder().encode
decode_response = msgspec.json.Decoder(GenerateContentResponse).decode
decode_embeddings = msgspec.json.Decoder(BatchEmbedContentsResponse).decode
decode_error = msgspec.json.Decoder(ErrorEnvelope | list[ErrorEnvelope]).decode
"""Error bodies; some Google front ends wrap the envelope in a one-element list."""
