"""Gateway metrics: OpenTelemetry instruments, exposed in Prometheus text format at /metrics (admin listener).

One `GatewayMetrics` per gateway (its own MeterProvider, so two gateways in one process never mix).
Names are OpenTelemetry-style (`escalade.request.duration`, unit `s`); `/metrics` shows them with the
Prometheus names of the OpenTelemetry compatibility rules (`escalade_request_duration_seconds`).

Hot path: counters are plain-dict tallies read by observable counters at collection time (an SDK
`Counter.add` costs several microseconds a call, a dict increment a tenth of one); the two latency
histograms are SDK histograms recorded once per request with attribute dicts reused per label set.

Label values come only from the policy (route, deployment, provider names), HTTP status codes and
error class names: never from client input (an unknown route is `unknown`), never a secret.
"""

import math
import os
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, Histogram, InMemoryMetricReader, MetricsData, Sum
from opentelemetry.sdk.resources import Resource

from policies.health import Outcome
from policies.schema import Price

if TYPE_CHECKING:
    from gateway.state import GatewayState

UNKNOWN_ROUTE = "unknown"
"""The route label of requests that named no route of the policy (or could not be read)."""
NO_MODEL = "none"
"""The model label of requests no deployment answered."""

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Histogram bucket bounds for request duration and time to first token."""

CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Tally:
    """A monotonic counter kept as {label values: total}; an observable counter reports it on collection."""

    __slots__ = ("labels", "values")

    def __init__(self, *labels: str) -> None:
        self.labels = labels
        self.values: dict[tuple[str, ...], float] = {}

    def add(self, key: tuple[str, ...], amount: float = 1) -> None:
        values = self.values
        values[key] = values.get(key, 0) + amount

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        labels = self.labels
        return [Observation(v, dict(zip(labels, k, strict=True))) for k, v in list(self.values.items())]


class _Histogram:
    """An SDK histogram with one reused attribute dict per label set."""

    __slots__ = ("attrs", "instrument", "labels")

    def __init__(self, instrument: Any, *labels: str) -> None:
        self.instrument = instrument
        self.labels = labels
        self.attrs: dict[tuple[str, ...], dict[str, str]] = {}

    def record(self, key: tuple[str, ...], value: float) -> None:
        attrs = self.attrs.get(key)
        if attrs is None:
            attrs = self.attrs[key] = dict(zip(self.labels, key, strict=True))
        self.instrument.record(value, attrs)


class GatewayMetrics:
    """The gateway's instruments, and `render()` for /metrics."""

    def __init__(self, state: "GatewayState | None" = None, readers: Sequence[Any] = ()) -> None:
        self._state = state
        self._reader = InMemoryMetricReader()
        self.provider = MeterProvider(
            metric_readers=[self._reader, *readers],
            resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "escalade")}),
            exemplar_filter=AlwaysOffExemplarFilter(),
            shutdown_on_exit=False,
        )
        meter = self.provider.get_meter("escalade")
        self.backend_health: dict[str, bool] = {}
        """State backend -> healthy, as its keeper last reported (see `set_backend_health`)."""

        self.families: list[tuple[str, str, str]] = []
        """(Prometheus name, type, help) of every instrument: /metrics lists a family before its first sample."""

        def counter(name: str, unit: str, description: str, *labels: str) -> Tally:
            tally = Tally(*labels)
            meter.create_observable_counter(name, callbacks=[tally.observe], unit=unit, description=description)
            self.families.append((prometheus_name(name, unit, True), "counter", description))
            return tally

        def histogram(name: str, description: str, *labels: str) -> _Histogram:
            instrument = meter.create_histogram(
                name, unit="s", explicit_bucket_boundaries_advisory=SECONDS, description=description
            )
            self.families.append((prometheus_name(name, "s", False), "histogram", description))
            return _Histogram(instrument, *labels)

        def gauge(name: str, unit: str, description: str, callback: Any) -> None:
            meter.create_observable_gauge(name, callbacks=[callback], unit=unit, description=description)
            self.families.append((prometheus_name(name, unit, False), "gauge", description))

        self.requests = counter(
            "escalade.requests", "{request}", "Requests by route, deployment that answered and HTTP status.",
            "route", "model", "code",
        )  # fmt: skip
        self.request_errors = counter(
            "escalade.request.errors", "{request}", "Requests that ended in an error (incl. streams cut after "
            "their commit point), by error type.", "route", "error_type",
        )  # fmt: skip
        self.tokens = counter(
            "escalade.tokens", "{token}", "Tokens the upstreams reported, by direction (input or output).",
            "route", "model", "direction",
        )  # fmt: skip
        self.cost = counter(
            "escalade.cost", "USD", "What the upstream answers cost, from reported usage and the policy's prices.",
            "route", "model",
        )  # fmt: skip
        self.attempts = counter(
            "escalade.upstream.attempts", "{attempt}", "Upstream attempts by outcome (ok or the error type).",
            "route", "model", "outcome",
        )  # fmt: skip
        self.retries = counter(
            "escalade.retries", "{retry}", "Retries of a deployment after a failed attempt, by the failure.",
            "route", "model", "reason",
        )  # fmt: skip
        self.escalations = counter(
            "escalade.escalations", "{escalation}", "Cascade escalations from a rung to the next, by reason.",
            "route", "from_rung", "reason",
        )  # fmt: skip
        self.gate_decisions = counter(
            "escalade.gate.decisions", "{decision}", "Confidence gate decisions by rung (pass or fail).",
            "route", "rung", "result",
        )  # fmt: skip
        self.duration = histogram(
            "escalade.request.duration", "Request duration until the last byte (streams: until the stream ends).",
            "route", "model", "stream",
        )  # fmt: skip
        self.ttft = histogram(
            "escalade.ttft", "Streaming requests: time from the request to the commit point (first content).",
            "route", "model",
        )  # fmt: skip
        gauge("escalade.circuit.state", "", "Circuit per deployment: 0 closed, 1 half_open, 2 open.", self._circuits)
        gauge(
            "escalade.engine.queue_depth", "{request}",
            "Requests waiting in a local engine's queue (vLLM num_requests_waiting).", self._queue_depth,
        )  # fmt: skip
        gauge(
            "escalade.engine.running_requests", "{request}",
            "Requests a local engine is running (vLLM num_requests_running).", self._running,
        )  # fmt: skip
        gauge(
            "escalade.state_backend.healthy", "",
            "1 when the state backend (memory, redis) answers, 0 when it does not.", self._backend,
        )  # fmt: skip

    # ------------------------------------------------------------ recording

    def observe(self, outcome: Outcome) -> None:
        """Observer of every upstream attempt and committed stream end (GatewayState.observers)."""
        route, model = outcome.route, outcome.deployment
        if outcome.phase == "attempt":
            self.attempts.add((route, model, "ok" if outcome.ok else (outcome.error_kind or "error")))
        if outcome.input_tokens is None and outcome.output_tokens is None:
            return
        if outcome.input_tokens:
            self.tokens.add((route, model, "input"), outcome.input_tokens)
        if outcome.output_tokens:
            self.tokens.add((route, model, "output"), outcome.output_tokens)
        price = self._price(model)
        if price is not None:
            spent = (outcome.input_tokens or 0) * price.input_per_mtok
            spent += (outcome.output_tokens or 0) * price.output_per_mtok
            self.cost.add((route, model), spent / 1e6)

    def _price(self, deployment: str) -> Price | None:
        if self._state is None:
            return None
        model = self._state.runtime.policy.models.get(deployment)
        return model.price if model is not None else None

    def request_done(
        self,
        route: str,
        model: str,
        status: int,
        duration_s: float,
        stream: bool,
        error_type: str | None = None,
        ttft_s: float | None = None,
    ) -> None:
        """One client request ended (streams: when the stream ended)."""
        self.requests.add((route, model, str(status)))
        if error_type is not None:
            self.request_errors.add((route, error_type))
        self.duration.record((route, model, "true" if stream else "false"), duration_s)
        if ttft_s is not None:
            self.ttft.record((route, model), ttft_s)

    def retried(self, route: str, model: str, reason: str) -> None:
        self.retries.add((route, model, reason))

    def gate_decision(self, route: str, rung: int, passed: bool) -> None:
        self.gate_decisions.add((route, str(rung), "pass" if passed else "fail"))

    def escalation(self, route: str, from_rung: int, reason: str) -> None:
        self.escalations.add((route, str(from_rung), reason))

    def set_backend_health(self, backend: str, healthy: bool) -> None:
        self.backend_health[backend] = healthy

    # ------------------------------------------------------------ gauges (read at collection)

    def _circuits(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._state is None:
            return []
        health = self._state.health
        out = []
        for name in self._state.runtime.policy.models:
            h = health.get(name)
            out.append(Observation(CIRCUIT_VALUES.get(h.circuit, 0) if h else 0, {"model": name}))
        return out

    def _queue_depth(self, _options: CallbackOptions) -> Iterable[Observation]:
        signals = self._state.signals if self._state is not None else {}
        return [Observation(s.waiting, {"engine": n}) for n, s in signals.items() if s.waiting is not None]

    def _running(self, _options: CallbackOptions) -> Iterable[Observation]:
        signals = self._state.signals if self._state is not None else {}
        return [Observation(s.running, {"engine": n}) for n, s in signals.items() if s.running is not None]

    def _backend(self, _options: CallbackOptions) -> Iterable[Observation]:
        reported = dict(self.backend_health)
        if self._state is not None:
            backend = self._state.runtime.policy.state.backend
            if backend == "memory":
                reported.setdefault(backend, True)  # in-process: up while the process is
        return [Observation(1 if ok else 0, {"backend": name}) for name, ok in reported.items()]

    # ------------------------------------------------------------ exposition

    def collect(self) -> MetricsData | None:
        return self._reader.get_metrics_data()

    def render(self) -> str:
        """Everything in Prometheus text exposition format 0.0.4."""
        return prometheus_text(self.collect(), self.families)

    def shutdown(self) -> None:
        self.provider.shutdown()


def exporting_readers(env: dict[str, str] | None = None) -> list[Any]:
    """A periodic OTLP/HTTP metric reader when OTEL_METRICS_EXPORTER names `otlp` (interval from
    OTEL_METRIC_EXPORT_INTERVAL, endpoint and headers from OTEL_EXPORTER_OTLP_*); none otherwise."""
    env = dict(os.environ) if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return []
    if "otlp" not in [e.strip().lower() for e in env.get("OTEL_METRICS_EXPORTER", "").split(",")]:
        return []
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    return [PeriodicExportingMetricReader(OTLPMetricExporter())]


# ---------------------------------------------------------------- functions for the cascade runner


def gate_decision(metrics: GatewayMetrics | None, route: str, rung: int, passed: bool) -> None:
    """Count one confidence-gate decision (`escalade_gate_decisions_total{route,rung,result}`); None: no-op."""
    if metrics is not None:
        metrics.gate_decision(route, rung, passed)


def escalation(metrics: GatewayMetrics | None, route: str, from_rung: int, reason: str) -> None:
    """Count one escalation (`escalade_escalations_total{route,from_rung,reason}`); None: no-op.

    `reason` must come from a fixed set (the failed check's name), never free text.
    """
    if metrics is not None:
        metrics.escalation(route, from_rung, reason)


def set_backend_health(metrics: GatewayMetrics | None, backend: str, healthy: bool) -> None:
    """Report whether the state backend answers (`escalade_state_backend_healthy{backend}`); None: no-op."""
    if metrics is not None:
        metrics.set_backend_health(backend, healthy)


# ---------------------------------------------------------------- Prometheus text format

_UNIT_SUFFIX = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "USD": "usd", "1": "ratio"}
_INVALID = re.compile(r"[^a-zA-Z0-9_:]")
_INF = 'le="+Inf"'


