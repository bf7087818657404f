"""providers/_http.py and providers/errors.py: the SSE reader, Retry-After, and upstream status -> typed error."""

import email.utils
import json
from collections.abc import AsyncIterator

import httpx
import pytest

import providers.secrets  # noqa: F401 - registers MissingSecret in the GatewayError tree
from providers._http import aiter_sse, error_from_detail, error_from_response, error_from_transport, parse_retry_after
from providers.errors import (
    ContextLengthExceeded,
    GatewayError,
    UpstreamAuthError,
    UpstreamConnectionError,
    UpstreamRateLimited,
    UpstreamRedirect,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    scrub,
)
from providers.schema.codec import encode
from providers.schema.errors import ErrorDetail

# ---------------------------------------------------------------- aiter_sse


async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read_all(*parts: bytes) -> list[bytes]:
    return [data async for data in aiter_sse(pieces(*parts))]


STREAM = (
    b": keep-alive comment\r\n\r\n"
    b'data: {"a":1}\r\n\r\n'
    b"event: ping\r\nid: 7\r\n\r\n"  # no data: skipped
    b"id: 8\r\ndata: first line\r\ndata:second line\r\ndata:  two spaces\r\n\r\n"
    b": another comment\r\n"
    b'data: {"b":2}\r\n\r\n'
    b"data: [DONE]"  # the last event has no blank line after it
)
STREAM_EVENTS = [b'{"a":1}', b"first line\nsecond line\n two spaces", b'{"b":2}', b"[DONE]"]


async def test_sse_whole_stream_in_one_piece() -> None:
    assert await read_all(STREAM) == STREAM_EVENTS


async def test_sse_split_at_every_position() -> None:
    for cut in range(1, len(STREAM)):
        got = await read_all(STREAM[:cut], STREAM[cut:])
        assert got == STREAM_EVENTS, f"split at {cut}: {STREAM[:cut][-12:]!r} | {STREAM[cut:][:12]!r}"


async def test_sse_one_byte_at_a_time() -> None:
    assert await read_all(*(STREAM[i : i + 1] for i in range(len(STREAM)))) == STREAM_EVENTS


async def test_sse_split_at_every_pair_of_positions_lf_stream() -> None:
    body = b'data: {"x":"a"}\n\n: c\n\ndata: p\ndata: q\n\ndata: {"x":"b"}\n'
    want = [b'{"x":"a"}', b"p\nq", b'{"x":"b"}']
    for i in range(1, len(body)):
        for j in range(i, len(body)):
            assert await read_all(body[:i], body[i:j], body[j:]) == want, (i, j)


@pytest.mark.parametrize(
    ("body", "want"),
    [
        (b"data: last", [b"last"]),
        (b"data: last\n", [b"last"]),
        (b"data: last\r\n", [b"last"]),
        (b"data: a\n\ndata: b", [b"a", b"b"]),
        (b"", []),
        (b"\n\n\n", []),
        (b": only a comment\n\n", []),
        (b"data:\n\n", [b""]),
        (b"data: {\"k\": \"v: w\"}\n\n", [b'{"k": "v: w"}']),
    ],
)
async def test_sse_edge_cases(body: bytes, want: list[bytes]) -> None:
    assert await read_all(body) == want


async def test_sse_cut_json_is_yielded_for_the_decoder_to_reject() -> None:
    # A stream cut mid-event must not be silently dropped: the adapter's JSON decoder turns it into an error.
    assert await read_all(b'data: {"a":1}\n\ndata: {"b":') == [b'{"a":1}', b'{"b":']


# ---------------------------------------------------------------- parse_retry_after

NOW = 1_750_000_000.0


@pytest.mark.parametrize(
    ("headers", "want"),
    [
        ({"retry-after": "5"}, 5.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "5"}, 0.25),
        ({"retry-after-ms": "soon", "retry-after": "2"}, 2.0),
        ({"retry-after": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"retry-after": email.utils.formatdate(NOW - 30, usegmt=True)}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "Wed, 99 Foo 2025 99:99:99 GMT"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], want: float | None) -> None:
    assert parse_retry_after(httpx.Headers(headers), now=NOW) == want


# ---------------------------------------------------------------- status -> typed error

OPENAI_KEY = "sk-proj-Abc123Def456Ghi789Jkl012Mno345"


