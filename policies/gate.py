"""The cascade gate: may a rung's answer be returned, or must the request escalate? Pure: no I/O.

A rung's answer is reduced to a `Sample` (answer text, tool calls, finish reason, answer-token
logprobs and top-1/top-2 margins), the request to its `Expectations` (JSON schema, tools), and
`judge` runs the route's deterministic checks and compares the logprob score with `min_score`.
See docs/cascade-gate.md for what each check decides and why the score is built the way it is.
"""

import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import msgspec
import referencing.exceptions

from policies.schema import GateConf
from providers.schema.chat import (
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    FunctionCallDelta,
    NamedToolChoice,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    TokenLogprob,
)


@dataclass(frozen=True, slots=True)
class Sample:
    """One rung's answer as the gate sees it."""

    content: str
    """Answer text (never reasoning text)."""
    tool_calls: tuple[tuple[str, str], ...]
    """(function name, arguments JSON text) per call."""
    finish_reason: str | None
    """None while streaming (a prefix)."""
    logprobs: tuple[float, ...]
    """Chosen-token logprobs of ANSWER tokens only (punctuation/whitespace/JSON-syntax tokens dropped
    when the answer has other tokens)."""
    margins: tuple[float | None, ...]
    """Per token, top-1 minus top-2 logprob; None when fewer than 2 top_logprobs came back."""
    complete: bool
    """False: a prefix (hold: prefix); whole-answer checks are skipped."""
    refusal: str | None = None
    """The provider's own refusal text (OpenAI `message.refusal`), when it set one."""


@dataclass(frozen=True, slots=True)
class Expectations:
    """What the request asked for."""

    json_schema: dict[str, Any] | None
    """response_format json_schema's schema ({} for json_object); None: no JSON was asked for."""
    tools: Mapping[str, dict[str, Any]]
    """Tool name -> its parameters JSON schema ({} when the tool declared none)."""
    tool_required: bool = False
    """tool_choice was "required" or named a function: an answer without a tool call fails `tool_call`."""


NO_EXPECTATIONS = Expectations(json_schema=None, tools={})


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    score: float | None
    """0..1, higher = more confident; None when the answer carried no logprobs."""
    failed: tuple[str, ...]
    """Failed check names in the route's order, plus "score" when the score is below min_score (or
    unknown while min_score is set)."""
    features: Mapping[str, float] = field(default_factory=dict)
    """The logprob features the score came from (see `features`)."""


# ---------------------------------------------------------------- request -> expectations


def expectations(request: ChatRequest) -> Expectations:
    """What the answer to `request` must look like: its JSON schema and its declared tools."""
    fmt = request.response_format
    schema: dict[str, Any] | None = None
    if isinstance(fmt, ResponseFormatJSONSchema):
        given = fmt.json_schema.schema
        schema = given if isinstance(given, dict) else {}
    elif isinstance(fmt, ResponseFormatJSONObject):
        schema = {}
    tools: dict[str, dict[str, Any]] = {}
    for tool in request.tools or ():
        params = tool.function.parameters
        tools[tool.function.name] = params if isinstance(params, dict) else {}
    choice = request.tool_choice
    required = bool(tools) and (choice == "required" or isinstance(choice, NamedToolChoice))
    return Expectations(json_schema=schema, tools=tools, tool_required=required)


# ---------------------------------------------------------------- wire answer -> sample

_STRUCTURAL = re.compile(r"[\W_]*")
"""A token with no letter or digit: whitespace, punctuation, JSON syntax."""
_REASONING_END = re.compile(r"\s*(?:</think>|\[/THINK\]|</thinking>|<\|end_of_thought\|>|<\|/think\|>)?\s*")


def _margin(entry: TokenLogprob) -> float | None:
    tops = entry.top_logprobs
    if len(tops) < 2:
        return None
    first = second = -math.inf
    for top in tops:
        if top.logprob > first:
            first, second = top.logprob, first
        elif top.logprob > second:
            second = top.logprob
    return first - second


