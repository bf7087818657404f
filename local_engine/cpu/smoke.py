#!/usr/bin/env python3
"""Smoke checks against a vLLM server that serves the tiny model (stdlib only).

Usage: python smoke.py BASE_URL MODEL_DIR
  e.g. python smoke.py http://127.0.0.1:8765 /tmp/escalade-vllm/tiny-mixtral

Prints one line per check and a final line "N passed, M failed"; exits 1 if any failed.
Special-token ids come from MODEL_DIR/escalade-tiny.json (written by make_tiny_model.py).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import urllib.error
import urllib.request

TIMEOUT = 120

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city"],
        },
    },
}
TOOL_ARGS = {"city": "Paris", "unit": "C"}
# The model is random: spell out the tool call with a regex, and push the real control
# tokens with logit_bias so the model emits them as single special tokens.
TOOL_REGEX = r'\[TOOL_CALLS\]get_weather\[ARGS\]\{"city":"Paris","unit":"C"\}'
THINK_REGEX = r"\[THINK\]let me think\[/THINK\]It is sunny\."


class Client:
    def __init__(self, base_url: str):
        self.base = base_url.rstrip("/")

    def _open(self, method: str, path: str, body: dict | None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            return urllib.request.urlopen(req, timeout=TIMEOUT)
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            raise AssertionError(f"{method} {path} -> HTTP {e.code}: {detail}") from None

    def get(self, path: str) -> tuple[int, bytes]:
        with self._open("GET", path, None) as r:
            return r.status, r.read()

    def post(self, path: str, body: dict) -> dict:
        with self._open("POST", path, body) as r:
            return json.loads(r.read())

    def stream(self, path: str, body: dict) -> tuple[list[dict], bool]:
        """POST with stream=true; returns (chunks, saw_done)."""
        chunks: list[dict] = []
        done = False
        with self._open("POST", path, body) as r:
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:") :].strip()
                if payload == "[DONE]":
                    done = True
                    break
                assert not done, "data after [DONE]"
                chunks.append(json.loads(payload))
        return chunks, done


def collect_stream(chunks: list[dict]) -> dict:
    """Fold chat.completion.chunk deltas into content / reasoning / tool_calls."""
    out = {"role": None, "content": "", "reasoning": "", "tool_calls": {}, "finish_reason": None, "usage": None}
    for c in chunks:
        if c.get("usage"):
            out["usage"] = c["usage"]
        for ch in c.get("choices") or []:
            d = ch.get("delta") or {}  # empty deltas happen while a parser buffers: skip them
            out["role"] = out["role"] or d.get("role")
            out["content"] += d.get("content") or ""
            out["reasoning"] += d.get("reasoning") or d.get("reasoning_content") or ""
            for tc in d.get("tool_calls") or []:
                slot = out["tool_calls"].setdefault(tc.get("index", 0), {"id": None, "name": "", "arguments": ""})
                slot["id"] = slot["id"] or tc.get("id")
                fn = tc.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
            if ch.get("finish_reason"):
                out["finish_reason"] = ch["finish_reason"]
    return out


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    base_url, model_dir = sys.argv[1], sys.argv[2]
    with open(os.path.join(model_dir, "escalade-tiny.json")) as f:
        meta = json.load(f)
    ids = meta["special_token_ids"]
    bias = {str(ids[t]): 50 for t in ("[TOOL_CALLS]", "[ARGS]", "[THINK]", "[/THINK]")}
    model = meta.get("served_model_name", "tiny-mixtral")
    api = Client(base_url)
    user = [{"role": "user", "content": "What is the weather in Paris?"}]
    passed = failed = 0

    def check(name):
        def deco(fn):
            nonlocal passed, failed
            try:
                detail = fn()
                passed += 1
                print(f"PASS {name}" + (f": {detail}" if detail else ""), flush=True)
            except Exception as e:
                failed += 1
                msg = str(e) if isinstance(e, AssertionError) else traceback.format_exc(limit=2).strip()
                print(f"FAIL {name}: {msg}", flush=True)
            return fn

        return deco

    @check("health")
    def _():
        status, _body = api.get("/health")
        assert status == 200, status

    @check("models")
    def _():
        status, body = api.get("/v1/models")
        assert status == 200, status
        names = [m["id"] for m in json.loads(body)["data"]]
        assert model in names, names
        return ",".join(names)

    base_chat = {"model": model, "messages": user, "temperature": 0, "max_tokens": 8}
    nonstream: dict = {}

    @check("chat with logprobs")
    def _():
        r = api.post("/v1/chat/completions", dict(base_chat, logprobs=True, top_logprobs=3))
        ch = r["choices"][0]
        content = ch["message"]["content"]
        assert isinstance(content, str) and content, f"content {content!r}"
        assert "\ufffd" not in content, f"replacement char in {content!r}"
        lp = ch["logprobs"]["content"]
        n = r["usage"]["completion_tokens"]
        assert n > 0 and len(lp) == n, (n, len(lp))
        for e in lp:
            assert isinstance(e["logprob"], float) and e["logprob"] <= 0, e
            assert len(e["top_logprobs"]) == 3, e
            assert e["token"], f"empty token in logprobs: {e}"
        again = api.post("/v1/chat/completions", dict(base_chat, logprobs=True, top_logprobs=3))
        assert again["choices"][0]["message"]["content"] == content, "temperature 0 is not deterministic"
        assert [e["logprob"] for e in again["choices"][0]["logprobs"]["content"]] == [e["logprob"] for e in lp]
        nonstream["content"] = content
        return f"{content!r} ({n} tokens, finish={ch['finish_reason']})"

    @check("chat streaming with include_usage")
    def _():
        chunks, done = api.stream(
            "/v1/chat/completions", dict(base_chat, stream=True, stream_options={"include_usage": True})
        )
        assert done, "stream did not end with [DONE]"
        assert chunks, "no chunks"
        last = chunks[-1]
        assert last.get("usage") and last["usage"]["completion_tokens"] > 0, f"last chunk {last}"
        assert last.get("choices") == [], f"last chunk has choices: {last.get('choices')}"
        s = collect_stream(chunks)
        assert s["role"] == "assistant", s["role"]
        assert s["content"], "no streamed content"
        if "content" in nonstream:
            assert s["content"] == nonstream["content"], (s["content"], nonstream["content"])
        return f"{len(chunks)} chunks, usage={last['usage']['total_tokens']} tokens"

    @check("legacy completions")
    def _():
        r = api.post(
            "/v1/completions", {"model": model, "prompt": "The weather today is", "max_tokens": 8, "temperature": 0}
        )
        assert r["object"] == "text_completion", r["object"]
        text = r["choices"][0]["text"]
        assert isinstance(text, str) and text, f"text {text!r}"
        assert r["usage"]["prompt_tokens"] > 0 and r["usage"]["completion_tokens"] > 0, r["usage"]
        return repr(text)

    tool_req = {
        "model": model,
        "messages": user,
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
        "temperature": 0,
        "max_tokens": 64,
        "structured_outputs": {"regex": TOOL_REGEX},
        "logit_bias": bias,
    }

    @check("forced tool call")
    def _():
        r = api.post("/v1/chat/completions", tool_req)
        ch = r["choices"][0]
        calls = ch["message"].get("tool_calls") or []
        assert len(calls) == 1, f"message {ch['message']}"
        fn = calls[0]["function"]
        assert fn["name"] == "get_weather", fn
        assert json.loads(fn["arguments"]) == TOOL_ARGS, fn["arguments"]
        assert calls[0]["id"] and calls[0]["type"] == "function", calls[0]
        assert ch["finish_reason"] == "tool_calls", ch["finish_reason"]
        assert not ch["message"].get("content"), f"content {ch['message'].get('content')!r}"
        return f"id={calls[0]['id']} args={fn['arguments']}"

    @check("forced tool call, streaming")
    def _():
        chunks, done = api.stream("/v1/chat/completions", dict(tool_req, stream=True))
        assert done, "no [DONE]"
        s = collect_stream(chunks)
        calls = list(s["tool_calls"].values())
        assert len(calls) == 1, f"tool calls {s['tool_calls']}, content {s['content']!r}"
        assert calls[0]["name"] == "get_weather", calls[0]
        assert json.loads(calls[0]["arguments"]) == TOOL_ARGS, calls[0]["arguments"]
        assert calls[0]["id"], calls[0]
        assert s["finish_reason"] == "tool_calls", s["finish_reason"]
        return f"{len(chunks)} chunks"

    @check("reasoning parser")
    def _():
        r = api.post(
            "/v1/chat/completions",
            {
                "model": model,
                "messages": user,
                "temperature": 0,
                "max_tokens": 64,
                "reasoning_effort": "high",
                "structured_outputs": {"regex": THINK_REGEX},
                "logit_bias": bias,
            },
        )
        msg = r["choices"][0]["message"]
        reasoning = msg.get("reasoning") or msg.get("reasoning_content")
        assert reasoning == "let me think", f"message {msg}"
        assert msg["content"] == "It is sunny.", f"message {msg}"
        return f"reasoning={reasoning!r} content={msg['content']!r}"

    @check("reasoning_effort reaches the chat template")
    def _():
        prompts = {}
        for effort in ("none", "high"):
            r = api.post(
                "/v1/chat/completions", dict(base_chat, max_tokens=1, reasoning_effort=effort, return_token_ids=True)
            )
            p = r.get("prompt_token_ids")
            assert isinstance(p, list) and p, f"prompt_token_ids {p!r}"
            prompts[effort] = p
        assert prompts["none"] != prompts["high"], "prompt_token_ids identical for none and high"
        text = api.post("/detokenize", {"model": model, "tokens": prompts["high"]}).get("prompt", "")
        assert "effort=high" in text, f"detokenized prompt {text!r}"
        return f"{len(prompts['none'])} vs {len(prompts['high'])} prompt tokens"

    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
