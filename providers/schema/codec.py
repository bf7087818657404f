"""Encoders and decoders built once, at import time (msgspec's fast path)."""

import msgspec

from providers.schema.chat import ChatCompletion, ChatCompletionChunk, ChatRequest
from providers.schema.completions import Completion, CompletionRequest, EmbeddingRequest, EmbeddingResponse
from providers.schema.errors import ErrorBody

encoder = msgspec.json.Encoder()
encode = encoder.encode

decode_json = msgspec.json.Decoder().decode
"""Any JSON to builtins (the pass-through view of a request body)."""

decode_chat_request = msgspec.json.Decoder(ChatRequest).decode
decode_completion_request = msgspec.json.Decoder(CompletionRequest).decode
decode_embedding_request = msgspec.json.Decoder(EmbeddingRequest).decode

decode_chat_completion = msgspec.json.Decoder(ChatCompletion).decode
decode_chat_chunk = msgspec.json.Decoder(ChatCompletionChunk).decode
decode_completion = msgspec.json.Decoder(Completion).decode
decode_embedding_response = msgspec.json.Decoder(EmbeddingResponse).decode
decode_error_body = msgspec.json.Decoder(ErrorBody).decode
