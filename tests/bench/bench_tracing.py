"""Tracing cost per request, in the gateway process, without the network or the ASGI stack.

Replays the span sequence `gateway/instrument.py` makes for one answered non-streaming request (SERVER span
with the request's attributes, the routing span, one CLIENT attempt span with the GenAI attributes, the
log line's trace id) through `gateway.telemetry`'s function API, with tracing set up as `escalade serve`
sets it up (`setup_tracing()`: SDK TracerProvider, BatchSpanProcessor, our OTLP/HTTP exporter) sending to
`otlp_sink.py` on loopback, and reports CPU time per request:

- `hot path`: the request's own thread (span creation, attributes, end, hand-over to the batch processor);
- `total`: the whole process once every span is exported (adds the exporter thread: OTLP encoding, HTTP);
- `encode`: OTLP encoding alone, µs per span (`SpanEncoder.request` on batches of 2048 finished spans).

Old vs new: the script imports `gateway` from PYTHONPATH, so point it at another checkout to compare:

    PYTHONPATH=/work/main python tests/bench/bench_tracing.py      # the build on main
    PYTHONPATH=$PWD python tests/bench/bench_tracing.py            # this checkout

It burns one core for ~10-20 s: run it under the shared CPU lock (see tests/bench/README.md).
"""

import argparse
import gc
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from opentelemetry import trace

HERE = Path(__file__).resolve().parent
HEADERS = [(b"host", b"127.0.0.1:8080"), (b"content-type", b"application/json"), (b"content-length", b"91")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sink() -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "otlp_sink.py"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "otlp sink on" not in line:
        raise RuntimeError(f"the OTLP sink did not start: {line!r}")
    return proc, port


def one_request(telemetry, n: int) -> None:
    """What instrument.py does for one answered unary request on route bench-ok (see its Instrumented,
    planned, attempt_span/AttemptScope.answered and _close)."""
    span, token = telemetry.start_server_span("POST", "/v1/chat/completions", HEADERS)
    if span.is_recording():
        start = time.time_ns()
        telemetry.routing_span("bench-ok", "priority", ["ok"], (), "3f2a9c1e", start)
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.system": "openai",
            "gen_ai.request.model": "ok",
            "escalade.route": "bench-ok",
            "escalade.deployment": "ok",
            "escalade.attempt": 1,
            "escalade.policy.version": "3f2a9c1e",
            "server.address": "127.0.0.1",
            "server.port": 9000,
        }
        attempt, attempt_token = telemetry.start_attempt_span("chat", "ok", attributes, None)
        attempt.set_attributes(
            {
                "escalade.ttft_ms": 1.234,
                "gen_ai.response.model": "ok",
                "gen_ai.usage.input_tokens": 12 + (n & 7),
                "gen_ai.usage.output_tokens": 5 + (n & 3),
                "escalade.cost_usd": 2.6e-05,
                "gen_ai.response.finish_reasons": ["stop"],
            }
        )
        attempt.end()
        telemetry.leave(attempt_token)
    telemetry.trace_id_of(span, HEADERS)
    closing = {"escalade.route": "bench-ok", "escalade.deployment": "ok", "escalade.cost_usd": 2.6e-05}
    telemetry.end_server_span(span, token, 200, closing)


def processor_of(provider):
    return provider._active_span_processor._span_processors[0]  # the BatchSpanProcessor setup_tracing added


def run(telemetry, provider, requests: int) -> tuple[float, float]:
    """(hot-path µs/request, total µs/request) for `requests` requests, all spans exported at the end."""
    gc.collect()
    if os.environ.get("BENCH_NO_GC"):
        gc.disable()
    thread0, process0 = time.thread_time(), time.process_time()
    for n in range(requests):
        one_request(telemetry, n)
    thread1 = time.thread_time()
    processor_of(provider).force_flush()
    process1 = time.process_time()
    return (thread1 - thread0) * 1e6 / requests, (process1 - process0) * 1e6 / requests


def encode_cost(telemetry, spans_per_batch: int = 2048, batches: int = 5) -> float:
    """µs per span to encode finished spans of the sequence above into an ExportTraceServiceRequest."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gateway.otlp import SpanEncoder

    provider = trace.get_tracer_provider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    n = 0
    while len(memory.get_finished_spans()) < spans_per_batch:
        one_request(telemetry, n)
        n += 1
    memory.shutdown()  # stops collecting
    spans = list(memory.get_finished_spans())[:spans_per_batch]
    encoder = SpanEncoder()
    encoder.request(spans)  # warm the caches as a long-running exporter has them
    costs = []
    for _ in range(batches):
        t0 = time.thread_time()
        encoder.request(spans)
        costs.append((time.thread_time() - t0) * 1e6 / len(spans))
    return statistics.median(costs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000, help="requests per round (default 20000)")
    ap.add_argument("--repeats", type=int, default=5, help="rounds; medians are printed (default 5)")
    ap.add_argument("--sample", type=float, default=1.0, help="fraction of requests sampled (default 1.0)")
    args = ap.parse_args()

    sink, port = start_sink()
    try:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
        os.environ["OTEL_SERVICE_NAME"] = "escalade-bench"
        # a loop makes spans far faster than a gateway does: a queue that holds a whole round keeps every
        # span (a dropped span would not be encoded, and its cost not counted)
        os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = str(4 * args.requests)
        if args.sample >= 1.0:
            os.environ["OTEL_TRACES_SAMPLER"] = "always_on"
        else:
            os.environ["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
            os.environ["OTEL_TRACES_SAMPLER_ARG"] = str(args.sample)
        from gateway import telemetry

        assert telemetry.setup_tracing(), "tracing did not switch on"
        provider = trace.get_tracer_provider()
        run(telemetry, provider, 2000)  # warm-up
        rounds = [run(telemetry, provider, args.requests) for _ in range(args.repeats)]
        hot = statistics.median(r[0] for r in rounds)
        total = statistics.median(r[1] for r in rounds)
        encode = encode_cost(telemetry)
        provider.shutdown()  # the last spans go out before the sink stops
    finally:
        sink.terminate()
        tally = sink.communicate(timeout=10)[0].strip()
    where = os.environ.get("PYTHONPATH", "") or "."
    print(f"gateway from {where}, sampled {args.sample:.0%}, {args.repeats} x {args.requests} requests (medians)")
    print("| measure | µs |")
    print("|---|---|")
    print(f"| hot path per request (request thread) | {hot:.1f} |")
    print(f"| total per request (process, spans exported) | {total:.1f} |")
    print(f"| OTLP encode per span | {encode:.2f} |")
    print(f"sink: {tally.splitlines()[-1] if tally else 'no tally'}")


if __name__ == "__main__":
    main()
