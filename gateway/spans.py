"""Light spans for the request path, finished into the installed SDK TracerProvider's span processors.

The SDK's own span objects cost tens of microseconds each (locks, bounded attribute maps validating every
value as it is set, context objects, a ReadableSpan copy at the end). A request makes three of them or
more, so here a span is a small object with slots: attributes in a plain dict, `time.time_ns()` stamps,
ids from `random.getrandbits` (what the SDK's RandomIdGenerator does), and its own context variable for
the current span instead of the OpenTelemetry context. What the SDK defines stays the SDK's:

- sampling: the provider's sampler (OTEL_TRACES_SAMPLER / _ARG, continuing an incoming `traceparent`).
  The SDK's built-in samplers (always_on/off, traceidratio, their parent-based forms) are not called:
  `fast_decision` applies their rules (tested against them), as calling one costs a Context and a
  SamplingResult per span; any other sampler is asked for every span;
- limits: the provider's SpanLimits (OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, attribute and event counts);
- export: the span is an `opentelemetry.sdk.trace.ReadableSpan`, handed to the provider's span processors
  (`on_start` when it starts, `on_end` when it ends), so BatchSpanProcessor, SimpleSpanProcessor, the
  in-memory, console and OTLP exporters all work as with SDK spans. When the only processor is
  gateway/span_batch.py's SpanBatcher with an exporter that encodes spans as they end, a span ending goes
  to its `take` instead: encoded there, in C, which also checks the attribute values.

Unsampled spans are the API's NonRecordingSpan, as the SDK makes them.
"""

import logging
import os
import random
import time
from collections.abc import Mapping
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from gateway.span_batch import SpanBatcher

log = logging.getLogger("escalade.spans")

SCOPE = InstrumentationScope("escalade")
_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_SAMPLED_RANDOM = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
_NOT_SAMPLED_RANDOM = TraceFlags(TraceFlags.RANDOM_TRACE_ID)
_getrandbits = random.getrandbits
_time_ns = time.time_ns


def _compiled() -> Any:
    """gateway/_otlp_span.c (built by `pip install` when a C compiler is there), or None: not built, or
    ESCALADE_OTLP_NATIVE=0 (the same results either way; the switch is for comparing)."""
    if os.environ.get("ESCALADE_OTLP_NATIVE", "1").strip() == "0":
        return None
    try:
        from gateway import _otlp_span  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _otlp_span


COMPILED = _compiled()

_current: ContextVar["Span | NonRecordingSpan | None"] = ContextVar("escalade_current_span", default=None)


def current() -> "Span | NonRecordingSpan | None":
    """The span current in this task (an attempt's while it runs, else the request's), or None."""
    return _current.get()


def current_parent() -> "tuple[Tracing | None, SpanContext | None]":
    """For a child of the current span: the Tracing that made it (None when it is not one of ours) and
    its context (None when no span is current)."""
    span = _current.get()
    if span is None:
        return None, None
    if type(span) is Span:
        return span._tracing, span._context
    return None, span.get_span_context()


def enter(span: "Span | NonRecordingSpan") -> Token:
    return _current.set(span)


def leave(token: Token) -> None:
    try:
        _current.reset(token)
    except (ValueError, RuntimeError):  # made in another context, or used already: nothing to undo here
        log.debug("a span token was left twice or from another context")


_PARENT_BASED = (ParentBased, ParentBasedTraceIdRatio)  # exactly these: a subclass may decide otherwise
_LOCAL_SAMPLED = SpanContext(1, 1, False, _SAMPLED)


def _static_for_children(sampler: Sampler) -> bool:
    """The decision for a sampled local parent's child does not depend on the trace id (no ratio in it)."""
    while type(sampler) in _PARENT_BASED:
        sampler = sampler._local_parent_sampled
    return sampler is ALWAYS_ON or sampler is ALWAYS_OFF


