"""OpenAI wire shapes survive escalade's decode -> encode (providers/schema/codec.py).

Every fixture in tests/golden/openai is decoded with the codec's typed decoder and encoded again.
What comes back must equal the fixture for every field OpenAI defines: same keys, same values, same
JSON types, explicit nulls still null, absent optional fields still absent. vLLM's own extras are
the only fields allowed to disappear, and the tests name exactly which ones.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.ingress import decode_inbound
from providers.errors import InvalidField
from providers.schema.chat import NamedToolChoice, ResponseFormatJSONSchema, StreamOptions
from providers.schema.codec import (
    decode_chat_chunk,
    decode_chat_completion,
    decode_chat_request,
    decode_completion,
    decode_embedding_response,
    decode_error_body,
    encode,
)

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "openai"


def load(name: str) -> Any:
    return json.loads((GOLDEN / name).read_bytes())


def round_trip(decode: Callable[[bytes], Any], raw: bytes) -> Any:
    return json.loads(encode(decode(raw)))


def json_diff(want: Any, got: Any, path: str = "$") -> list[str]:
    """Differences between two JSON documents, type-strict (1 != 1.0 != true, null != absent)."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for key in sorted(want.keys() | got.keys()):
            if key not in got:
                out.append(f"{path}.{key}: dropped")
            elif key not in want:
                out.append(f"{path}.{key}: added {got[key]!r}")
            else:
                out += json_diff(want[key], got[key], f"{path}.{key}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{path}: {len(want)} items -> {len(got)} items"]
        return [d for i, (w, g) in enumerate(zip(want, got, strict=True)) for d in json_diff(w, g, f"{path}[{i}]")]
    if type(want) is not type(got) or want != got:
        return [f"{path}: {want!r} -> {got!r}"]
    return []


def stream_chunks(name: str) -> list[bytes]:
    """The JSON payloads of a fixture stream (one `data:` line per event), without the final [DONE]."""
    events = [e.removeprefix(b"data: ") for e in (GOLDEN / name).read_bytes().split(b"\n\n") if e]
    assert events[-1] == b"[DONE]", f"{name} must end with [DONE]"
    return events[:-1]


# ---------------------------------------------------------------- whole responses

RESPONSES = [
    ("chat_completion.json", decode_chat_completion),
    ("chat_completion_tool_calls.json", decode_chat_completion),
    ("chat_completion_logprobs.json", decode_chat_completion),
    ("completion.json", decode_completion),
    ("completion_logprobs.json", decode_completion),
    ("embeddings_float.json", decode_embedding_response),
    ("embeddings_base64.json", decode_embedding_response),
    ("error_context_length.json", decode_error_body),
    ("error_rate_limit.json", decode_error_body),
]


@pytest.mark.parametrize(("name", "decode"), RESPONSES, ids=[n for n, _ in RESPONSES])
def test_openai_response_round_trips_field_for_field(name: str, decode: Callable[[bytes], Any]) -> None:
    raw = (GOLDEN / name).read_bytes()
    assert json_diff(json.loads(raw), round_trip(decode, raw)) == []


