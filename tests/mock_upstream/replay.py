"""Replay scenarios: recorded chat answers WITH token logprobs, for testing the cascade gate.

``model: "replay:<recording>"`` (or ``replay=<recording>`` as a parameter of any scenario, so that
delivery faults apply: ``fault:cut?after=8&replay=confident``) answers one of the recordings below in
OpenAI's exact wire format, unary or SSE. Token logprobs are sent only when the request asks
(``logprobs: true``), with ``top_logprobs: k`` alternatives per token (the chosen token first, as
OpenAI does). Reasoning is sent vLLM's way: ``message.reasoning`` / ``delta.reasoning``, its tokens'
logprobs before the answer's (non-stream) or on the reasoning chunks (stream).

Parameters (on top of the usual pacing ones, ``delay``, ``first_delay``, ...):

    text=...        the answer's text instead of the recording's
    lp=-0.3         every answer token's logprob (the recording's profile otherwise)
    gap=0.2         logprob distance from the chosen token to the first alternative
    reasoning=...   reasoning text before the answer
    finish=length   the finish reason (max_tokens still cuts, with "length")
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .server import _apply_limits, _as_int, _cchoice, _Json, _pick_tool, _scan_messages, _Sse, _tokenize, _usage

if TYPE_CHECKING:
    from .server import MockUpstream, Scenario


@dataclass(frozen=True)
class Recording:
    text: str = ""
    lp: float = -0.0005
    """Logprob of each answer token (a small per-token jitter makes it up to 20 % lower)."""
    gap: float = 8.0
    """Distance from the chosen token's logprob to the best alternative's."""
    doubt_after: int | None = None
    """From this answer token on, tokens are unsure (lp -1.6, gap 0.15)."""
    reasoning: str = ""
    finish: str = "stop"
    tool_args: str | None = None
    """Answer with one call of the request's first tool, with these arguments (verbatim)."""
    tool_name: str | None = None
    """The called tool's name (default: the request's first tool)."""


CONFIDENT = "The capital of France is Paris, a city on the Seine."

RECORDINGS: dict[str, Recording] = {
    "confident": Recording(text=CONFIDENT),
    "unsure": Recording(text="It might be Lyon, or perhaps Marseille; I am not sure.", lp=-1.6, gap=0.15),
    "late-doubt": Recording(text=CONFIDENT + " Its population is about twelve or fifteen million.", doubt_after=8),
    "json": Recording(text='{"city": "Paris", "country": "France"}'),
    "json-bad": Recording(text='{"city": "Paris", "country": '),
    "tool": Recording(tool_args='{"city": "Paris"}'),
    "tool-bad": Recording(tool_args='{"city": "Par'),
    "tool-unknown": Recording(tool_args='{"city": "Paris"}', tool_name="launch_rockets"),
    "truncated": Recording(text=CONFIDENT, finish="length"),
    "empty": Recording(text=""),
    "refusal": Recording(text="I can't help with that request."),
    "thinking": Recording(text=CONFIDENT, reasoning="The user asks for a capital. France: Paris."),
}


def recording_of(sc: Scenario) -> Recording | None:
    """The recording a scenario asks for, with its parameters applied; None when it is no replay."""
    name = sc.name[len("replay:") :] if sc.name.startswith("replay:") else sc.params.get("replay")
    if name is None:
        return None
    base = RECORDINGS.get(name, Recording(text=f"unknown recording {name}"))
    p = sc.params
    return Recording(
        text=p.get("text", base.text),
        lp=sc.num("lp", base.lp),
        gap=sc.num("gap", base.gap),
        doubt_after=base.doubt_after,
        reasoning=p.get("reasoning", base.reasoning),
        finish=p.get("finish", base.finish),
        tool_args=base.tool_args,
        tool_name=base.tool_name,
    )


# ---------------------------------------------------------------- logprobs


def _token_lp(rec: Recording, i: int, answer: bool) -> tuple[float, float]:
    """(logprob, gap to the first alternative) of token i: deterministic, slightly uneven."""
    jitter = 1 + ((i * 7) % 5) * 0.05
    if answer and rec.doubt_after is not None and i >= rec.doubt_after:
        return -1.6 * jitter, 0.15
    return min(0.0, rec.lp * jitter), rec.gap