def _scored(entries: Sequence[TokenLogprob]) -> tuple[tuple[float, ...], tuple[float | None, ...]]:
    """Logprobs and margins of the tokens that carry meaning: tokens with a letter or digit, unless
    the answer has none (then all of them, so an answer like "{}" still has a score)."""
    kept = [e for e in entries if not _STRUCTURAL.fullmatch(e.token)] or list(entries)
    return tuple(e.logprob for e in kept), tuple(_margin(e) for e in kept)


def _after_reasoning(entries: Sequence[TokenLogprob], reasoning: str, answer: str) -> Sequence[TokenLogprob]:
    """Drop the leading entries whose joined text holds `reasoning` (and a closing think marker).

    vLLM may report logprobs for the whole generation, reasoning included; providers that report
    answer tokens only leave the entries unchanged (too little text to hold both, or the reasoning
    is not found at their start)."""
    wanted = reasoning.strip()
    if not wanted or sum(len(e.token) for e in entries) < len(wanted) + len(answer.strip()):
        return entries
    tokens, ends, size = [], [], 0
    for entry in entries:
        tokens.append(entry.token)
        size += len(entry.token)
        ends.append(size)
        if size >= len(wanted) + 128:
            break
    at = "".join(tokens).find(wanted)
    if at < 0 or at > 64:  # no leading reasoning block: these logprobs are the answer's
        return entries
    start = next((i for i, end in enumerate(ends) if end > at + len(wanted)), len(ends))
    while start < len(entries) and _REASONING_END.fullmatch(entries[start].token):
        start += 1
    return entries[start:]


def _tail_covering(entries: Sequence[TokenLogprob], text: str) -> Sequence[TokenLogprob]:
    """The trailing entries whose joined text covers `text` (a chunk that ends reasoning and starts
    the answer carries both kinds of tokens)."""
    size = 0
    for i in range(len(entries) - 1, -1, -1):
        size += len(entries[i].token)
        if size >= len(text):
            return entries[i:]
    return entries


def sample_of(choice: Choice, *, reasoning: str | None = None) -> Sample:
    """The gate's view of a complete unary answer.

    `reasoning`: the reasoning text the answer came with (default: the message's own `reasoning` /
    `reasoning_content`); logprob entries that cover it are not answer tokens.
    """
    message = choice.message
    calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or ()]
    if message.function_call:
        calls.append((message.function_call.name, message.function_call.arguments))
    entries: Sequence[TokenLogprob] = (choice.logprobs.content or []) if choice.logprobs else []
    if reasoning is None:
        reasoning = message.reasoning_content or message.reasoning or None
    if reasoning:
        entries = _after_reasoning(entries, reasoning, message.content or "")
    logprobs, margins = _scored(entries)
    return Sample(
        content=message.content or "",
        tool_calls=tuple(calls),
        finish_reason=choice.finish_reason,
        logprobs=logprobs,
        margins=margins,
        complete=True,
        refusal=message.refusal or None,
    )


class SampleBuilder:
    """Accumulates the stream chunks of ONE choice (index 0) into a Sample.

    Tokens of chunks whose delta carried only reasoning are not answer tokens; a chunk that carries
    both keeps the trailing logprob entries that cover its answer text.
    """

    __slots__ = ("_calls", "_content", "_entries", "_finish", "_refusal", "_tokens")

    def __init__(self) -> None:
        self._content: list[str] = []
        self._refusal: list[str] = []
        self._calls: dict[int, list[str]] = {}  # call index (-1: legacy function_call) -> [name, arguments...]
        self._entries: list[TokenLogprob] = []
        self._finish: str | None = None
        self._tokens = 0

    def add(self, chunk: ChatCompletionChunk) -> None:
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            if choice.finish_reason:
                self._finish = choice.finish_reason
            delta = choice.delta
            if not delta.carries_answer():
                continue
            text = delta.content or ""
            self._content.append(text)
            if delta.refusal:
                self._refusal.append(delta.refusal)
            for call in delta.tool_calls or ():
                self._call(call.index, call.function or None)
            if delta.function_call:
                self._call(-1, delta.function_call)
            entries: Sequence[TokenLogprob] = (choice.logprobs.content or []) if choice.logprobs else []
            if entries and text and (delta.reasoning or delta.reasoning_content):
                entries = _tail_covering(entries, text)
            self._entries.extend(entries)
            self._tokens += len(entries) or 1

    def _call(self, index: int, function: FunctionCallDelta | None) -> None:
        parts = self._calls.setdefault(index, [""])
        if function is not None:
            parts[0] = function.name or parts[0]
            parts.append(function.arguments or "")

    def tokens(self) -> int:
        """Answer tokens seen so far (logprob entries, else one per answer chunk): for prefix_tokens."""
        return self._tokens

    def sample(self, *, complete: bool) -> Sample:
        logprobs, margins = _scored(self._entries)
        calls = tuple((parts[0], "".join(parts[1:])) for _, parts in sorted(self._calls.items()))
        return Sample(
            content="".join(self._content),
            tool_calls=calls,
            finish_reason=self._finish if complete else None,
            logprobs=logprobs,
            margins=margins,
            complete=complete,
            refusal="".join(self._refusal) or None,
        )