def test_chat_completion_keeps_the_nulls_openai_always_sends() -> None:
    got = round_trip(decode_chat_completion, (GOLDEN / "chat_completion.json").read_bytes())
    choice = got["choices"][0]
    assert choice["logprobs"] is None
    assert choice["message"]["refusal"] is None
    assert choice["message"]["annotations"] == []
    assert set(choice["message"]) == {"role", "content", "refusal", "annotations"}, "no invented optional fields"
    assert got["usage"]["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0}


def test_tool_call_response_keeps_null_content_and_typed_calls() -> None:
    raw = (GOLDEN / "chat_completion_tool_calls.json").read_bytes()
    typed = decode_chat_completion(raw)
    message = typed.choices[0].message
    assert message.content is None
    assert [(c.id, c.function.name) for c in message.tool_calls] == [
        ("call_abc123", "get_current_weather"),
        ("call_def456", "get_current_weather"),
    ]
    assert json.loads(message.tool_calls[1].function.arguments) == {"location": "Paris, France", "unit": "celsius"}
    assert round_trip(decode_chat_completion, raw)["choices"][0]["message"]["content"] is None


def test_logprobs_response_keeps_token_bytes_including_null() -> None:
    raw = (GOLDEN / "chat_completion_logprobs.json").read_bytes()
    typed = decode_chat_completion(raw)
    tokens = typed.choices[0].logprobs.content
    assert [t.token for t in tokens] == ["Hello", "!", " How"]
    assert tokens[2].top_logprobs[1].bytes is None
    got = round_trip(decode_chat_completion, raw)
    assert got["choices"][0]["logprobs"]["content"][2]["top_logprobs"][1] == {
        "token": "<|end|>",
        "logprob": -10.953937,
        "bytes": None,
    }
    assert got["system_fingerprint"] is None


def test_base64_embedding_stays_a_string() -> None:
    raw = (GOLDEN / "embeddings_base64.json").read_bytes()
    typed = decode_embedding_response(raw)
    assert isinstance(typed.data[0].embedding, str)
    want = load("embeddings_base64.json")["data"][0]["embedding"]
    assert round_trip(decode_embedding_response, raw)["data"][0]["embedding"] == want


def test_error_body_keeps_all_four_keys_even_when_null() -> None:
    got = round_trip(decode_error_body, (GOLDEN / "error_rate_limit.json").read_bytes())
    assert set(got["error"]) == {"message", "type", "param", "code"}
    assert got["error"]["param"] is None


# ---------------------------------------------------------------- streams


def test_text_stream_chunks_round_trip() -> None:
    chunks = stream_chunks("chat_stream.sse")
    assert len(chunks) == 7
    for raw in chunks:
        assert json_diff(json.loads(raw), round_trip(decode_chat_chunk, raw)) == [], raw


def test_text_stream_keeps_openai_obfuscation_field() -> None:
    raw = stream_chunks("chat_stream.sse")[1]
    assert round_trip(decode_chat_chunk, raw).get("obfuscation") == "Gpkah"


def test_text_stream_shape_role_content_finish_usage() -> None:
    chunks = [decode_chat_chunk(c) for c in stream_chunks("chat_stream.sse")]
    first, *middle, finish, usage = chunks
    assert first.choices[0].delta.role == "assistant"
    assert not first.carries_answer(), "the role chunk (content '') is not the commit point"
    assert all(c.carries_answer() for c in middle)
    assert "".join(c.choices[0].delta.content for c in middle) == "Hi, how are you?"
    assert finish.choices[0].finish_reason == "stop"
    assert not finish.carries_answer()
    assert usage.choices == []
    assert usage.usage is not None and usage.usage.total_tokens == 15
    # every chunk before the last one says "usage": null explicitly, and keeps saying it
    assert all(json.loads(encode(c))["usage"] is None for c in chunks[:-1])
    assert json.loads(encode(usage))["choices"] == []


TOOL_STREAM = stream_chunks("chat_stream_tool_calls.sse")


def _is_argument_fragment(raw: bytes) -> bool:
    choices = json.loads(raw)["choices"]
    calls = choices[0]["delta"].get("tool_calls", []) if choices else []
    return any("name" not in call["function"] for call in calls)


@pytest.mark.parametrize(
    "raw",
    TOOL_STREAM,
    ids=[f"chunk{i}{'-fragment' if _is_argument_fragment(c) else ''}" for i, c in enumerate(TOOL_STREAM)],
)
def test_tool_call_stream_chunk_round_trips(raw: bytes) -> None:
    assert json_diff(json.loads(raw), round_trip(decode_chat_chunk, raw)) == []


def test_tool_call_stream_reassembles_into_two_calls() -> None:
    calls: dict[int, dict[str, str]] = {}
    for raw in TOOL_STREAM:
        chunk = decode_chat_chunk(raw)
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                if isinstance(delta.id, str):
                    call["id"] = delta.id
                if not isinstance(delta.function, msgspec.UnsetType):
                    if isinstance(delta.function.name, str):
                        call["name"] += delta.function.name
                    if isinstance(delta.function.arguments, str):
                        call["arguments"] += delta.function.arguments
    assert calls == {
        0: {"id": "call_abc123", "name": "get_current_weather", "arguments": '{"location":"Boston, MA"}'},
        1: {"id": "call_def456", "name": "get_current_weather", "arguments": '{"location":"Paris"}'},
    }
    first = decode_chat_chunk(TOOL_STREAM[0])
    assert first.carries_answer(), "a tool-call delta is the commit point"
    assert decode_chat_chunk(TOOL_STREAM[-2]).choices[0].finish_reason == "tool_calls"


# ---------------------------------------------------------------- vLLM 0.32

VLLM_TOP_LEVEL_EXTRAS = {
    "prompt_logprobs",
    "prompt_token_ids",
    "prompt_text",
    "kv_transfer_params",
    "ec_transfer_params",
    "metrics",
}
VLLM_CHOICE_EXTRAS = {"stop_reason", "token_ids", "routed_experts"}


def test_vllm_response_drops_exactly_its_extras_and_keeps_reasoning() -> None:
    raw = (GOLDEN / "vllm_chat_completion.json").read_bytes()
    got = round_trip(decode_chat_completion, raw)
    want = json.loads(raw)
    for key in VLLM_TOP_LEVEL_EXTRAS:
        del want[key]
    for key in VLLM_CHOICE_EXTRAS:
        del want["choices"][0][key]
    assert json_diff(want, got) == []
    message = got["choices"][0]["message"]
    assert message["reasoning"] == "let me think"
    assert message["annotations"] is None and message["audio"] is None and message["function_call"] is None
    assert "refusal" not in got["choices"][0]["logprobs"], "vLLM omits logprobs.refusal; it must stay absent"
    assert got["usage"]["prompt_tokens_details"] is None
    assert got["choices"][0]["logprobs"]["content"][1]["top_logprobs"][1] == {
        "token": "",
        "logprob": -6.251105785369873,
        "bytes": [],
    }


def test_vllm_stream_keeps_reasoning_deltas_and_drops_choice_extras() -> None:
    chunks = stream_chunks("vllm_chat_stream.sse")
    for raw in chunks:
        want = json.loads(raw)
        for choice in want["choices"]:
            for key in VLLM_CHOICE_EXTRAS:
                choice.pop(key, None)
        assert json_diff(want, round_trip(decode_chat_chunk, raw)) == [], raw
    typed = [decode_chat_chunk(c) for c in chunks]
    assert "".join(c.choices[0].delta.reasoning for c in typed[1:3]) == "let me think"
    assert [c.carries_answer() for c in typed] == [False, False, False, True, False, False], (
        "reasoning alone is not the commit point; the first content is"
    )
    assert "usage" not in json.loads(encode(typed[0])), "vLLM sends no usage key on content chunks; none is invented"


# ---------------------------------------------------------------- requests

REQUEST = (GOLDEN / "chat_request.json").read_bytes()


def test_request_raw_view_passes_every_field_through() -> None:
    inbound = decode_inbound(REQUEST, decode_chat_request)
    assert json_diff(json.loads(REQUEST), inbound.raw) == [], "fields escalade does not type (store, ...) must survive"


def test_request_typed_view_reads_every_parameter() -> None:
    req = decode_chat_request(REQUEST)
    assert [type(m).__name__ for m in req.messages] == [
        "DeveloperMessage",
        "SystemMessage",
        "UserMessage",
        "AssistantMessage",
        "ToolMessage",
    ]
    assert req.tools[0].function.name == "get_current_weather"
    assert req.tools[0].function.strict is True
    assert isinstance(req.tool_choice, NamedToolChoice) and req.tool_choice.function.name == "get_current_weather"
    assert isinstance(req.response_format, ResponseFormatJSONSchema)
    assert req.response_format.json_schema.name == "weather_report"
    assert req.response_format.json_schema.schema["required"] == ["summary", "temperature_c"]
    assert (req.logprobs, req.top_logprobs, req.n, req.seed) == (True, 3, 2, 42)
    assert req.stop == ["\n\n", "END"]
    assert req.reasoning_effort == "low"
    assert isinstance(req.stream_options, StreamOptions)
    assert req.is_stream and req.wants_usage_chunk
    assert req.output_cap == 512
    assert req.messages[3].tool_calls[0].function.arguments == '{"location": "Boston, MA"}'


def _typed_subset(doc: dict[str, Any]) -> dict[str, Any]:
    typed_fields = {f.encode_name for f in msgspec.structs.fields(decode_chat_request(REQUEST).__class__)}
    return {k: v for k, v in doc.items() if k in typed_fields}


def test_request_typed_view_re_encodes_openai_fields() -> None:
    assert json_diff(_typed_subset(json.loads(REQUEST)), json.loads(encode(decode_chat_request(REQUEST)))) == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": 5, "messages": []}, "model"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
        ({"model": "m", "messages": [], "n": "2"}, "n"),
        ({"model": "m", "messages": [], "tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"model": "m", "messages": [], "tool_choice": "sometimes"}, "tool_choice"),
        ({"model": "m", "messages": [], "response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"model": "m", "messages": [], "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ],
)
def test_request_validation_error_names_the_parameter_path(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidField) as caught:
        decode_inbound(json.dumps(body).encode(), decode_chat_request)
    assert caught.value.param == param
    assert caught.value.status == 422
    assert param in caught.value.message
    assert "$" not in caught.value.message, "msgspec's `$.` path syntax must not leak to clients"