def _entry(tok: str, lp: float, gap: float, top: int) -> dict[str, Any]:
    alts = [{"token": tok, "logprob": round(lp, 6), "bytes": list(tok.encode())}] if top else []
    for j in range(1, top):
        alt = f" alt{j}"
        alts.append({"token": alt, "logprob": round(lp - gap - 0.5 * (j - 1), 6), "bytes": list(alt.encode())})
    return {"token": tok, "logprob": round(lp, 6), "bytes": list(tok.encode()), "top_logprobs": alts}


def _entries(rec: Recording, toks: list[str], top: int, answer: bool) -> list[dict[str, Any]]:
    return [_entry(t, *_token_lp(rec, i, answer), top) for i, t in enumerate(toks)]


# ---------------------------------------------------------------- the answer


def replay_chat(srv: MockUpstream, body: dict, sc: Scenario, stream: bool) -> _Json | _Sse:
    rec = recording_of(sc)
    assert rec is not None
    model = body.get("model") if isinstance(body.get("model"), str) else "replay"
    n = _as_int(body.get("n"), 1, 1, 16)
    want_lp = body.get("logprobs") is True
    top = _as_int(body.get("top_logprobs"), 0, 0, 20) if want_lp else 0
    ptoks, _ = _scan_messages(body.get("messages"))
    thinking = _tokenize(rec.reasoning)
    call = _tool_call(srv, body, rec)
    if call is not None:
        toks, finish = _tokenize(call["function"]["arguments"]), "tool_calls"
    else:
        toks, finish = _apply_limits(_tokenize(rec.text), body, ("max_completion_tokens", "max_tokens"))
        finish = "length" if finish == "length" else rec.finish
    usage = _usage(ptoks, (len(thinking) + len(toks)) * n)
    cid, created = srv._next_id("chatcmpl-"), int(time.time())
    answer_lps = _entries(rec, toks, top, True) if want_lp else None
    thinking_lps = _entries(rec, thinking, top, False) if want_lp else None
    if not stream:
        message: dict[str, Any] = {"role": "assistant", "content": None if call else "".join(toks), "refusal": None,
                                   "annotations": []}  # fmt: skip
        if call is not None:
            message["tool_calls"] = [call]
        if rec.reasoning:
            message["reasoning"] = rec.reasoning
        lp = {"content": (thinking_lps or []) + (answer_lps or []), "refusal": None} if want_lp else None
        choices = [{"index": i, "message": message, "logprobs": lp, "finish_reason": finish} for i in range(n)]
        return _Json(200, srv._chat_body(cid, created, model, choices, usage), tokens=len(toks))
    pre, suf = srv._chunk_affixes(cid, created, model, body, "chat.completion.chunk")
    events: list[tuple[bytes, bool]] = []

    def emit(delta: dict[str, Any], lp: Any, finish_reason: str | None, content: bool) -> None:
        for i in range(n):
            events.append((srv._chunk(pre, suf, [_cchoice(i, delta, lp, finish_reason)]), content))

    emit({"role": "assistant", "content": "", "refusal": None}, None, None, False)
    for j, t in enumerate(thinking):
        emit({"reasoning": t}, {"content": [thinking_lps[j]], "refusal": None} if thinking_lps else None, None, True)
    for j, t in enumerate(toks):
        lp = {"content": [answer_lps[j]], "refusal": None} if answer_lps else None
        emit(_tool_delta(call, t, j) if call else {"content": t}, lp, None, True)
    emit({}, None, finish, False)
    return srv._finish_events(events, n, pre, usage, body)


def _tool_call(srv: MockUpstream, body: dict, rec: Recording) -> dict[str, Any] | None:
    if rec.tool_args is None:
        return None
    tool = _pick_tool(body)
    name = rec.tool_name or (tool.get("name") if tool else None) or "tool"
    return {"id": srv._next_id("call_"), "type": "function", "function": {"name": name, "arguments": rec.tool_args}}


def _tool_delta(call: dict[str, Any], fragment: str, j: int) -> dict[str, Any]:
    """OpenAI's tool-call streaming: the first delta names the call, later ones carry argument text."""
    if j == 0:
        head = {"index": 0, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": fragment}}  # fmt: skip
        return {"role": "assistant", "content": None, "tool_calls": [head]}
    return {"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}