def fast_decision(sampler: Sampler, parent: SpanContext | None, trace_id: int) -> bool | None:
    """Whether the SDK's built-in samplers (always_on/off, traceidratio and their parent-based forms with the
    default delegates) sample a span, worked out as they do it, without building the Context and
    SamplingResult they need; None for any other sampler (it is then asked)."""
    while type(sampler) in _PARENT_BASED:
        if parent is None:
            sampler = sampler._root
        elif parent.is_remote:
            sampler = (
                sampler._remote_parent_sampled if parent.trace_flags.sampled else sampler._remote_parent_not_sampled
            )
        else:
            sampler = sampler._local_parent_sampled if parent.trace_flags.sampled else sampler._local_parent_not_sampled
    if sampler is ALWAYS_ON:
        return True
    if sampler is ALWAYS_OFF:
        return False
    if type(sampler) is TraceIdRatioBased:
        return trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < sampler.bound
    return None


_DEFAULT_STATE = SpanContext(1, 1, False).trace_state


def _context(trace_id: int, span_id: int, flags: TraceFlags, state: TraceState | None) -> SpanContext:
    """A local SpanContext with ids made here (valid by construction): the tuple SpanContext is, without the
    range checks of its constructor. The unit tests check the tuple's layout against the properties."""
    return tuple.__new__(SpanContext, (trace_id, span_id, False, flags, state or _DEFAULT_STATE, True))


def _nonzero_bits(bits: int) -> int:
    """A random id of `bits` bits that is not 0 (an invalid id), as the SDK's RandomIdGenerator makes them."""
    while True:
        value = _getrandbits(bits)
        if value:
            return value


_NOOP_STARTS = frozenset({SpanProcessor.on_start, BatchSpanProcessor.on_start, SimpleSpanProcessor.on_start})


class Tracing:
    """What spans need from one installed SDK TracerProvider (built once per provider)."""

    __slots__ = ("_seen", "ends", "ids", "local_sampled_child", "max_attributes", "max_event_attributes",
                 "max_events", "max_length", "processor", "provider", "random_ids", "resource", "sampler",
                 "starts", "take")  # fmt: skip

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.resource = provider.resource  # fixed for the provider's life (a property call per span otherwise)
        self.processor = provider._active_span_processor  # add_span_processor updates it in place
        self.sampler = provider.sampler
        self.ids = provider.id_generator
        self.random_ids = type(self.ids) is RandomIdGenerator
        limits = getattr(provider, "_span_limits", None) or SpanLimits()
        self.max_attributes = limits.max_span_attributes
        self.max_length = limits.max_attribute_length
        self.max_events = limits.max_events
        self.max_event_attributes = limits.max_event_attributes
        # what the sampler says for a child of a sampled local parent, when that needs no asking
        self.local_sampled_child = fast_decision(self.sampler, _LOCAL_SAMPLED, 0) is True and _static_for_children(
            self.sampler
        )
        self._seen: object = None
        self.starts: tuple[Any, ...] = ()
        self.ends: tuple[Any, ...] = ()
        self.take: Any = None
        self.processors()

    def processors(self) -> None:
        """The processors' `on_start` (those that do something) and `on_end` methods, looked up again when
        a processor was added (the provider's multi-processor replaces its tuple)."""
        current = self.processor._span_processors
        if current is self._seen:
            return
        self._seen = current
        self.starts = tuple(p.on_start for p in current if getattr(type(p), "on_start", None) not in _NOOP_STARTS)
        self.ends = tuple(p.on_end for p in current)
        only = current[0] if len(current) == 1 else None
        self.take = only.take if type(only) is SpanBatcher and only.encode is not None else None
        """SpanBatcher.take when spans can be encoded as they end (see Span.end), else None."""

    def trace_id(self) -> int:
        return _nonzero_bits(128) if self.random_ids else int(self.ids.generate_trace_id())

    def span_id(self) -> int:
        return _nonzero_bits(64) if self.random_ids else int(self.ids.generate_span_id())

    def start(
        self,
        name: str,
        kind: SpanKind,
        attributes: dict[str, Any],
        parent: SpanContext | None,
        start_time: int | None = None,
    ) -> "Span | NonRecordingSpan":
        """A span under `parent` (None: a root span), sampled as the SDK's tracer would sample it.

        `attributes` becomes the span's own dict (not copied)."""
        if parent is not None:
            trace_id, _, remote, parent_flags, state, valid = parent  # SpanContext is a tuple: one unpack
            if valid and not remote and parent_flags & 1 and self.local_sampled_child:
                # the common case, a child of this process's sampled span: sampled, flags and state inherited
                # (a local parent's flags are ours: sampled, maybe random-trace-id, nothing else)
                # _context and span_id inlined (the path of most spans): a 0 id (2**-64) is drawn again
                span_id = (_getrandbits(64) or _nonzero_bits(64)) if self.random_ids else self.span_id()
                span_context = tuple.__new__(SpanContext, (trace_id, span_id, False, parent_flags, state, True))
                if self.processor._span_processors is not self._seen:
                    self.processors()
                return _new_span(self, name, kind, span_context, parent, attributes, start_time)
            if not valid:
                parent = None
        if parent is None:
            trace_id = self.trace_id()
            random_flag = self.random_ids or self.ids.is_trace_id_random()
            state = None
        else:
            trace_id = parent.trace_id
            random_flag = parent.trace_flags.random_trace_id
            state = parent.trace_state
        sampled = fast_decision(self.sampler, parent, trace_id)
        if sampled is None:
            context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
            result = self.sampler.should_sample(context, trace_id, name, kind, attributes or None, None)
            sampled = result.decision.is_sampled()
            recording = result.decision.is_recording()
            state = result.trace_state
            if recording and result.attributes:
                attributes.update(result.attributes)
        else:
            recording = sampled
        if random_flag:
            flags = _SAMPLED_RANDOM if sampled else _NOT_SAMPLED_RANDOM
        else:
            flags = _SAMPLED if sampled else _NOT_SAMPLED
        span_context = _context(trace_id, self.span_id(), flags, state)
        if not recording:
            return NonRecordingSpan(span_context)
        if self.processor._span_processors is not self._seen:
            self.processors()
        return _new_span(self, name, kind, span_context, parent, attributes, start_time)

    def _started(self, span: "Span") -> None:
        """The processors' `on_start` for a span just made (Span.__init__ or its C twin calls this)."""
        for on_start in self.starts:
            on_start(span, parent_context=None)