# ---------------------------------------------------------------- the score

LOW_QUANTILE = 0.1
"""The score reads the 10th-percentile token (the minimum for answers of up to 10 scored tokens)."""
LOW_PROB = math.log(0.5)
LOGPROB_FLOOR = -9999.0
"""-inf (and NaN) logprobs are clamped here (vLLM's own stand-in for -inf), so features stay finite JSON."""
ODDS_DECADES = 7.0
"""The score spans log-odds of +-7 decades: p = 1 - 1e-7 (the finest step providers resolve; OpenAI's
smallest non-zero surprisal is 1.9e-7) scores 1, p = 1e-7 scores 0."""


def _low(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[int(LOW_QUANTILE * (len(ordered) - 1))]


def _finite(value: float) -> float:
    return value if math.isfinite(value) else (0.0 if value > 0 else LOGPROB_FLOOR)


def features(logprobs: Iterable[float], margins: Iterable[float | None]) -> dict[str, float]:
    """Logprob features of answer tokens: tokens, mean/min/q10 logprob, share of tokens with p < 0.5,
    and (when top_logprobs came back) first/mean/min/q10 top-1 minus top-2 margin. Empty: no tokens."""
    lps = [min(0.0, _finite(x)) for x in logprobs]
    if not lps:
        return {}
    out = {
        "tokens": float(len(lps)),
        "mean_logprob": sum(lps) / len(lps),
        "min_logprob": min(lps),
        "q10_logprob": _low(lps),
        "low_prob_share": sum(x < LOW_PROB for x in lps) / len(lps),
    }
    ms = [min(-LOGPROB_FLOOR, max(0.0, m)) if not math.isnan(m) else 0.0 for m in margins if m is not None]
    if ms:
        out |= {"first_margin": ms[0], "mean_margin": sum(ms) / len(ms), "min_margin": min(ms), "q10_margin": _low(ms)}
    return out


def _log_odds(logprob: float) -> float:
    """ln(p / (1 - p)) of p = exp(logprob), exact near p = 1 (expm1)."""
    if logprob >= 0.0:
        return math.inf
    return logprob - math.log(-math.expm1(logprob))


def score(features: Mapping[str, float]) -> float | None:
    """Confidence 0..1 from `features`; None without logprobs.

    The signal is the log-odds of the answer's 10th-percentile token (for a short answer, its least
    likely token), ln(p / (1 - p)); with top_logprobs it is averaged with the 10th-percentile top-1
    minus top-2 margin, ln(p1 / p2), the same kind of quantity against the runner-up. Low quantiles
    and margins are the signals routing.md found best (Gupta et al. 2024; Ramirez et al. 2024); the
    mean is length-biased and only recorded as a feature. The log-odds are put on 0..1 linearly:
    0.5 + log10(odds) / 14, clipped, so 0.5 is even odds and each factor of ten in the odds (one more
    "nine" of probability) adds 1/14 (about 0.071): p = 0.9 scores 0.57, 0.999 0.71, 0.99999 0.86.
    Unlike p itself, this keeps resolution where confident models differ (p = 0.9999 vs 0.999999).
    Since p2 <= 1 - p1, the margin is never below the log-odds: top_logprobs can only raise a score,
    so a route is calibrated with the same logprobs/top_logprobs settings it runs with.
    The number is a ranking: `escalade calibrate` picks the min_score that meets a quality target.
    """
    if "q10_logprob" not in features:
        return None
    odds = _log_odds(features["q10_logprob"])
    if "q10_margin" in features:
        odds = (odds + features["q10_margin"]) / 2
    value = 0.5 + odds / (2 * ODDS_DECADES * math.log(10))
    return min(1.0, max(0.0, value))


# ---------------------------------------------------------------- checks

REFUSAL_HEAD_CHARS = 200
"""Refusal patterns are searched in the answer's first 200 characters (a refusal opens the answer)."""
_A = "['\u2019]"  # straight or typographic apostrophe
_CANT = rf"(?:can{_A}?t|cannot|can not|won{_A}?t|will not|am not able to|am unable to)"
_DO = r"(?:(?:help|assist)(?: you)?(?: with)?(?! but)\b|comply\b|fulfil|provide (?:that|this|any|help|assistance)\b)"
BUILTIN_REFUSALS: tuple[str, ...] = (
    rf"\bI {_CANT} {_DO}",
    rf"\bI{_A}m (?:not able|unable) to {_DO}",
    rf"\b(?:I{_A}m |I am )?(?:sorry|afraid),? (?:but )?I {_CANT}\b",
    rf"\bas an AI(?: language model| assistant)?,? I {_CANT}\b",
    r"\bI must (?:respectfully )?(?:decline|refuse)\b",
)
"""English refusal openings (case-insensitive), used when a route sets no refusal_patterns."""
TOOL_MARKER = "[TOOL_CALLS]"
"""Mistral's tool-call token: in the answer text it means the engine's tool parser failed."""
_JSON_START = frozenset('{["-0123456789tfn')


@functools.lru_cache(maxsize=64)
def _refusals(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns or BUILTIN_REFUSALS), re.IGNORECASE)