def err(status: int, body: object = b"", headers: dict[str, str] | None = None) -> GatewayError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return error_from_response(status, httpx.Headers(headers or {}), raw, provider="openai")


def openai_error(message: str, type_: str = "invalid_request_error", code: object = None, param: object = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def test_429_is_rate_limited_and_keeps_retry_after() -> None:
    e = err(429, openai_error("Rate limit reached for gpt-4o", "requests", "rate_limit_exceeded"), {"retry-after": "3"})
    assert type(e) is UpstreamRateLimited
    assert e.retry_after_s == 3.0
    assert (e.status, e.retryable, e.fallback) == (429, True, True)
    assert e.headers() == {"retry-after": "3"}


def test_429_insufficient_quota_is_not_worth_waiting_for() -> None:
    e = err(429, openai_error("You exceeded your current quota", "insufficient_quota", "insufficient_quota"))
    assert type(e) is UpstreamUnavailable
    assert e.fallback


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_never_echo_the_upstream_message_or_key(status: int) -> None:
    body = openai_error(f"Incorrect API key provided: {OPENAI_KEY}.", code="invalid_api_key")
    e = err(status, body)
    assert type(e) is UpstreamAuthError
    assert e.status == 502, "the client's key is fine; its SDK must not see 401"
    assert not e.retryable and e.fallback
    for text in (e.message, str(e), encode(e.to_body()).decode()):
        assert OPENAI_KEY not in text
        assert "Abc123" not in text


def test_400_context_length_exceeded() -> None:
    message = "This model's maximum context length is 128000 tokens."
    e = err(400, openai_error(message, code="context_length_exceeded", param="messages"))
    assert type(e) is ContextLengthExceeded
    assert (e.status, e.code, e.param, e.fallback) == (400, "context_length_exceeded", "messages", True)


def test_400_context_length_from_vllm() -> None:
    body = openai_error(
        "'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's maximum context length is "
        "4096 tokens and your request has 2778 input tokens (8000 > 4096 - 2778). None",
        type_="BadRequestError",
        code=400,
    )
    e = err(400, body)
    assert isinstance(e, ContextLengthExceeded)


def test_other_400_is_the_clients_fault_with_scrubbed_message() -> None:
    e = err(400, openai_error(f"Invalid value for 'temperature' (key {OPENAI_KEY})", param="temperature"))
    assert type(e) is UpstreamRejected
    assert (e.status, e.param, e.retryable, e.fallback) == (400, "temperature", False, False)
    assert "Invalid value for 'temperature'" in e.message
    assert OPENAI_KEY not in e.message and "[redacted]" in e.message


def test_404_model_not_found_upstream_is_not_the_clients_fault() -> None:
    e = err(404, openai_error("The model `gpt-9` does not exist", code="model_not_found"))
    assert e.fallback
    assert e.status != 400


@pytest.mark.parametrize("status", [500, 502, 503, 529])
def test_5xx_is_unavailable_and_retryable(status: int) -> None:
    e = err(status, openai_error("The server had an error", "server_error"), {"retry-after": "2"})
    assert type(e) is UpstreamUnavailable
    assert (e.status, e.retryable, e.fallback, e.retry_after_s) == (503, True, True, 2.0)


def test_html_502_from_a_proxy_is_unavailable_without_the_html() -> None:
    e = err(502, b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>")
    assert type(e) is UpstreamUnavailable
    assert "<html" not in e.message and "nginx" not in e.message
    assert "502" in e.message


def test_anthropic_shaped_529_overloaded() -> None:
    e = err(529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert type(e) is UpstreamUnavailable
    assert "Overloaded" in e.message


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_never_followed(status: int) -> None:
    e = err(status, b"", {"location": "https://attacker.example/v1"})
    assert type(e) is UpstreamRedirect
    assert "attacker" not in e.message
    assert e.status == 502


@pytest.mark.parametrize("status", [408, 504])
def test_408_and_504_are_timeouts(status: int) -> None:
    e = err(status, b"upstream timed out")
    assert type(e) is UpstreamTimeout
    assert e.retryable


@pytest.mark.parametrize(
    ("detail", "kind"),
    [
        (ErrorDetail(message="bad param", type="invalid_request_error", param="n"), UpstreamRejected),
        (ErrorDetail(message="boom", type="server_error"), UpstreamUnavailable),
        (ErrorDetail(message="slow down", type="tokens", code="rate_limit_exceeded"), UpstreamRateLimited),
        (
            ErrorDetail(message="too long", type="invalid_request_error", code="context_length_exceeded"),
            ContextLengthExceeded,
        ),
        (ErrorDetail(message="Overloaded", type="overloaded_error"), UpstreamUnavailable),
    ],
)
def test_error_inside_a_200_body_or_stream(detail: ErrorDetail, kind: type[GatewayError]) -> None:
    assert type(error_from_detail(detail, status=0, provider="openai")) is kind


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectTimeout("timed out: https://api.openai.com/v1?key=AIzaSecret"), UpstreamConnectionError),
        (httpx.ReadTimeout("read timed out"), UpstreamTimeout),
        (httpx.ConnectError("connection refused"), UpstreamConnectionError),
        (httpx.RemoteProtocolError("server disconnected"), UpstreamConnectionError),
        (httpx.ReadError("reset by peer"), UpstreamConnectionError),
    ],
)
def test_transport_errors_map_and_never_carry_the_url(exc: httpx.HTTPError, kind: type[GatewayError]) -> None:
    e = error_from_transport(exc, provider="openai")
    assert type(e) is kind
    assert e.retryable
    assert "http" not in e.message and "AIza" not in e.message


