"""Tests of the mock OpenAI upstream itself (official SDK + raw sockets)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import openai
import pytest

from tests.mock_upstream import MockUpstream, run_in_thread

API_KEY = "sk-test-SECRET-0123456789abcdef"
MSG = [{"role": "user", "content": "Hello there, what is the weather like in Paris today?"}]
WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                "required": ["location"],
            },
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]


@pytest.fixture(scope="module")
def mock():
    h = run_in_thread()
    yield h
    h.stop()


@pytest.fixture(autouse=True)
def _fresh(mock):
    mock.reset()


@pytest.fixture(scope="module")
def client(mock):
    c = openai.OpenAI(base_url=mock.base_url, api_key=API_KEY, max_retries=0, timeout=5)
    yield c
    c.close()


@pytest.fixture
def http(mock):
    with httpx.Client(base_url=mock.base_url, timeout=5) as c:
        yield c


def sse_events(text: str) -> list[str]:
    assert text.endswith("\n\n")
    return [e for e in text.split("\n\n") if e]


# ---------------------------------------------------------------------------
# chat completions
# ---------------------------------------------------------------------------


def test_chat_ok_non_stream(client, http, mock):
    r = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, reasoning_effort="low")
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert r.model == "gpt-4o-mini"
    assert r.system_fingerprint
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert c.message.content == "mock answer to: " + MSG[0]["content"][:40]
    assert c.finish_reason == "stop"
    u = r.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.completion_tokens == len(c.message.content.split())
    assert u.prompt_tokens_details.cached_tokens == 0
    assert u.completion_tokens_details.reasoning_tokens == 0

    # Raw wire: the nulls OpenAI always sends are present.
    raw = http.post("/chat/completions", json={"model": "ok", "messages": MSG})
    assert raw.headers["content-type"] == "application/json"
    assert raw.headers["x-request-id"].startswith("req_")
    body = raw.json()
    ch = body["choices"][0]
    assert ch["logprobs"] is None and "logprobs" in ch
    assert ch["message"]["refusal"] is None and "refusal" in ch["message"]
    assert isinstance(body["created"], int)


def test_chat_max_tokens_and_stop(client):
    r = client.chat.completions.create(model="ok?tokens=10", messages=MSG, max_tokens=4)
    assert r.choices[0].message.content == "lorem ipsum dolor sit"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 4
    r = client.chat.completions.create(model="ok?tokens=10", messages=MSG, max_completion_tokens=3, stop=["sum"])
    assert r.choices[0].message.content == "lorem ip"
    assert r.choices[0].finish_reason == "stop"


def test_chat_stream_include_usage(client):
    chunks = list(
        client.chat.completions.create(
            model="ok?tokens=5", messages=MSG, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.model == "ok?tokens=5" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "lorem ipsum dolor sit amet"
    assert len(chunks) == 1 + 5 + 1 + 1
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-2].choices[0].delta.content is None
    assert all(c.choices[0].finish_reason is None for c in chunks[:-2])
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_wire_format(http):
    with http.stream("POST", "/chat/completions", json={"model": "ok?tokens=2", "messages": MSG, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["transfer-encoding"] == "chunked"
        text = r.read().decode()
    events = sse_events(text)
    assert events[-1] == "data: [DONE]"
    datas = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert all(e.startswith("data: {") for e in events[:-1])
    assert len(datas) == 4
    for d in datas:
        assert "usage" not in d  # no include_usage -> no usage field at all
        assert d["choices"][0]["logprobs"] is None
    assert datas[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert datas[1]["choices"][0]["finish_reason"] is None
    assert datas[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}


def test_tools_non_stream(client):
    r = client.chat.completions.create(model="ok", messages=MSG, tools=WEATHER_TOOLS)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    assert c.message.content is None
    (call,) = c.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "x"}

    r = client.chat.completions.create(
        model="ok", messages=MSG, tools=WEATHER_TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}}
    )
    assert r.choices[0].message.tool_calls[0].function.name == "get_time"
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {}

    r = client.chat.completions.create(model="ok", messages=MSG, tools=WEATHER_TOOLS, tool_choice="none")
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason == "stop"


def test_tools_stream(client):
    chunks = list(client.chat.completions.create(model="ok", messages=MSG, tools=WEATHER_TOOLS, stream=True))
    first = chunks[0].choices[0].delta
    assert first.role == "assistant"
    tc0 = first.tool_calls[0]
    assert tc0.index == 0 and tc0.id.startswith("call_") and tc0.type == "function"
    assert tc0.function.name == "get_weather" and tc0.function.arguments == ""
    frags = [c.choices[0].delta.tool_calls[0] for c in chunks[1:-1]]
    assert len(frags) > 1 and all(f.id is None and f.function.name is None for f in frags)
    assert json.loads("".join(f.function.arguments for f in frags)) == {"location": "x"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_n_and_logprobs(client):
    r = client.chat.completions.create(model="ok", messages=MSG, n=2, logprobs=True, top_logprobs=2)
    assert [c.index for c in r.choices] == [0, 1]
    for c in r.choices:
        lp = c.logprobs.content
        assert "".join(t.token for t in lp) == c.message.content
        for t in lp:
            assert t.logprob <= 0 and bytes(t.bytes).decode() == t.token
            assert len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token
    assert r.usage.completion_tokens == 2 * len(r.choices[0].logprobs.content)

    chunks = list(client.chat.completions.create(model="ok?tokens=3", messages=MSG, n=2, stream=True, logprobs=True))
    by_idx: dict[int, str] = {}
    for ch in chunks:
        for c in ch.choices:
            by_idx[c.index] = by_idx.get(c.index, "") + (c.delta.content or "")
    assert by_idx == {0: "lorem ipsum dolor", 1: "lorem ipsum dolor"}
    assert chunks[2].choices[0].logprobs.content[0].token == "lorem"


def test_response_format_json_schema(client):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array"}},
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model="ok",
        messages=MSG,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema, "strict": True}},
    )
    assert json.loads(r.choices[0].message.content) == {"name": "x", "age": 0, "tags": []}
    r = client.chat.completions.create(model="ok", messages=MSG, response_format={"type": "json_object"})
    assert json.loads(r.choices[0].message.content) == {}


def test_pacing(http):
    t0 = time.monotonic()
    with http.stream(
        "POST", "/chat/completions",
        json={"model": "ok?tokens=4&first_delay=0.1&delay=0.03", "messages": MSG, "stream": True},
    ) as r:
        t_head = time.monotonic() - t0
        stamps = []
        for line in r.iter_lines():
            if line:
                stamps.append(time.monotonic() - t0)
    assert t_head < 0.08
    assert stamps[0] >= 0.09
    assert stamps[-1] >= 0.1 + 3 * 0.03 - 0.01
    assert len(stamps) == 1 + 4 + 1 + 1


# ---------------------------------------------------------------------------
# legacy completions, embeddings, models
# ---------------------------------------------------------------------------


def test_completions(client):
    r = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test", max_tokens=3, logprobs=2)
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    c = r.choices[0]
    assert c.text == "mock answer to:" and c.finish_reason == "length"
    assert c.logprobs.tokens == ["mock", " answer", " to:"] and len(c.logprobs.top_logprobs[0]) == 2
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 3

    r = client.completions.create(model="ok", prompt=["a", "b"], n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]

    chunks = list(
        client.completions.create(model="ok?tokens=3", prompt="x", stream=True, stream_options={"include_usage": True})
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "lorem ipsum dolor"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3


def test_embeddings_float_and_base64(client, http):
    f = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"], encoding_format="float")
    assert f.object == "list" and f.model == "text-embedding-3-small"
    assert [d.index for d in f.data] == [0, 1] and len(f.data[0].embedding) == 1536
    assert f.usage.prompt_tokens == 2 and f.usage.total_tokens == 2
    # The SDK asks for base64 by default and decodes it.
    b = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    assert b.data[0].embedding == pytest.approx(f.data[0].embedding, abs=1e-7)
    assert b.data[1].embedding != b.data[0].embedding
    raw = http.post("/embeddings", json={"model": "e", "input": "alpha", "encoding_format": "base64", "dimensions": 8})
    assert isinstance(raw.json()["data"][0]["embedding"], str)
    assert len(client.embeddings.create(model="e", input="q", dimensions=8, encoding_format="float").data[0].embedding) == 8


def test_models(client):
    ids = [m.id for m in client.models.list()]
    assert "gpt-4o-mini" in ids


# ---------------------------------------------------------------------------
# faults
# ---------------------------------------------------------------------------


def test_429_retry_after(client):
    with pytest.raises(openai.RateLimitError) as ei:
        client.chat.completions.create(model="fault:429?retry_after=1&retry_after_ms=1500", messages=MSG)
    e = ei.value
    assert e.status_code == 429
    assert e.response.headers["retry-after"] == "1"
    assert e.response.headers["retry-after-ms"] == "1500"
    assert e.code == "rate_limit_exceeded" and e.type == "rate_limit_error"


def test_status_faults(client, http):
    with pytest.raises(openai.InternalServerError) as ei:
        client.chat.completions.create(model="fault:status?code=503", messages=MSG)
    assert ei.value.status_code == 503
    for code, typ in [(500, "server_error"), (529, "overloaded_error"), (418, "invalid_request_error")]:
        r = http.post("/chat/completions", json={"model": f"fault:status?code={code}", "messages": MSG})
        assert r.status_code == code
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["type"] == typ

    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="fault:context_length", messages=MSG)
    assert ei.value.code == "context_length_exceeded" and ei.value.param == "messages"
    assert ei.value.type == "invalid_request_error"


def test_auth_echoes_key(client):
    with pytest.raises(openai.AuthenticationError) as ei:
        client.chat.completions.create(model="fault:auth", messages=MSG)
    assert ei.value.code == "invalid_api_key"
    assert API_KEY in ei.value.message


def test_error_200(client, http):
    with pytest.raises(openai.APIError) as ei:
        for _ in client.chat.completions.create(model="fault:error_200", messages=MSG, stream=True):
            pass
    assert "error" in str(ei.value.message).lower()
    r = http.post("/chat/completions", json={"model": "fault:error_200", "messages": MSG})
    assert r.status_code == 200 and r.json()["error"]["type"] == "server_error"


def test_html_and_redirect(http, mock):
    r = http.post("/chat/completions", json={"model": "fault:html", "messages": MSG})
    assert r.status_code == 200 and r.headers["content-type"] == "text/html"
    assert r.text == "<html>Network connection lost.</html>"
    to = f"{mock.base_url}/chat/completions"
    r = http.post("/chat/completions", json={"model": f"fault:redirect?to={to}", "messages": MSG})
    assert r.status_code == 307 and r.headers["location"] == to


def test_cut_stream(http, client, mock):
    lines = []
    with pytest.raises(httpx.RemoteProtocolError):
        with http.stream(
            "POST", "/chat/completions", json={"model": "fault:cut?after=3", "messages": MSG, "stream": True}
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line:
                    lines.append(line)
    assert len(lines) == 1 + 3
    assert all(json.loads(x[6:])["choices"][0]["finish_reason"] is None for x in lines)
    assert mock.log[-1]["outcome"] == "fault:cut"
    # The SDK surfaces the truncated body as a connection error.
    with pytest.raises(openai.APIConnectionError):
        list(client.chat.completions.create(model="fault:cut?after=2", messages=MSG, stream=True))
    # terminate=1: the HTTP body ends cleanly, but without finish chunk or [DONE].
    with http.stream(
        "POST", "/chat/completions", json={"model": "fault:cut?after=1&terminate=1", "messages": MSG, "stream": True}
    ) as r:
        text = r.read().decode()
    assert "[DONE]" not in text and len(sse_events(text)) == 2


def test_reset(client, mock):
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="fault:reset", messages=MSG)
    assert mock.log[-1]["outcome"] == "fault:reset"


def test_reset_is_rst():
    with run_in_thread() as h:
        s = socket.create_connection(("127.0.0.1", h.port))
        body = json.dumps({"model": "fault:reset", "messages": MSG}).encode()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: %d\r\n\r\n%s" % (len(body), body))
        s.settimeout(2)
        with pytest.raises(ConnectionResetError):
            s.recv(100)
        s.close()


def test_never_records_client_close(mock):
    with httpx.Client(base_url=mock.base_url, timeout=0.3) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post("/chat/completions", json={"model": "fault:never", "messages": MSG})
    rec = mock.wait_for(lambda log: [r for r in log if r["outcome"] == "client_closed"], timeout=2)[0]
    assert rec["scenario"] == "fault:never"
    assert 0.25 <= rec["closed_t"] - rec["t"] < 1.0


def test_stall_and_slow_first(mock):
    with httpx.Client(base_url=mock.base_url, timeout=httpx.Timeout(5, read=0.3)) as c:
        lines = []
        with pytest.raises(httpx.ReadTimeout):
            with c.stream("POST", "/chat/completions",
                          json={"model": "fault:stall?after=2", "messages": MSG, "stream": True}) as r:
                for line in r.iter_lines():
                    if line:
                        lines.append(line)
        assert len(lines) == 3
    mock.wait_for(lambda log: log[-1]["outcome"] == "client_closed", timeout=2)

    with httpx.Client(base_url=mock.base_url, timeout=5) as c:
        t0 = time.monotonic()
        with c.stream("POST", "/chat/completions",
                      json={"model": "fault:slow_first?delay=0.3", "messages": MSG, "stream": True}) as r:
            assert time.monotonic() - t0 < 0.2  # headers at once
            lines_it = r.iter_lines()
            first = next(line for line in lines_it if line)
            assert time.monotonic() - t0 >= 0.28
            assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
            assert [line for line in lines_it if line][-1] == "data: [DONE]"
        t0 = time.monotonic()
        r = c.post("/chat/completions", json={"model": "fault:slow_first?delay=0.2", "messages": MSG})
        assert r.status_code == 200 and time.monotonic() - t0 >= 0.18


def test_malformed(http):
    with http.stream("POST", "/chat/completions",
                     json={"model": "fault:malformed?at=2", "messages": MSG, "stream": True}) as r:
        events = sse_events(r.read().decode())
    assert events[1] == "data: {not json" and events[-1] == "data: [DONE]"
    json.loads(events[0][6:])
    r = http.post("/chat/completions", json={"model": "fault:malformed", "messages": MSG})
    assert r.status_code == 200
    with pytest.raises(ValueError):
        json.loads(r.content)


def test_drip(mock, http):
    # Correct response when reassembled, one byte per write.
    r = http.post("/chat/completions", json={"model": "fault:drip?interval=0", "messages": MSG})
    assert r.json()["choices"][0]["message"]["content"].startswith("mock answer to:")
    with http.stream("POST", "/chat/completions",
                     json={"model": "fault:drip?interval=0", "messages": MSG, "stream": True}) as r:
        assert sse_events(r.read().decode())[-1] == "data: [DONE]"
    # At the socket level the first read is a single byte.
    s = socket.create_connection(("127.0.0.1", mock.port))
    body = json.dumps({"model": "fault:drip?interval=0.2", "messages": MSG}).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    s.settimeout(2)
    assert s.recv(100) == b"H"
    s.close()


# ---------------------------------------------------------------------------
# scripts, log, control API
# ---------------------------------------------------------------------------


def test_script_sequence(client, mock):
    ctl = httpx.post(f"{mock.url}/_control/script",
                     json={"model": "flaky", "steps": ["fault:status?code=500", "ok?text=recovered"]})
    assert ctl.status_code == 200
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="flaky", messages=MSG)
    for _ in range(2):  # last step repeats
        r = client.chat.completions.create(model="flaky", messages=MSG)
        assert r.choices[0].message.content == "recovered" and r.model == "flaky"
    recs = httpx.get(f"{mock.url}/_control/log", params={"model": "flaky"}).json()
    assert [r["scenario"] for r in recs] == ["fault:status?code=500", "ok?text=recovered", "ok?text=recovered"]
    assert [r["outcome"] for r in recs] == ["fault:status", "ok", "ok"]
    assert recs[0]["t"] <= recs[1]["t"] <= recs[2]["t"]
    # In-process scripting and reset.
    mock.script("flaky", ["fault:429"])
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="flaky", messages=MSG)
    assert httpx.post(f"{mock.url}/_control/reset").status_code == 200
    assert mock.log == [] and client.chat.completions.create(model="flaky", messages=MSG).choices


def test_log_records_body(client, mock):
    client.chat.completions.create(model="ok", messages=MSG, temperature=0.25, user="u1", stream=False)
    (rec,) = mock.log
    assert rec["method"] == "POST" and rec["path"] == "/v1/chat/completions"
    assert rec["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert rec["body"]["temperature"] == 0.25 and rec["body"]["user"] == "u1"
    assert rec["body"]["messages"] == MSG
    assert rec["model"] == "ok" and rec["scenario"] == "ok" and rec["stream"] is False
    assert rec["outcome"] == "ok" and isinstance(rec["t"], float)
    over_http = httpx.get(f"{mock.url}/_control/log").json()
    assert over_http[0]["body"] == rec["body"]


# ---------------------------------------------------------------------------
# raw HTTP behaviour
# ---------------------------------------------------------------------------


class _Reader:
    """Minimal HTTP/1.1 response reader (Content-Length bodies) that keeps leftover bytes."""

    def __init__(self, s: socket.socket) -> None:
        self.s = s
        self.buf = b""

    def _fill(self) -> None:
        d = self.s.recv(65536)
        assert d, "connection closed"
        self.buf += d

    def response(self) -> tuple[bytes, dict, bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        hdrs = {k.strip().lower().decode(): v.strip().decode() for k, v in (ln.split(b":", 1) for ln in lines[1:])}
        n = int(hdrs["content-length"])
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return lines[0], hdrs, body


def test_raw_keepalive_and_errors(mock):
    s = socket.create_connection(("127.0.0.1", mock.port))
    s.settimeout(2)
    rd = _Reader(s)
    body = json.dumps({"model": "ok", "messages": MSG}).encode()
    req = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    for _ in range(3):  # keep-alive: same socket
        s.sendall(req)
        status, hdrs, b = rd.response()
        assert status == b"HTTP/1.1 200 OK" and hdrs["connection"] == "keep-alive"
        assert json.loads(b)["object"] == "chat.completion"
    # chunked request body -> 400, connection still usable
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
              b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    status, _, b = rd.response()
    assert status.startswith(b"HTTP/1.1 400") and json.loads(b)["error"]["type"] == "invalid_request_error"
    # invalid JSON -> 400; unknown path -> 404
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n{nope")
    assert rd.response()[0].startswith(b"HTTP/1.1 400")
    s.sendall(b"GET /v1/nothing HTTP/1.1\r\nhost: x\r\n\r\n")
    status, _, b = rd.response()
    assert status.startswith(b"HTTP/1.1 404") and "Invalid URL" in json.loads(b)["error"]["message"]
    # Two requests in one write are answered in order.
    s.sendall(req + b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
    assert json.loads(rd.response()[2])["object"] == "chat.completion"
    assert json.loads(rd.response()[2])["object"] == "list"
    # Connection: close is honoured.
    s.sendall(req.replace(b"host: x\r\n", b"host: x\r\nconnection: close\r\n"))
    _, hdrs, _ = rd.response()
    assert hdrs["connection"] == "close" and s.recv(10) == b""
    s.close()
    assert all(r["conn"] == mock.log[0]["conn"] for r in mock.log)


def test_scenario_header_and_queued_requests(mock):
    s = socket.create_connection(("127.0.0.1", mock.port))
    s.settimeout(2)
    rd = _Reader(s)
    s.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-mock-scenario: fault:429\r\n\r\n")
    assert rd.response()[0].startswith(b"HTTP/1.1 429")
    # A request sent behind a slow one on the same connection waits its turn.
    slow = json.dumps({"model": "fault:slow_first?delay=0.2", "messages": MSG}).encode()
    fast = json.dumps({"model": "ok?text=second", "messages": MSG}).encode()
    t0 = time.monotonic()
    s.sendall(b"".join(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(b), b)
        for b in (slow, fast)
    ))
    first = json.loads(rd.response()[2])
    second = json.loads(rd.response()[2])
    assert time.monotonic() - t0 >= 0.18
    assert first["choices"][0]["message"]["content"].startswith("mock answer")
    assert second["choices"][0]["message"]["content"] == "second"
    s.close()


def test_stop_closes_hung_connections():
    h = run_in_thread()
    s = socket.create_connection(("127.0.0.1", h.port))
    body = json.dumps({"model": "fault:never", "messages": MSG}).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    h.wait_for(lambda log: log)
    h.stop()
    s.settimeout(2)
    try:
        assert s.recv(10) == b""
    except ConnectionResetError:
        pass
    s.close()
    assert h.log[0]["outcome"] == "server_stopped"


@pytest.mark.asyncio
async def test_in_process_async():
    async with MockUpstream() as m:
        assert m.base_url == f"http://127.0.0.1:{m.port}/v1"
        async with httpx.AsyncClient(base_url=m.base_url) as c:
            rs = await asyncio.gather(
                *[c.post("/chat/completions", json={"model": f"ok?text=n{i}", "messages": MSG}) for i in range(20)]
            )
        assert sorted(r.json()["choices"][0]["message"]["content"] for r in rs) == sorted(f"n{i}" for i in range(20))
        assert len(m.log) == 20
        m.reset()
        assert m.log == []