@functools.lru_cache(maxsize=64)
def _answer_format(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.DOTALL)


_BY_ID: dict[int, tuple[dict[str, Any], Any]] = {}


@functools.lru_cache(maxsize=256)
def _validator_for_text(text: str) -> Any:
    """A compiled validator for a schema's JSON text; None when the schema itself is invalid."""
    schema = json.loads(text)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError:
        return None
    return cls(schema)


def _validator(schema: dict[str, Any]) -> Any:
    """Validators are cached by schema identity (the rungs of one request share the dict), then by
    its JSON text (every request decodes its own copy of the same schema)."""
    hit = _BY_ID.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    validator = _validator_for_text(msgspec.json.encode(schema, order="sorted").decode())
    if len(_BY_ID) >= 256:
        _BY_ID.clear()
    _BY_ID[id(schema)] = (schema, validator)
    return validator


def _valid(instance: Any, schema: dict[str, Any]) -> bool:
    """Instance conforms to schema. A schema jsonschema cannot use (invalid, unresolvable $ref) only
    requires the answer to parse."""
    if not schema:
        return True
    validator = _validator(schema)
    if validator is None:
        return True
    try:
        return bool(validator.is_valid(instance))
    except referencing.exceptions.Unresolvable:
        return True


_NOT_JSON = object()


