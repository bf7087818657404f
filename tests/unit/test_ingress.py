"""gateway/ingress.py: body size limit, one decode into typed + raw views, deny-list, policy caps."""

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.ingress import DENY_FIELDS, check_caps, decode_inbound, read_body
from policies.schema import ServerConf
from providers.errors import InvalidField, InvalidJSON, InvalidRequest, PayloadTooLarge
from providers.schema.codec import decode_chat_request, decode_completion_request, decode_embedding_request

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
SERVER = ServerConf(max_n=4, max_tokens=4096, max_request_bytes=1024)


def body(**fields: Any) -> bytes:
    return json.dumps({**CHAT, **fields}).encode()


# ---------------------------------------------------------------- decode_inbound


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"", "empty"),
        (b"not json", "not valid JSON"),
        (b'{"model": "auto", ', "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"a string"', "JSON object"),
        (b"null", "JSON object"),
        (b"42", "JSON object"),
    ],
)
def test_not_a_json_object_is_400_invalid_json(raw: bytes, words: str) -> None:
    with pytest.raises(InvalidJSON) as caught:
        decode_inbound(raw, decode_chat_request)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_json"
    assert words in caught.value.message


@pytest.mark.parametrize(
    ("doc", "param", "message"),
    [
        ({"model": "auto"}, "messages", "Missing required parameter: 'messages'."),
        ({"messages": []}, "model", "Missing required parameter: 'model'."),
        ({**CHAT, "temperature": "hot"}, "temperature", "Invalid parameter 'temperature'"),
        ({**CHAT, "stream": "yes"}, "stream", "Invalid parameter 'stream'"),
        ({**CHAT, "messages": [{"role": "user", "content": {"text": "hi"}}]}, "messages[0].content", "content'"),
        ({**CHAT, "tools": [{"type": "function"}]}, "tools[0].function", "Missing required parameter"),
        ({**CHAT, "stop": 5}, "stop", "Invalid parameter 'stop'"),
    ],
)
def test_wrong_shape_is_422_naming_the_parameter(doc: dict[str, Any], param: str, message: str) -> None:
    with pytest.raises(InvalidField) as caught:
        decode_inbound(json.dumps(doc).encode(), decode_chat_request)
    error = caught.value
    assert (error.status, error.param) == (422, param)
    assert message in error.message
    assert error.to_body().error.param == param


def test_deny_listed_fields_are_removed_from_raw_but_typed_still_decodes() -> None:
    smuggled = {
        "api_base": "https://attacker.example/v1",
        "base_url": "https://attacker.example/v1",
        "api_key": "sk-attacker",
        "extra_headers": {"x-evil": "1"},
        "custom_llm_provider": "openai",
        "mock_response": "pwned",
    }
    inbound = decode_inbound(body(**smuggled), decode_chat_request)
    assert not DENY_FIELDS.intersection(inbound.raw)
    assert inbound.raw == CHAT
    assert inbound.typed.model == "auto"
    assert inbound.typed.messages[0].content == "hi"


@pytest.mark.parametrize("field", sorted(DENY_FIELDS))
def test_every_deny_listed_field_is_removed(field: str) -> None:
    inbound = decode_inbound(body(**{field: "https://attacker.example"}), decode_chat_request)
    assert field not in inbound.raw


def test_unknown_fields_are_kept_in_raw_for_pass_through() -> None:
    extras = {
        "store": True,
        "service_tier": "flex",
        "prompt_cache_key": "k1",
        "verbosity": "low",
        "top_k": 20,
        "chat_template_kwargs": {"enable_thinking": False},
    }
    inbound = decode_inbound(body(**extras), decode_chat_request)
    assert inbound.raw == {**CHAT, **extras}


def test_deny_list_does_not_touch_nested_values_with_the_same_name() -> None:
    doc = {**CHAT, "metadata": {"note": "base_url is fine here"}, "response_format": {"type": "json_object"}}
    inbound = decode_inbound(json.dumps(doc).encode(), decode_chat_request)
    assert inbound.raw["metadata"] == {"note": "base_url is fine here"}


