"""The batch span processor `escalade serve` installs: the SDK BatchSpanProcessor's job at less cost per span.

The SDK's processor does per span a shutdown check, a `getpid()` system call (fork detection), a queue-full
check with a log line, and a method call on a threading.Event; at thousands of spans a second on the core
that serves the requests that adds up (about 1.5 µs a span here). This one appends to a deque and wakes the
export thread only when a batch is full; fork detection is `os.register_at_fork`. The exporter is any SDK
`SpanExporter` (our OTLP/HTTP one, the console one), called from one background thread with batches.

An exporter that can encode a span the moment it ends (gateway/otlp.py's, with the compiled encoder) gets
them that way: `Span.end` hands the span to `take`, which queues its bytes. The queue then holds bytes, not
span objects with their attribute dicts, so the span is freed at once, while its memory is still in cache,
and the cyclic garbage collector has nothing to walk while the span waits for export (queued spans used to
outlive young collections and grow the old generation, which brought on full collections).

Settings are the SDK's: OTEL_BSP_SCHEDULE_DELAY (ms between exports), OTEL_BSP_MAX_QUEUE_SIZE (spans held;
beyond it new spans are dropped and counted), OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_EXPORT_TIMEOUT
(the flush at shutdown waits at most this long).
"""

import collections
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any, Protocol, cast

from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("escalade.spans")