_PLAIN = (str, bool, int, float)


def _plain(attributes: dict[str, Any]) -> bool:
    """Every value is a str, bool, int or float, or a list/tuple of them (made tuples here, as the SDK does);
    else the SDK's own checks must run (they drop what OTLP cannot carry, with a warning).

    A plain loop: checks done in C with sets (`frozenset.issuperset(map(type, ...))`) measured more
    instructions per span under callgrind, as they build a set each time."""
    for key, value in attributes.items():
        kind = type(value)
        if kind is str or kind is int or kind is float or kind is bool:
            continue
        if kind is list or kind is tuple:
            for item in value:
                if type(item) not in _PLAIN:
                    return False
            if kind is list:
                attributes[key] = tuple(value)
            continue
        return False
    return True


class Span(ReadableSpan):
    """A recording span: the methods of `opentelemetry.trace.Span` that escalade uses, on an SDK ReadableSpan.

    It fills ReadableSpan's fields itself (ReadableSpan.__init__ would build an empty Resource first) and
    is handed to the span processors as it is when it ends: no copy, and nothing changes it after that.
    """

    # ReadableSpan has no slots. The fields every span has are slots here (gateway/_otlp_span.c reads them
    # from there); the scope, the same for all, is a class attribute: no per-span __dict__.
    __slots__ = ("_attributes", "_context", "_end_time", "_events", "_head", "_kind", "_links", "_name", "_parent",
                 "_resource", "_start_time", "_status", "_tracing")  # fmt: skip
    _instrumentation_scope = SCOPE
    _instrumentation_info = None

    def __init__(
        self,
        tracing: Tracing,
        name: str,
        kind: SpanKind,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any],
        start_time: int | None,
    ) -> None:
        self._tracing = tracing
        self._name = name
        self._kind = kind
        self._context = context
        self._parent = parent
        self._attributes: Any = attributes
        self._head = len(attributes)
        """How many attributes it started with: gateway/otlp.py encodes those as one cached block."""
        self._resource = tracing.resource
        self._start_time = start_time or _time_ns()
        self._end_time: int | None = None
        self._events: Any = ()
        self._links: Any = ()
        self._status = _UNSET
        if tracing.starts:
            tracing._started(self)

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: Any) -> None:
        if self._end_time is None:
            self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self._end_time is None:
            self._attributes.update(attributes)

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None) -> None:
        if self._end_time is not None:
            return
        tracing = self._tracing
        if not self._events:
            self._events = BoundedList(tracing.max_events)
        bounded = BoundedAttributes(tracing.max_event_attributes, attributes, True, tracing.max_length)
        self._events.append(Event(name, bounded, timestamp or _time_ns()))

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end_time is not None:
            return
        if isinstance(status, Status):
            self._status = status
        else:
            self._status = Status(status, description if status is StatusCode.ERROR else None)

    def record_exception(self, exception: BaseException, attributes: Mapping[str, Any] | None = None) -> None:
        """An `exception` event, as the OpenTelemetry conventions name it (type and message only: no traceback)."""
        event = {"exception.type": type(exception).__qualname__, "exception.message": str(exception)}
        if attributes:
            event.update(attributes)
        self.add_event("exception", event)

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def end(self, end_time: int | None = None) -> None:
        """Stamp the end; hand the span to the batcher's `take` (encoded now) when that is the way it goes, else
        to `_finish`. It changes no more after this. (With the compiled module this is its C twin.)"""
        if self._end_time is not None:
            return
        self._end_time = end_time or _time_ns()
        tracing = self._tracing
        if (
            tracing.take is not None
            and tracing.max_length is None
            and len(self._attributes) <= tracing.max_attributes
            and tracing.take(self)
        ):
            return  # encoded and queued; the encoder took only plain values (else it said no, and on we go)
        self._finish()

    def _finish(self) -> None:
        """The rest of `end`: apply the span limits and hand the span to the processors."""
        tracing = self._tracing
        attributes = self._attributes
        if tracing.max_length is not None or len(attributes) > tracing.max_attributes or not _plain(attributes):
            self._attributes = BoundedAttributes(tracing.max_attributes, attributes, True, tracing.max_length)
        for on_end in tracing.ends:
            on_end(self)


