"""The mock upstream's extra faults (tests/mock_upstream/extra_faults.py): trickle, outage, no_done."""

import json
import time

import httpx

MSG = [{"role": "user", "content": "hi"}]


def test_trickle_stream_sends_well_formed_events_forever(mock):
    events = []
    with httpx.Client(base_url=mock.base_url, timeout=httpx.Timeout(5, read=0.5)) as c:
        body = {"model": "fault:trickle?interval=0.005", "messages": MSG, "stream": True}
        with c.stream("POST", "/chat/completions", json=body) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line:
                    events.append(json.loads(line.removeprefix("data: ")))
                if len(events) == 8:
                    break
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(e["choices"][0]["delta"]["content"] and e["choices"][0]["finish_reason"] is None for e in events[1:])
    mock.wait_for(lambda log: log[-1]["outcome"] == "client_closed", timeout=2)


def test_trickle_unary_promises_a_body_it_never_finishes(mock):
    body = {"model": "fault:trickle", "messages": MSG}
    with httpx.stream("POST", f"{mock.base_url}/chat/completions", json=body, timeout=5) as r:
        assert r.status_code == 200 and int(r.headers["content-length"]) >= 1 << 30
        got = b""
        for piece in r.iter_bytes():
            got += piece
            if len(got) >= 64:
                break
    assert got.strip() == b""  # JSON whitespace: valid so far, never complete


def test_outage_ends_at_the_given_time(mock):
    until = time.monotonic() + 0.3
    body = {"model": f"fault:outage?until={until}&tokens=2&retry_after=1", "messages": MSG}
    with httpx.Client(base_url=mock.base_url, timeout=5) as c:
        down = c.post("/chat/completions", json=body)
        assert down.status_code == 503 and down.headers["retry-after"] == "1"
        assert down.json()["error"]["code"] == "overloaded"
        time.sleep(max(0.0, until - time.monotonic()) + 0.01)
        up = c.post("/chat/completions", json=body)
        assert up.json()["choices"][0]["message"]["content"] == "lorem ipsum"
        with c.stream("POST", "/chat/completions", json={**body, "stream": True}) as r:
            assert r.read().decode().endswith("data: [DONE]\n\n")
    assert [r["outcome"] for r in mock.records()] == ["fault:outage", "ok", "ok"]


def test_no_done_is_a_complete_stream_without_its_terminator(mock):
    body = {"model": "fault:no_done?tokens=2", "messages": MSG, "stream": True}
    body["stream_options"] = {"include_usage": True}
    with httpx.stream("POST", f"{mock.base_url}/chat/completions", json=body, timeout=5) as r:
        text = r.read().decode()
    events = [json.loads(e.removeprefix("data: ")) for e in text.split("\n\n") if e]
    assert "[DONE]" not in text
    assert events[-2]["choices"][0]["finish_reason"] == "stop" and events[-1]["usage"]["completion_tokens"] == 2