def _env_number(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(float(text))
    except ValueError:
        log.warning("%s=%r is not a number; using %d", name, text, default)
        return default
    if value <= 0:
        log.warning("%s=%r must be positive; using %d", name, text, default)
        return default
    return value


class EncodingExporter(Protocol):
    """An exporter that also takes spans encoded when they end (gateway/otlp.py's FastOTLPSpanExporter)."""

    encode_ended: Any
    """`(span) -> bytes | None`: the span's encoded bytes, or None for a span it cannot encode that way (it is
    then queued as it is); None instead of a function when it cannot do it at all."""

    def export_ended(self, items: list[Any], home: tuple[Any, Any] | None) -> Any:
        """Export a batch whose items are bytes (spans of the `home` resource and scope), (resource, scope,
        bytes) tuples (spans of others) or ReadableSpans (those `encode_ended` did not take)."""


class SpanBatcher(SpanProcessor):
    """Sampled finished spans -> a bounded queue -> `exporter.export(batch)` from one background thread."""

    # slots: the compiled `take` (gateway/_otlp_span.c, installed by gateway/spans.py) reads them directly
    __slots__ = ("_export_lock", "_home", "_home_lock", "_queue", "_stopped", "_thread", "_wake", "batch_size",
                 "delay_s", "dropped", "encode", "exporter", "max_queue_size", "timeout_s")  # fmt: skip

    def __init__(
        self,
        exporter: SpanExporter,
        max_queue_size: int = 2048,
        schedule_delay_ms: int = 5000,
        max_export_batch_size: int = 512,
        export_timeout_ms: int = 30000,
    ) -> None:
        self.exporter = exporter
        self.max_queue_size = max_queue_size
        self.batch_size = min(max_export_batch_size, max_queue_size)
        self.delay_s = schedule_delay_ms / 1000
        self.timeout_s = export_timeout_ms / 1000
        self.dropped = 0
        """Spans dropped because the queue was full."""
        self._queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._export_lock = threading.Lock()
        self._stopped = False
        self.encode = getattr(exporter, "encode_ended", None)
        """The exporter's encoder for spans as they end (see `take`), or None: it takes ReadableSpans only."""
        self._home: tuple[Any, Any] | None = None
        """The (resource, instrumentation scope) of the first span `take` queued: spans of it are queued as
        their bytes alone (a tracer provider has one resource; escalade's spans one scope)."""
        self._home_lock = threading.Lock()
        self._thread = self._start_thread()
        os.register_at_fork(after_in_child=self._after_fork)

    @classmethod
    def from_env(cls, exporter: SpanExporter, env: Mapping[str, str] | None = None, **defaults: int) -> "SpanBatcher":
        """The OTEL_BSP_* settings, with `defaults` (max_queue_size=..., ...) where a variable is not set."""
        env = os.environ if env is None else env
        return cls(
            exporter,
            max_queue_size=_env_number(env, "OTEL_BSP_MAX_QUEUE_SIZE", defaults.get("max_queue_size", 2048)),
            schedule_delay_ms=_env_number(env, "OTEL_BSP_SCHEDULE_DELAY", defaults.get("schedule_delay_ms", 5000)),
            max_export_batch_size=_env_number(
                env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", defaults.get("max_export_batch_size", 512)
            ),
            export_timeout_ms=_env_number(env, "OTEL_BSP_EXPORT_TIMEOUT", defaults.get("export_timeout_ms", 30000)),
        )

    def _start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="escalade-span-export", daemon=True)
        thread.start()
        return thread

    def _after_fork(self) -> None:
        """A forked child has the queue but no export thread: start over with an empty queue and a thread."""
        self._queue = collections.deque()
        self._wake = threading.Event()
        self._export_lock = threading.Lock()
        self._home_lock = threading.Lock()
        if not self._stopped:
            self._thread = self._start_thread()

    def on_end(self, span: ReadableSpan) -> None:
        if self._stopped or not span._context[3] & 1:  # SpanContext is a tuple: [3] is trace_flags; 1 SAMPLED
            return
        queue = self._queue
        if len(queue) >= self.max_queue_size:
            self._drop()
            return
        queue.append(span)
        if len(queue) == self.batch_size:
            self._wake.set()

    def take(self, span: ReadableSpan) -> bool:
        """`on_end` for a span that ends now, encoded here, on the caller's thread (only when `encode` is set).
        False when the exporter cannot encode it so: the caller then checks its attributes and calls `on_end`.

        With the compiled module, gateway/spans.py replaces this with its C twin (the same steps)."""
        if self._stopped or not span._context[3] & 1:
            return True
        data = self.encode(span)  # type: ignore[misc]
        if data is None:
            return False
        queue = self._queue
        if len(queue) >= self.max_queue_size:
            self._drop()
            return True
        home = self._home
        if home is None or span._resource is not home[0] or span._instrumentation_scope is not home[1]:
            data = self._other_group(span, data)
        queue.append(data)
        if len(queue) == self.batch_size:
            self._wake.set()
        return True

    def _other_group(self, span: ReadableSpan, data: bytes) -> bytes | tuple[Any, Any, bytes]:
        """`data` as queued: bytes alone for the home group (made this span's group if there is none yet),
        else with the span's resource and scope."""
        with self._home_lock:
            if self._home is None:
                self._home = (span._resource, span._instrumentation_scope)
                return data
        return (span._resource, span._instrumentation_scope, data)

    def _drop(self) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 10000 == 0:
            log.warning("span queue full (%d): %d spans dropped so far", self.max_queue_size, self.dropped)

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self.delay_s)
            self._wake.clear()
            if self._stopped:
                break
            self._export(everything=False)

    def _export(self, everything: bool) -> None:
        """Export what is queued in batches: full batches only, or (`everything`) down to the last span."""
        with self._export_lock:
            token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))  # the exporter's HTTP is not traced
            try:
                queue = self._queue
                first = True
                while queue and (everything or first or len(queue) >= self.batch_size):
                    first = False
                    batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
                    try:
                        if self.encode is not None:
                            cast(EncodingExporter, self.exporter).export_ended(batch, self._home)
                        else:
                            self.exporter.export(batch)
                    except Exception:
                        log.exception("exporting %d spans failed", len(batch))
            finally:
                detach(token)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self._stopped:
            return False
        self._export(everything=True)
        return True

    def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._wake.set()
        self._thread.join(self.timeout_s)
        self._export(everything=True)
        self.exporter.shutdown()