PYTHON_END = Span.end
PYTHON_TAKE = SpanBatcher.take
_new_span: Any = Span
"""Span(tracing, ...), or its C twin (the same fields, set without a Python __init__)."""
if COMPILED is not None:  # the C twins of Span(...), Span.end and SpanBatcher.take
    COMPILED.configure_spans(Span, _UNSET, Tracing, SpanBatcher, _time_ns)
    _new_span = COMPILED.new_span
    Span.end = COMPILED.end_method
    SpanBatcher.take = COMPILED.take_method


def traceparent(context: SpanContext, headers: dict[str, str]) -> None:
    """W3C `traceparent` (and a non-empty `tracestate`) of `context` into `headers`."""
    if not context.is_valid:
        return
    headers["traceparent"] = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    state = context.trace_state
    if state:
        headers["tracestate"] = state.to_header()


def _hex(text: str, length: int) -> int:
    if len(text) != length:
        raise ValueError(text)
    for ch in text:
        if ch not in "0123456789abcdef":
            raise ValueError(text)
    return int(text, 16)


def remote_parent(traceparent_value: str | None, tracestate_value: str | None) -> SpanContext | None:
    """The caller's span context from W3C `traceparent` / `tracestate` header values, None when absent or
    invalid (W3C Trace Context: version 00 has exactly four fields; a later version may add more;
    version ff, all-zero ids and upper-case hex are invalid)."""
    if not traceparent_value:
        return None
    parts = traceparent_value.strip().split("-")
    if len(parts) < 4:
        return None
    version = parts[0]
    try:
        if _hex(version, 2) == 0xFF or (version == "00" and len(parts) != 4):
            return None
        trace_id, span_id, flags = _hex(parts[1], 32), _hex(parts[2], 16), _hex(parts[3], 2)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    state = TraceState.from_header([tracestate_value]) if tracestate_value else None
    return SpanContext(trace_id, span_id, True, TraceFlags(flags), state)


NO_SPAN = INVALID_SPAN
"""For callers that want a span to call methods on when none is current: every method a no-op."""