# ---------------------------------------------------------------- scrub


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Incorrect API key provided: sk-abcdef1234567890XYZ.", "sk-abcdef1234567890XYZ"),
        (f"key {OPENAI_KEY} rejected", OPENAI_KEY),
        ("anthropic sk-ant-api03-AbCdEfGh12345678 failed", "sk-ant-api03-AbCdEfGh12345678"),
        ("header was Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-_abc", "eyJhbGciOiJIUzI1NiJ9"),
        ("header was bearer abcdefgh12345678", "abcdefgh12345678"),
        ("url https://x.googleapis.com/v1?key=AIzaSyA1234567890abcdefghijklmnopqrstu", "AIzaSyA1234567890abcdefghij"),
        ("mistral key 0123456789abcdefABCDEF0123456789xy", "0123456789abcdefABCDEF0123456789xy"),
    ],
)
def test_scrub_removes_keys(text: str, secret: str) -> None:
    out = scrub(text)
    assert secret not in out
    assert "[redacted]" in out


@pytest.mark.parametrize(
    "text",
    [
        "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
        "This model's maximum context length is 4096 tokens.",
        "Invalid 'messages[1].tool_calls[0].id': string too long.",
    ],
)
def test_scrub_leaves_ordinary_error_text_alone(text: str) -> None:
    assert scrub(text) == text


# ---------------------------------------------------------------- the error family


def all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *all_subclasses(sub)]
    return out


ERROR_CLASSES = [GatewayError, *all_subclasses(GatewayError)]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_renders_an_openai_error_body(cls: type[GatewayError]) -> None:
    e = cls("something went wrong", param="messages")
    body = json.loads(encode(e.to_body()))
    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] == "something went wrong"
    assert isinstance(body["error"]["type"], str) and body["error"]["type"]
    assert body["error"]["param"] == "messages"
    assert body["error"]["code"] is None or isinstance(body["error"]["code"], str)
    assert 400 <= e.status <= 599


def test_error_family_is_complete() -> None:
    names = {c.__name__ for c in ERROR_CLASSES}
    assert {"InvalidJSON", "InvalidField", "UpstreamSilent", "UpstreamAuthError", "MissingSecret"} <= names


@pytest.mark.parametrize(
    ("cls", "retry_after", "want"),
    [
        (UpstreamRateLimited, 3.0, {"retry-after": "3"}),
        (UpstreamRateLimited, 0.2, {"retry-after": "1"}),
        (UpstreamUnavailable, 7.6, {"retry-after": "8"}),
        (UpstreamRateLimited, None, {}),
        (UpstreamTimeout, 3.0, {}),
    ],
)
def test_retry_after_header_on_429_and_503_only(cls: type[GatewayError], retry_after: float | None, want: dict) -> None:
    assert cls("x", retry_after_s=retry_after).headers() == want