def test_completion_and_embedding_requests_decode_through_the_same_path() -> None:
    completion = decode_inbound(b'{"model": "m", "prompt": "Say this", "max_tokens": 7}', decode_completion_request)
    assert completion.typed.output_cap == 7
    embedding = decode_inbound(b'{"model": "e", "input": ["a", "b"], "dimensions": 8}', decode_embedding_request)
    assert embedding.typed.input == ["a", "b"]
    with pytest.raises(InvalidField) as caught:
        decode_inbound(b'{"model": "m"}', decode_completion_request)
    assert caught.value.param == "prompt"


# ---------------------------------------------------------------- check_caps


def typed(**fields: Any) -> Any:
    return decode_chat_request(body(**fields))


@pytest.mark.parametrize("n", [1, 4])
def test_n_within_cap_passes(n: int) -> None:
    check_caps(typed(n=n), SERVER)


@pytest.mark.parametrize("n", [0, -1, 5, 1000])
def test_n_outside_one_to_max_n_is_rejected(n: int) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_caps(typed(n=n), SERVER)
    assert (caught.value.status, caught.value.param, caught.value.code) == (400, "n", "invalid_value")


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_output_tokens_over_cap_are_rejected_whichever_field_is_used(field: str) -> None:
    check_caps(typed(**{field: 4096}), SERVER)
    with pytest.raises(InvalidRequest) as caught:
        check_caps(typed(**{field: 4097}), SERVER)
    assert caught.value.param == field
    assert "4096" in caught.value.message


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_output_tokens_below_one_are_rejected(field: str) -> None:
    with pytest.raises(InvalidRequest):
        check_caps(typed(**{field: 0}), SERVER)


def test_no_cap_configured_allows_any_output_tokens() -> None:
    check_caps(typed(max_tokens=10_000_000), ServerConf())


def test_both_token_fields_are_capped() -> None:
    with pytest.raises(InvalidRequest):
        check_caps(typed(max_completion_tokens=10, max_tokens=10_000_000), SERVER)


def test_completions_best_of_is_capped_like_n() -> None:
    req = decode_completion_request(b'{"model": "m", "prompt": "p", "best_of": 100}')
    with pytest.raises(InvalidRequest):
        check_caps(req, SERVER)


def test_empty_messages_are_rejected() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_caps(typed(messages=[]), SERVER)
    assert (caught.value.status, caught.value.param) == (400, "messages")


def test_completion_request_has_no_messages_to_check() -> None:
    check_caps(decode_completion_request(b'{"model": "m", "prompt": "p", "n": 2, "max_tokens": 16}'), SERVER)


# ---------------------------------------------------------------- read_body


class Chunks:
    """An async body source that records how much of it was consumed."""

    def __init__(self, *parts: bytes) -> None:
        self.parts = parts
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            self.read += 1
            yield part


async def test_body_within_limit_is_read_whole() -> None:
    source = Chunks(b"ab", b"cd", b"e")
    assert await read_body(source.__aiter__(), "5", limit=5) == b"abcde"


async def test_declared_length_over_limit_is_413_before_reading() -> None:
    source = Chunks(b"x" * 10)
    with pytest.raises(PayloadTooLarge) as caught:
        await read_body(source.__aiter__(), "2048", limit=1024)
    assert caught.value.status == 413
    assert source.read == 0, "not one byte may be read once Content-Length is over the limit"


@pytest.mark.parametrize("declared", [None, "100", "not-a-number", "-1"])
async def test_streamed_body_over_limit_is_413_while_reading(declared: str | None) -> None:
    source = Chunks(b"x" * 600, b"x" * 600, b"x" * 600)
    with pytest.raises(PayloadTooLarge):
        await read_body(source.__aiter__(), declared, limit=1024)
    assert source.read == 2, "reading stops at the chunk that crosses the limit"


async def test_body_exactly_at_limit_is_accepted() -> None:
    assert await read_body(Chunks(b"x" * 1024).__aiter__(), "1024", limit=1024) == b"x" * 1024