def prometheus_name(name: str, unit: str | None, counter: bool) -> str:
    """OpenTelemetry name + unit -> Prometheus name (the OTel compatibility rules: units in braces are
    annotations and dropped; monotonic sums end in `_total`)."""
    base = _INVALID.sub("_", name)
    suffix = _UNIT_SUFFIX.get(unit or "", "") if unit and not unit.startswith("{") else ""
    if suffix and not base.endswith("_" + suffix):
        base = f"{base}_{suffix}"
    if counter and not base.endswith("_total"):
        base += "_total"
    return base


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(attributes: Any, extra: str = "") -> str:
    parts = [f'{_INVALID.sub("_", k)}="{_escape(v)}"' for k, v in (attributes or {}).items()]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def prometheus_text(data: MetricsData | None, families: Sequence[tuple[str, str, str]] = ()) -> str:
    """The collected metrics; then HELP and TYPE of each of `families` (name, type, help) that has no sample
    yet, so a dashboard sees every family from the first scrape."""
    lines: list[str] = []
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                _render_metric(metric, lines)
    shown = {line.split(" ")[2] for line in lines if line.startswith("# TYPE ")}
    for name, kind, description in families:
        if name not in shown:
            lines.append(f"# HELP {name} {description}")
            lines.append(f"# TYPE {name} {kind}")
    return "\n".join(lines) + "\n" if lines else ""


def _render_metric(metric: Any, lines: list[str]) -> None:
    data = metric.data
    counter = isinstance(data, Sum) and data.is_monotonic
    name = prometheus_name(metric.name, metric.unit, counter)
    if isinstance(data, Histogram):
        kind = "histogram"
    elif counter:
        kind = "counter"
    elif isinstance(data, Gauge | Sum):
        kind = "gauge"
    else:
        return
    lines.append(f"# HELP {name} {metric.description.replace(chr(10), ' ')}")
    lines.append(f"# TYPE {name} {kind}")
    for point in data.data_points:
        if kind != "histogram":
            lines.append(f"{name}{_labels(point.attributes)} {_num(point.value)}")
            continue
        cumulative = 0
        attributes = point.attributes
        for bound, count in zip(point.explicit_bounds, point.bucket_counts, strict=False):
            cumulative += count
            le = 'le="' + _num(float(bound)) + '"'
            lines.append(f"{name}_bucket{_labels(attributes, le)} {cumulative}")
        lines.append(f"{name}_bucket{_labels(attributes, _INF)} {point.count}")
        lines.append(f"{name}_sum{_labels(attributes)} {_num(point.sum)}")
        lines.append(f"{name}_count{_labels(attributes)} {point.count}")
