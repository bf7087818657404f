"""Pure pieces of telemetry: Prometheus names and text, log formatting and level precedence."""

import json
import logging

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gateway import logs
from gateway.metrics import GatewayMetrics, prometheus_name, prometheus_text
from policies.health import Outcome
from policies.schema import TelemetryConf


@pytest.mark.parametrize(
    ("name", "unit", "counter", "expected"),
    [
        ("escalade.requests", "{request}", True, "escalade_requests_total"),
        ("escalade.request.duration", "s", False, "escalade_request_duration_seconds"),
        ("escalade.cost", "USD", True, "escalade_cost_usd_total"),
        ("escalade.circuit.state", "", False, "escalade_circuit_state"),
        ("already_total", "", True, "already_total"),
        ("weird-name.x", "By", False, "weird_name_x_bytes"),
    ],
)
def test_prometheus_names_follow_the_otel_compatibility_rules(name, unit, counter, expected):
    assert prometheus_name(name, unit, counter) == expected


def test_label_values_are_escaped_and_histograms_are_cumulative():
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader], shutdown_on_exit=False).get_meter("t")
    meter.create_counter("c", description="a\nb").add(2, {"v": 'quote" back\\ nl\n'})
    h = meter.create_histogram("h", unit="s", explicit_bucket_boundaries_advisory=[0.1, 1.0])
    for v in (0.05, 0.5, 0.5, 5.0):
        h.record(v, {"k": "x"})
    text = prometheus_text(reader.get_metrics_data())
    assert "# HELP c_total a b" in text
    assert 'c_total{v="quote\\" back\\\\ nl\\n"} 2' in text
    assert 'h_seconds_bucket{k="x",le="0.1"} 1' in text
    assert 'h_seconds_bucket{k="x",le="1.0"} 3' in text
    assert 'h_seconds_bucket{k="x",le="+Inf"} 4' in text
    assert 'h_seconds_count{k="x"} 4' in text and 'h_seconds_sum{k="x"} 6.05' in text


def test_outcomes_count_attempts_tokens_and_nothing_else():
    m = GatewayMetrics()  # no state: no prices, no gauges
    m.observe(Outcome(route="r", deployment="d", ok=False, error_kind="UpstreamTimeout"))
    m.observe(Outcome(route="r", deployment="d", ok=True, input_tokens=3, output_tokens=4))
    m.observe(Outcome(route="r", deployment="d", ok=True, phase="end", output_tokens=6))
    assert m.attempts.values == {("r", "d", "UpstreamTimeout"): 1, ("r", "d", "ok"): 1}
    assert m.tokens.values == {("r", "d", "input"): 3, ("r", "d", "output"): 10}
    assert m.cost.values == {}
    assert "escalade_upstream_attempts_total" in m.render()


def test_json_lines_carry_the_fields_and_never_break_on_odd_text():
    formatter = logs.JsonFormatter()
    record = logging.LogRecord("escalade.request", logging.INFO, __file__, 1, 'say "%s"', ("hi\n",), None)
    record.fields = {"status": 200, "route": "auto", "cost_usd": None}
    line = formatter.format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["msg"] == 'say "hi\n"' and parsed["status"] == 200 and parsed["level"] == "info"
    assert parsed["logger"] == "escalade.request" and parsed["ts"].endswith("Z")
    text = logs.TextFormatter().format(record)
    assert "status=200 route=auto" in text and "cost_usd" not in text


def test_level_precedence_flag_then_policy_then_environment(monkeypatch):
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), logs._Config.handler, logs._Config.cli_level, logging._srcfile)
    try:
        monkeypatch.setenv("ESCALADE_LOG_LEVEL", "error")
        logs._Config.handler, logs._Config.cli_level = None, None
        logs.configure(TelemetryConf())
        assert root.level == logging.ERROR
        logs.configure(TelemetryConf(log_level="debug"))
        assert root.level == logging.DEBUG
        assert isinstance(logs._Config.handler.formatter, logs.JsonFormatter)
        logs.configure(TelemetryConf(log_level="debug", log_format="text"), cli_level="warning")
        assert root.level == logging.WARNING
        assert isinstance(logs._Config.handler.formatter, logs.TextFormatter)
        logs.reconfigure(TelemetryConf(log_level="info"))  # a reload keeps the command line's level
        assert root.level == logging.WARNING
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        logs._Config.handler, logs._Config.cli_level = saved[2], saved[3]
        logging._srcfile = saved[4]
        logging.logThreads = logging.logProcesses = logging.logMultiprocessing = True