def _parse(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return _NOT_JSON


def _truncated(sample: Sample, expect: Expectations, conf: GateConf) -> bool:
    return sample.finish_reason != "length"


def _empty(sample: Sample, expect: Expectations, conf: GateConf) -> bool:
    return bool(sample.content.strip() or sample.tool_calls or sample.refusal)


def _json_schema(sample: Sample, expect: Expectations, conf: GateConf) -> bool:
    text = sample.content.strip()
    if expect.json_schema is None or (sample.tool_calls and not text):
        return True
    if not sample.complete:  # a prefix can only show that the answer does not start like JSON
        return not text or text[0] in _JSON_START
    value = _parse(text)
    return value is not _NOT_JSON and _valid(value, expect.json_schema)


def _tool_call(sample: Sample, expect: Expectations, conf: GateConf) -> bool:
    if TOOL_MARKER in sample.content or any(name not in expect.tools for name, _ in sample.tool_calls):
        return False
    if not sample.complete:
        return True
    if expect.tool_required and not sample.tool_calls:
        return False
    for name, arguments in sample.tool_calls:
        args = _parse(arguments) if arguments.strip() else {}
        if not isinstance(args, dict) or not _valid(args, expect.tools[name]):
            return False
    return True


def _refusal(sample: Sample, expect: Expectations, conf: GateConf) -> bool:
    if sample.refusal:
        return False
    head = sample.content.lstrip()[:REFUSAL_HEAD_CHARS]
    return _refusals(tuple(conf.refusal_patterns)).search(head) is None


# Repetition: a looping answer. Units are words (runs of non-space) and single CJK/kana/hangul
# characters, so languages written without spaces are measured too. Two detectors on the last
# TAIL_UNITS units: the tail is periodic (a unit sequence of period p repeats >= MIN_COPIES times
# up to the end, covering >= MIN_LOOP_UNITS units), or >= MAX_DUP_SHARE of its 4-grams are
# repeats (a loop with small variations). Normal prose, code and tables stay far below both.
_CJK = "\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f"
_UNIT = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
TAIL_UNITS = 256
TAIL_CHARS = 8192
MIN_COPIES = 3
MIN_LOOP_UNITS = 24
NGRAM = 4
MIN_NGRAMS = 64
MAX_DUP_SHARE = 0.6


def _periodic_tail(units: Sequence[str]) -> int:
    """Units covered by the shortest period that repeats up to the end (0: none that counts)."""
    n = len(units)
    for period in range(1, n // MIN_COPIES + 1):
        if units[-1] != units[-1 - period]:
            continue
        run = 1
        while run + period < n and units[-1 - run] == units[-1 - run - period]:
            run += 1
        if run + period >= max(MIN_COPIES * period, MIN_LOOP_UNITS):
            return run + period
    return 0


def repetition_stats(text: str) -> tuple[int, float]:
    """(units covered by a periodic tail, 0 if none; share of repeated 4-grams in the tail)."""
    tail = _UNIT.findall(text[-TAIL_CHARS:])[-TAIL_UNITS:]
    grams = [tuple(tail[i : i + NGRAM]) for i in range(len(tail) - NGRAM + 1)]
    share = 1.0 - len(set(grams)) / len(grams) if len(grams) >= MIN_NGRAMS else 0.0
    return _periodic_tail(tail), share


def _repetition(sample: Sample, expect: Expectations, conf: GateConf) -> bool:
    covered, share = repetition_stats(sample.content)
    return not covered and share < MAX_DUP_SHARE


def _answer_format_ok(sample: Sample, expect: Expectations, conf: GateConf) -> bool:
    text = sample.content.strip()
    if conf.answer_format is None or (sample.tool_calls and not text):
        return True
    return _answer_format(conf.answer_format).fullmatch(text) is not None


CHECKS: dict[str, Callable[[Sample, Expectations, GateConf], bool]] = {
    "truncated": _truncated,
    "empty": _empty,
    "json_schema": _json_schema,
    "tool_call": _tool_call,
    "refusal": _refusal,
    "repetition": _repetition,
    "answer_format": _answer_format_ok,
}
"""Check name -> passes(sample, expect, conf)."""
PREFIX_CHECKS = frozenset({"json_schema", "tool_call", "refusal", "repetition"})
"""Checks a prefix can decide (json_schema: starts like JSON; tool_call: no raw marker, known names)."""


def judge(sample: Sample, expect: Expectations, conf: GateConf) -> Verdict:
    """Run the route's checks on `sample` (on a prefix: only what a prefix can decide) and compare
    its score with `min_score`. The answer passes when nothing failed."""
    failed = [
        check
        for check in dict.fromkeys(conf.checks)
        if (sample.complete or check in PREFIX_CHECKS) and not CHECKS[check](sample, expect, conf)
    ]
    feats = features(sample.logprobs, sample.margins)
    value = score(feats)
    if conf.min_score is not None and (value is None or value < conf.min_score):
        failed.append("score")
    return Verdict(passed=not failed, score=value, failed=tuple(failed), features=feats)
