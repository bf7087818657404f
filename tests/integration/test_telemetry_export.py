"""`escalade serve` as an operator runs it, with the standard OTEL_* variables: spans arrive over OTLP/HTTP at a
receiver on loopback, /metrics answers on the admin listener, one JSON log line per request goes to stderr, and
no provider key, client key or prompt shows up in any of them, nor in an error body."""

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.support.gateway import mock_policy

REPO = Path(__file__).resolve().parents[2]
PROVIDER_KEY = "sk-provider-canary-7f3a9c1e5b"
CLIENT_KEY = "sk-client-canary-2d8e4f6a0c"
PROMPT = "prompt-canary-the-password-is-swordfish"
SPAN_KINDS = {1: "internal", 2: "server", 3: "client"}


class Receiver:
    """A tiny OTLP/HTTP trace receiver: POST /v1/traces with an ExportTraceServiceRequest (protobuf)."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.raw: list[bytes] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.paths.append(self.path)
                receiver.raw.append(body)
                protobuf = self.headers.get("content-type") == "application/x-protobuf"
                if self.path == "/v1/traces" and protobuf:
                    receiver.requests.append(ExportTraceServiceRequest.FromString(body))
                if self.path == "/v1/metrics" and protobuf:
                    receiver.metrics.append(ExportMetricsServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list:
        out = []
        for request in self.requests:
            for rs in request.resource_spans:
                service = {kv.key: kv.value.string_value for kv in rs.resource.attributes}.get("service.name")
                for ss in rs.scope_spans:
                    out += [(service, span) for span in ss.spans]
        return out

    def close(self) -> None:
        self.server.shutdown()


def attrs(span) -> dict:
    def plain(v):
        kind = v.WhichOneof("value")
        if kind == "array_value":
            return [plain(x) for x in v.array_value.values]
        return getattr(v, kind) if kind else None

    return {kv.key: plain(kv.value) for kv in span.attributes}


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def serve(tmp_path, mock, receiver, **extra_env):
    policy = mock_policy(
        mock.base_url,
        providers={"mock": {"type": "openai", "base_url": mock.base_url, "api_key_env": "ESC_TEST_PROVIDER_KEY"}},
        models={
            "primary": {"provider": "mock", "model": "PRIMARY"},
            "backup": {"provider": "mock", "model": "ok", "price": {"input_per_mtok": 1, "output_per_mtok": 2}},
            "cutter": {"provider": "mock", "model": "fault:cut?after=3"},
        },
        routes={"auto": {"models": ["primary", "backup"]}, "cut": {"models": ["cutter"]}},
        keys=[{"name": "app", "key_sha256": hashlib.sha256(CLIENT_KEY.encode()).hexdigest()}],
    )
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ESCALADE_"))}
    env.update(
        PYTHONPATH=str(REPO),
        ESC_TEST_PROVIDER_KEY=PROVIDER_KEY,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_SERVICE_NAME="escalade-under-test",
        OTEL_BSP_SCHEDULE_DELAY="100",
        **extra_env,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(path), "--listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    banner = proc.stdout.readline()
    if "serving http://" not in banner:
        proc.kill()
        raise AssertionError(f"gateway did not start: {banner} {proc.stderr.read()}")
    base = banner.split("serving ")[1].split(" ")[0]
    admin = banner.split("admin ")[1].split(";")[0].strip()
    return proc, base, admin


def stop(proc) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.stderr.read()


def test_traces_metrics_and_logs_of_a_served_gateway_carry_no_secret(tmp_path, mock, receiver):
    mock.script("PRIMARY", ["fault:status?code=503"])
    proc, base, admin = serve(tmp_path, mock, receiver, OTEL_METRICS_EXPORTER="otlp", OTEL_METRIC_EXPORT_INTERVAL="200")
    bodies = []
    try:
        auth = {"authorization": f"Bearer {CLIENT_KEY}"}
        chat = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}]}
        ok = httpx.post(f"{base}/chat/completions", json=chat, headers=auth, timeout=20)
        assert ok.status_code == 200
        with httpx.stream("POST", f"{base}/chat/completions", json={**chat, "model": "cut", "stream": True},
                          headers=auth, timeout=20) as cut:  # fmt: skip
            bodies.append("".join(cut.iter_text()))
        wrong_key = httpx.post(
            f"{base}/chat/completions", json=chat, headers={"authorization": f"Bearer {CLIENT_KEY}x"}, timeout=20
        )
        unknown = httpx.post(f"{base}/chat/completions", json={**chat, "model": "nope"}, headers=auth, timeout=20)
        assert (wrong_key.status_code, unknown.status_code) == (401, 404)
        bodies += [ok.text, wrong_key.text, unknown.text]
        metrics = httpx.get(f"{admin}/metrics", timeout=10).text
        deadline = time.monotonic() + 15
        while len({s.trace_id for _, s in receiver.spans()}) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        logs = stop(proc)

    # traces: one per request, each with its SERVER span; the answered one with routing and GenAI client spans
    spans = receiver.spans()
    assert set(receiver.paths) == {"/v1/traces", "/v1/metrics"}
    assert {service for service, _ in spans} == {"escalade-under-test"}
    traces: dict[bytes, list] = {}
    for _, span in spans:
        traces.setdefault(span.trace_id, []).append(span)
    assert len(traces) == 4
    [answered] = [t for t in traces.values() if any(attrs(s).get("escalade.deployment") == "backup" for s in t)]
    kinds = sorted(SPAN_KINDS[s.kind] for s in answered)
    assert kinds == ["client", "client", "client", "internal", "server"]
    server = next(s for s in answered if s.kind == 2)
    clients = [s for s in answered if s.kind == 3]
    assert all(s.parent_span_id == server.span_id for s in answered if s is not server)
    ok_span = next(s for s in clients if attrs(s).get("escalade.deployment") == "backup")
    a = attrs(ok_span)
    assert ok_span.name == "chat ok"
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai" == a["gen_ai.system"]
    assert a["gen_ai.request.model"] == "ok" and a["gen_ai.usage.output_tokens"] > 0
    assert a["gen_ai.response.finish_reasons"] == ["stop"] and a["escalade.cost_usd"] > 0
    assert any(e.name == "escalade.backoff" for e in server.events)

    # metrics, scraped from the running gateway
    assert 'escalade_requests_total{route="auto",model="backup",code="200"} 1' in metrics
    assert 'escalade_requests_total{route="unknown",model="none",code="401"} 1' in metrics
    assert 'escalade_upstream_attempts_total{route="auto",model="primary",outcome="UpstreamUnavailable"} 2' in metrics

    # the same metrics pushed over OTLP/HTTP (OTEL_METRICS_EXPORTER=otlp), under their OpenTelemetry names
    pushed = {m.name for r in receiver.metrics for rm in r.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {"escalade.requests", "escalade.request.duration", "escalade.upstream.attempts"} <= pushed

    # logs: one JSON line per request, with ids, route, deployment, status, timings, tokens, cost
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["logger"] == "escalade.request"]
    assert len(requests) == 4
    first = next(r for r in requests if r["deployment"] == "backup")
    assert first["status"] == 200 and first["route"] == "auto" and first["attempts"] == 3
    assert first["request_id"] == ok.headers["x-request-id"]
    assert first["trace_id"] == server.trace_id.hex()
    assert first["input_tokens"] > 0 and first["output_tokens"] > 0 and first["cost_usd"] > 0
    assert first["duration_ms"] > 0 and first["level"] == "info" and first["ts"].endswith("Z")
    assert {r["status"] for r in requests} == {200, 401, 404}

    telemetry = [b"".join(receiver.raw).decode("latin-1"), metrics, logs]
    errors = [bodies[0], wrong_key.text, unknown.text]  # the cut stream's in-band error, 401, 404
    for secret in (PROVIDER_KEY, CLIENT_KEY):
        assert not [text for text in [*telemetry, *bodies] if secret in text], secret
    for text in (PROMPT, "swordfish"):  # the answer itself may quote the prompt (the mock echoes it)
        assert not [t for t in [*telemetry, *errors] if text in t], text


def test_log_level_and_format_come_from_the_environment_and_the_policy(tmp_path, mock, receiver):
    proc, base, _ = serve(tmp_path, mock, receiver, ESCALADE_LOG_LEVEL="warning")
    try:
        httpx.post(f"{base}/chat/completions", json={"model": "nope", "messages": []}, timeout=10)
    finally:
        logs = stop(proc)
    assert "escalade.request" not in logs  # info lines are below the level

    policy_path = tmp_path / "policy.yaml"
    proc, base, admin = serve(tmp_path, mock, receiver)
    try:
        before = httpx.get(f"{admin}/admin/policy", timeout=10).json()["version"]
        policy = yaml.safe_load(policy_path.read_text())
        policy["telemetry"] = {"log_format": "text", "log_level": "info"}
        policy_path.write_text(yaml.safe_dump(policy))
        deadline = time.monotonic() + 15
        while httpx.get(f"{admin}/admin/policy", timeout=10).json()["version"] == before:  # hot reload
            assert time.monotonic() < deadline, "the policy was not reloaded"
            time.sleep(0.1)
        assert httpx.post(f"{base}/chat/completions", json={"model": "nope", "messages": []}).status_code == 401
    finally:
        logs = stop(proc)
    text_lines = [line for line in logs.splitlines() if " INFO escalade.request: request " in line]
    assert text_lines and "status=401" in text_lines[-1] and "route=unknown" in text_lines[-1]


def test_no_span_object_is_created_while_tracing_is_off(tmp_path, mock):
    """Tracing off (no OTEL_* variables): not one span object, not even the API's no-op ones."""
    script = textwrap.dedent(
        f"""
        import httpx, yaml
        from opentelemetry import trace
        from opentelemetry.sdk import trace as sdk_trace
        from gateway import spans
        from tests.support.gateway import GatewayThread, mock_policy, write_policy
        from pathlib import Path
        made = []
        for cls in (trace.NonRecordingSpan, sdk_trace._Span, spans.Span):
            original = cls.__init__
            def counting(self, *a, __original=original, **k):
                made.append(type(self).__name__)
                __original(self, *a, **k)
            cls.__init__ = counting
        policy = mock_policy({mock.base_url!r}, models={{"m": {{"provider": "mock", "model": "ok"}}}},
                             routes={{"auto": {{"models": ["m"]}}}})
        gw = GatewayThread(write_policy(Path({str(tmp_path)!r}) / "p.yaml", policy)).start()
        try:
            body = {{"model": "auto", "messages": [{{"role": "user", "content": "hi"}}]}}
            assert httpx.post(gw.base_url + "/chat/completions", json=body, timeout=10).status_code == 200
            with httpx.stream("POST", gw.base_url + "/chat/completions", json={{**body, "stream": True}}) as r:
                assert "[DONE]" in "".join(r.iter_text())
            assert httpx.post(gw.base_url + "/chat/completions", json={{**body, "model": "x"}}).status_code == 404
        finally:
            gw.stop()
        print("spans made:", len(made))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "spans made: 0" in out.stdout
