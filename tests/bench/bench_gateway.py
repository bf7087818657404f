#!/usr/bin/env python3
"""Gateway overhead benchmark: escalade vs the mock upstream it fronts, on this machine.

Starts the mock upstream (tests.mock_upstream) and the gateway as subprocesses, the gateway pinned
to one core (--gateway-core, default 0) and the mock plus every load generator (wrk, the open-loop
client in this script, py-spy) to another (--load-core, default 1). Then, for each --servers entry:

  1. closed-loop throughput, non-streaming, concurrency 32: direct to the mock vs via escalade (wrk)
  2. the same with streaming requests (each reads the whole SSE stream; mock scenario ok?tokens=20)
  3. open-loop latency at a fixed rate: non-streaming at --rate (100/s), added = via - direct at the
     same percentile; streaming time to first content event at --stream-rate (30/s) on the paced
     scenario (first chunk after 20 ms, then 20 chunks 5 ms apart)
  4. the gateway's RSS (max over the run) and its CPU per request

Each point is --repeats short runs, direct and via interleaved; the table quotes medians. Every run
records per-core load: CPU on the gateway's core that is not the gateway's ("foreign") spoils a run,
which is then repeated (up to --retries times) and flagged if it stays spoiled.

    python tests/bench/bench_gateway.py --quick                       # ~1 min
    python tests/bench/bench_gateway.py --servers uvicorn,granian     # ~2 x 3 min
    python tests/bench/bench_gateway.py --only throughput --profile 15 # + py-spy top frames
    python tests/bench/bench_gateway.py --repo /tmp/scratch --gateway-env ESCALADE_LOG_LEVEL=warning

Load stays on 127.0.0.1; every run is bounded in time; every process started is stopped at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CLK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

UNARY_BODY = {"messages": [{"role": "user", "content": "Say hello in one short sentence."}], "max_tokens": 64}
STREAM_BODY = {**UNARY_BODY, "stream": True}
# route name on the gateway (tests/bench/policy.yaml) -> the mock scenario it forwards as `model`
SCENARIOS = {
    "unary": ("bench-ok", "ok"),
    "stream": ("bench-stream", "ok?tokens=20"),
    "paced": ("bench-paced", "ok?tokens=20&first_delay=0.02&delay=0.005"),
}

# --------------------------------------------------------------------------- processes

_STARTED: list[subprocess.Popen[bytes]] = []


def start(cmd: list[str], *, env: dict[str, str] | None = None, log: Path) -> subprocess.Popen[bytes]:
    """A child in its own session (so it and its own children stop together), output to `log`."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    _STARTED.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)  # the group this script created for this child
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
    if proc in _STARTED:
        _STARTED.remove(proc)


def stop_all() -> None:
    for proc in list(reversed(_STARTED)):
        stop(proc, timeout=5.0)


atexit.register(stop_all)


def _on_signal(signum: int, _frame: Any) -> None:
    stop_all()
    sys.exit(128 + signum)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited ({proc.returncode}); log:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s; log:\n{log.read_text()[-3000:]}")


# --------------------------------------------------------------------------- /proc accounting


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def cpu_s(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (all threads)
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK


def rss_kib(pids: list[int], key: str = "VmRSS") -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def core_jiffies() -> dict[int, tuple[int, int]]:
    """core -> (busy, total) jiffies; busy counts user, nice, system, irq, softirq, steal."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+) (.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                total = sum(v[:8])
                busy = total - v[3] - v[4]  # minus idle, iowait
                out[int(m.group(1))] = (busy, total)
    return out


def self_and_children_cpu() -> float:
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class Meter:
    """CPU use during one run: per core, the gateway's, the load side's, and what is nobody's."""

    def __init__(self, bench: Bench) -> None:
        self.b = bench
        self.t = time.monotonic()
        self.cores = core_jiffies()
        self.gw = cpu_s(bench.gateway_pids())
        self.all_gw = cpu_s(bench.all_gateway_pids())
        self.mock = cpu_s(bench.mock_pids())
        self.me = self_and_children_cpu()

    def stop(self) -> dict[str, float]:
        b, wall = self.b, time.monotonic() - self.t
        cores = core_jiffies()
        busy = {c: (cores[c][0] - self.cores[c][0]) / max(1, cores[c][1] - self.cores[c][1]) for c in cores}
        gw = (cpu_s(b.gateway_pids()) - self.gw) / wall
        all_gw = (cpu_s(b.all_gateway_pids()) - self.all_gw) / wall
        load = (cpu_s(b.mock_pids()) - self.mock + self_and_children_cpu() - self.me) / wall
        return {
            "wall_s": round(wall, 3),
            "gateway_cpu": round(gw, 3),
            "load_cpu": round(load, 3),
            "core_busy": {str(c): round(v, 3) for c, v in busy.items()},
            # CPU on the gateway's core that is not the gateway's (other tenants of this machine)
            "foreign_gateway_core": round(max(0.0, busy.get(b.args.gateway_core, 0) - all_gw), 3),
            "foreign_load_core": round(max(0.0, busy.get(b.args.load_core, 0) - load), 3),
        }


SPIN = """
import os, sys
os.sched_setaffinity(0, {int(sys.argv[1])})
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
while True:
    pass
"""


def start_spinners(cores: list[int]) -> list[subprocess.Popen[bytes]]:
    """--warm-cores: a busy loop at SCHED_IDLE priority on each core, so no core halts between requests. Any
    runnable task preempts it at once; what it removes is the cost of waking a halted vCPU (see --help)."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN, str(core)]) for core in cores]
    _STARTED.extend(procs)
    return procs


class RssSampler(threading.Thread):
    def __init__(self, pids: Callable[[], list[int]], every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pids, self.every, self.max_kib, self._halt = pids, every, 0, threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            self.max_kib = max(self.max_kib, rss_kib(self.pids()))

    def halt(self) -> int:
        self._halt.set()
        self.join(2)
        return self.max_kib


# --------------------------------------------------------------------------- wrk (closed loop)


def run_wrk(url: str, body: bytes, conc: int, duration: float) -> dict[str, Any]:
    env = {**os.environ, "WRK_BODY": body.decode()}
    cmd = [
        "wrk",
        "-t1",
        f"-c{conc}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(HERE / "wrk_post.lua"),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration + 60, check=False)
    m = re.search(r"^WRKJSON (.*)$", out.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = sum(r[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
    return r


# --------------------------------------------------------------------------- asyncio HTTP/1.1 client

_CONTENT = re.compile(rb'"content":"[^"]')  # an SSE chunk whose delta carries text (not the role chunk)


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time; records time to headers / first body byte /
    first content event / end."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionError("connection closed"))

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.t_headers = time.perf_counter()

    def on_body(self, body: bytes) -> None:
        if self.t_body is None:
            self.t_body = time.perf_counter()
        if self.want_content and self.t_content is None:
            self.buf += body
            if _CONTENT.search(self.buf):
                self.t_content = time.perf_counter()
                self.buf = b""

    def on_message_complete(self) -> None:
        self.t_end = time.perf_counter()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def request(self, data: bytes, want_content: bool) -> asyncio.Future[None]:
        self.status, self.t_headers, self.t_body, self.t_content, self.t_end = 0, None, None, None, None
        self.want_content, self.buf = want_content, b""
        self.waiter = asyncio.get_running_loop().create_future()
        self.t_send = time.perf_counter()
        assert self.transport is not None
        self.transport.write(data)
        return self.waiter


def http_request(port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _connect(port: int) -> _Conn:
    _, conn = await asyncio.get_running_loop().create_connection(_Conn, "127.0.0.1", port)
    return conn


async def open_loop(port: int, path: str, body: bytes, rate: float, duration: float, *, stream: bool) -> dict[str, Any]:
    """Send at a fixed rate whatever the answers do (never waits for a free connection: opens one)."""
    data = http_request(port, path, body)
    idle: list[_Conn] = [await _connect(port) for _ in range(4)]
    lat, ttfb, ttft, late, errors = [], [], [], [], Counter()
    n = int(rate * duration)

    async def one(t_sched: float) -> None:
        conn = idle.pop() if idle else await _connect(port)
        try:
            await asyncio.wait_for(conn.request(data, stream), 30)
        except Exception as exc:
            errors[type(exc).__name__] += 1
            if conn.transport:
                conn.transport.close()
            return
        late.append(conn.t_send - t_sched)
        if conn.status != 200:
            errors[f"http_{conn.status}"] += 1
        else:
            lat.append(conn.t_end - conn.t_send)
            if conn.t_body is not None:
                ttfb.append(conn.t_body - conn.t_send)
            if stream and conn.t_content is not None:
                ttft.append(conn.t_content - conn.t_send)
        if not conn.closed:
            idle.append(conn)

    tasks = []
    t0 = time.perf_counter() + 0.02
    for i in range(n):
        t = t0 + i / rate
        delay = t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(t)))
    await asyncio.gather(*tasks)
    for c in idle:
        if c.transport:
            c.transport.close()
    res: dict[str, Any] = {"sent": n, "ok": len(lat), "errors": dict(errors), "rate": rate}
    res["latency_ms"] = pct(lat)
    res["ttfb_ms"] = pct(ttfb)
    if stream:
        res["ttft_ms"] = pct(ttft)
    res["sched_late_ms"] = pct(late)
    return res


async def closed_loop(port: int, path: str, body: bytes, conc: int, duration: float) -> dict[str, Any]:
    """The fallback when wrk is missing: `conc` workers, each one request at a time on its own connection."""
    data = http_request(port, path, body)
    done, errors, lat = 0, 0, []
    end = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal done, errors
        conn = await _connect(port)
        while time.perf_counter() < end:
            try:
                await conn.request(data, False)
            except Exception:
                errors += 1
                conn = await _connect(port)
                continue
            done += 1
            lat.append(conn.t_end - conn.t_send)
            errors += conn.status != 200
        if conn.transport:
            conn.transport.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    wall = time.perf_counter() - t0
    p = pct(lat)
    return {
        "requests": done,
        "rps": done / wall,
        "errors": errors,
        "p50_us": p.get("p50", 0) * 1e3,
        "p99_us": p.get("p99", 0) * 1e3,
    }


def pct(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds (nearest-rank)."""
    if not values:
        return {}
    v = sorted(values)

    def at(q: float) -> float:
        return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))] * 1e3

    return {"n": len(v), "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": v[-1] * 1e3}


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------- the benchmark


class Gateway:
    """One gateway under test: a server (uvicorn/granian, launcher options) and the checkout it serves."""

    def __init__(self, spec: str) -> None:
        m = _TRACING.search(spec)
        self.tracing = m is not None
        self.sample = float(m.group(1)) if m and m.group(1) else 1.0
        self.spec = spec[: m.start()] if m else spec
        self.label = label_of(spec)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.sampler: RssSampler | None = None
        self.rss_start_kib = 0

    def pids(self) -> list[int]:
        return tree(self.proc.pid) if self.proc is not None and self.proc.poll() is None else []


class Bench:
    """The mock, every gateway of --servers (all started at once, all pinned to the gateway core, idle
    unless driven), and the runs: each round drives the mock directly, then each gateway in turn, so
    slow drift on a shared machine hits every target alike."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.mock: subprocess.Popen[bytes] | None = None
        self.mock_port = free_port()
        self.gateways: list[Gateway] = []
        self.driven: Gateway | None = None
        self.loop = asyncio.new_event_loop()
        self.use_wrk = shutil.which("wrk") is not None and not args.no_wrk
        self.sink: subprocess.Popen[bytes] | None = None
        self.sink_port = 0
        self.sink_log = workdir / "otlp-sink.log"

    def gateway_pids(self) -> list[int]:
        """The gateway being driven (none while the mock is driven directly)."""
        return self.driven.pids() if self.driven is not None else []

    def all_gateway_pids(self) -> list[int]:
        return [p for g in self.gateways for p in g.pids()]

    def mock_pids(self) -> list[int]:
        """The load side's servers on the load core: the mock, and the OTLP sink when one runs."""
        pids = tree(self.mock.pid) if self.mock and self.mock.poll() is None else []
        if self.sink is not None and self.sink.poll() is None:
            pids += tree(self.sink.pid)
        return pids

    def taskset(self, core: int) -> list[str]:
        return ["taskset", "-c", str(core)] if shutil.which("taskset") else []

    # ---- processes
    def start_mock(self) -> None:
        log_path = self.workdir / "mock.log"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        cmd = [
            *self.taskset(self.args.load_core),
            sys.executable,
            "-m",
            "tests.mock_upstream",
            "--port",
            str(self.mock_port),
            "--no-log",
        ]
        self.mock = start(cmd, env=env, log=log_path)
        wait_http(f"http://127.0.0.1:{self.mock_port}/v1/models", self.mock, 20, log_path)

    def start_gateway(self, gw: Gateway) -> None:
        policy_text = (HERE / "policy.yaml").read_text().replace("127.0.0.1:9100/", f"127.0.0.1:{self.mock_port}/")
        policy = self.workdir / "policy.yaml"
        policy.write_text(policy_text)
        gw.port = free_port()
        listen = f"127.0.0.1:{gw.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(kv.split("=", 1) for kv in self.args.gateway_env)
        if gw.tracing:  # every request sampled, batch-exported over OTLP/HTTP to the sink on the load core
            env.update(
                OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{self.start_sink()}",
                OTEL_SERVICE_NAME="escalade-bench",
            )
            if gw.sample >= 1:
                env["OTEL_TRACES_SAMPLER"] = "always_on"
            else:
                env.update(OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG=str(gw.sample))
        spec, _, other_repo = gw.spec.partition("@")
        repo = str(Path(other_repo or self.args.repo).resolve())
        env["PYTHONPATH"] = repo
        name, _, extra = spec.partition(":")
        if name == "uvicorn":
            launcher = [sys.executable, str(HERE / "serve_uvicorn.py"), *extra.split()]
        elif name == "granian":
            launcher = [sys.executable, str(HERE / "serve_granian.py"), *extra.split()]
        else:
            raise SystemExit(f"unknown server {gw.spec!r} (uvicorn, granian, or 'granian:--task-impl rust')")
        log_path = self.workdir / f"gateway-{slug(gw.label)}.log"
        cmd = [
            *self.taskset(self.args.gateway_core),
            *launcher,
            "--repo",
            repo,
            "--policy",
            str(policy),
            "--listen",
            listen,
        ]
        gw.proc = start(cmd, env=env, log=log_path)
        wait_http(f"http://{listen}/readyz", gw.proc, 30, log_path)
        gw.rss_start_kib = rss_kib(gw.pids())
        gw.sampler = RssSampler(gw.pids)
        gw.sampler.start()

    def start_sink(self) -> int:
        """The loopback OTLP receiver for `+tracing` gateways (started once, on the load core)."""
        if self.sink is None:
            self.sink_port = free_port()
            self.sink_log = self.workdir / "otlp-sink.log"
            cmd = [
                *self.taskset(self.args.load_core),
                sys.executable,
                str(HERE / "otlp_sink.py"),
                "--port",
                str(self.sink_port),
            ]
            self.sink = start(cmd, log=self.sink_log)
            deadline = time.monotonic() + 20
            while "otlp sink on" not in self.sink_log.read_text():
                if self.sink.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"otlp sink did not start: {self.sink_log.read_text()}")
                time.sleep(0.05)
        return self.sink_port

    def stop_sink(self) -> str:
        """Stop the sink; its tally of export requests and bytes (empty when none ran)."""
        if self.sink is None:
            return ""
        stop(self.sink)
        self.sink = None
        m = re.search(r"OTLPSINK (.*)", self.sink_log.read_text())
        return m.group(1) if m else "no tally"

    def stop_gateways(self) -> None:
        for gw in self.gateways:
            if gw.proc is not None:
                stop(gw.proc)
                gw.proc = None

    # ---- one run
    def target(self, gw: Gateway | None, kind: str) -> tuple[int, bytes]:
        route, scenario = SCENARIOS[kind]
        body = dict(STREAM_BODY if kind in ("stream", "paced") else UNARY_BODY, model=route if gw else scenario)
        return (gw.port if gw else self.mock_port), json.dumps(body, separators=(",", ":")).encode()

    def throughput_once(self, gw: Gateway | None, kind: str, duration: float) -> dict[str, Any]:
        port, body = self.target(gw, kind)
        self.driven = gw
        meter = Meter(self)
        if self.use_wrk:
            r = run_wrk(f"http://127.0.0.1:{port}/v1/chat/completions", body, self.args.concurrency, duration)
        else:
            r = self.loop.run_until_complete(
                closed_loop(port, "/v1/chat/completions", body, self.args.concurrency, duration)
            )
        r["cpu"] = meter.stop()
        if gw and r["rps"] > 0:
            r["gateway_cpu_us_per_req"] = r["cpu"]["gateway_cpu"] * 1e6 / r["rps"]
        return r

    def latency_once(self, gw: Gateway | None, kind: str, rate: float, duration: float) -> dict[str, Any]:
        port, body = self.target(gw, kind)
        stream = kind != "unary"
        self.driven = gw
        # a short warm-up at the same rate (connections, caches), not recorded
        self.loop.run_until_complete(
            open_loop(port, "/v1/chat/completions", body, rate, min(1.0, duration), stream=stream)
        )
        meter = Meter(self)
        r = self.loop.run_until_complete(open_loop(port, "/v1/chat/completions", body, rate, duration, stream=stream))
        r["cpu"] = meter.stop()
        return r

    def clean(self, r: dict[str, Any], via: bool) -> bool:
        """No foreign load on the load core; for runs through a gateway, none on its core either."""
        cpu = r["cpu"]
        worst = max(cpu["foreign_load_core"], cpu["foreign_gateway_core"] if via else 0.0)
        return worst <= self.args.max_foreign

    def wait_quiet(self) -> None:
        """Before a run: wait (up to --wait-quiet s) until neither core is busy with other tenants' work."""
        limit = time.monotonic() + self.args.wait_quiet
        waited = False
        while True:
            self.driven = None
            meter = Meter(self)
            time.sleep(0.5)
            cpu = meter.stop()
            busy = cpu["core_busy"]
            ours = cpu["load_cpu"] + cpu["gateway_cpu"]
            foreign = max(busy.get(str(self.args.gateway_core), 0), busy.get(str(self.args.load_core), 0) - ours)
            if foreign <= self.args.max_foreign or time.monotonic() >= limit:
                if waited:
                    log(f"    (waited for a quiet machine; foreign load now {foreign:.0%})")
                return
            if not waited:
                log(f"    machine busy (foreign load {foreign:.0%}): waiting up to {self.args.wait_quiet:g}s")
                waited = True
            time.sleep(2)

    def rounds(
        self, label: str, n: int, fn: Callable[[Gateway | None], dict[str, Any]], check_load: bool = True
    ) -> dict[str, list[dict[str, Any]]]:
        """`n` rounds of (direct, each gateway), the gateways' order rotated from round to round (a run right
        after direct's was seen to fare differently); a run with foreign load is redone up to --retries times."""
        runs: dict[str, list[dict[str, Any]]] = {"direct": [], **{g.label: [] for g in self.gateways}}
        for i in range(n):
            k = i % len(self.gateways) if self.gateways else 0  # each gateway takes each place after direct in turn
            for gw in (None, *self.gateways[k:], *self.gateways[:k]):
                name = gw.label if gw else "direct"
                for attempt in range(self.args.retries + 1):
                    if check_load:  # (not with --warm-cores: the spinners keep every core busy)
                        self.wait_quiet()
                    r = fn(gw)
                    r["spoiled"] = check_load and not self.clean(r, gw is not None)
                    if not r["spoiled"]:
                        break
                    log("    " + describe(label, name, r) + f"  SPOILED, redo ({attempt + 1}/{self.args.retries})")
                runs[name].append(r)
                log("    " + describe(label, name, r))
        self.driven = None
        return runs

    def run(self, specs: list[str]) -> list[dict[str, Any]]:
        a = self.args
        self.gateways = [Gateway(s) for s in specs]
        if len({g.label for g in self.gateways}) != len(self.gateways):
            raise SystemExit("--servers: two entries with the same label")
        for gw in self.gateways:
            log(f"== starting {gw.label} on core {a.gateway_core}")
            self.start_gateway(gw)
        out = {g.label: {"server": g.label, "spec": g.spec} for g in self.gateways}
        for kind in ("unary", "stream"):  # warm every target (connection pools, code paths)
            for gw in (None, *self.gateways):
                self.throughput_once(gw, kind, 1)
        phases: list[tuple[str, str, int, Callable[[Gateway | None], dict[str, Any]]]] = []
        if "throughput" in a.only:
            for kind in a.kinds:
                phases.append(
                    (
                        f"throughput_{kind}",
                        f"throughput {kind} c={a.concurrency}",
                        a.repeats,
                        lambda gw, k=kind: self.throughput_once(gw, k, a.duration),
                    )
                )
        if "latency" in a.only:
            phases.append(
                (
                    "latency_unary",
                    f"latency unary @{a.rate:g}/s",
                    a.lat_repeats,
                    lambda gw: self.latency_once(gw, "unary", a.rate, a.lat_duration),
                )
            )
            phases.append(
                (
                    "latency_stream",
                    f"stream TTFT (paced) @{a.stream_rate:g}/s",
                    a.lat_repeats,
                    lambda gw: self.latency_once(gw, "paced", a.stream_rate, a.lat_duration),
                )
            )
        for key, title, n, fn in phases:
            secs = a.duration if key.startswith("throughput") else a.lat_duration
            warm = a.warm_cores and key.startswith("latency")
            log(f"  {title}: {n} rounds x (direct + {len(self.gateways)} gateway(s)) x {secs:g}s" + WARM * warm)
            spinners = start_spinners([a.gateway_core, a.load_core]) if warm else []
            try:
                runs = self.rounds(key.replace("_", " "), n, fn, check_load=not warm)
            finally:
                for proc in spinners:
                    proc.kill()
                    proc.wait()
            for gw in self.gateways:
                out[gw.label][key] = {"direct": runs["direct"], "via": runs[gw.label]}
        if a.profile > 0:
            for gw in self.gateways:
                out[gw.label]["profile"] = self.profile(gw)
        for gw in self.gateways:
            o = out[gw.label]
            o["rss_start_kib"] = gw.rss_start_kib
            o["rss_max_kib"] = max(gw.sampler.halt() if gw.sampler else 0, rss_kib(gw.pids()))
            o["rss_hwm_kib"] = max((rss_kib([p], "VmHWM") for p in gw.pids()), default=0)
        self.stop_gateways()
        return [out[g.label] for g in self.gateways]

    # ---- profile
    def profile(self, gw: Gateway) -> dict[str, Any]:
        """py-spy on the busiest process of `gw` while wrk drives it at --concurrency."""
        a = self.args
        pyspy = shutil.which("py-spy")
        if pyspy is None:
            log("  py-spy not found (pip install py-spy): no profile")
            return {}
        results = {}
        for kind in a.profile_kinds:
            pids = gw.pids()
            before = {p: cpu_s([p]) for p in pids}
            port, body = self.target(gw, kind)
            env = {**os.environ, "WRK_BODY": body.decode()}
            wrk = subprocess.Popen(
                [
                    "wrk",
                    "-t1",
                    f"-c{a.concurrency}",
                    f"-d{a.profile + 4:.0f}s",
                    "--timeout",
                    "10s",
                    "-s",
                    str(HERE / "wrk_post.lua"),
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                text=True,
            )
            _STARTED.append(wrk)  # type: ignore[arg-type]
            time.sleep(1.5)
            busiest = max(pids, key=lambda p: cpu_s([p]) - before.get(p, 0))
            raw = self.workdir / f"profile-{slug(gw.label)}-{kind}.txt"
            cmd = [
                pyspy,
                "record",
                "--pid",
                str(busiest),
                "--rate",
                str(a.profile_rate),
                "--duration",
                str(int(a.profile)),
                "--format",
                "raw",
                "--output",
                str(raw),
                "--nonblocking",
                "--full-filenames",
            ]
            if a.profile_native:
                cmd.append("--native")
            log(f"  profiling {kind} via {gw.label} (pid {busiest}) for {a.profile:g}s")
            subprocess.run(cmd, capture_output=True, timeout=a.profile + 60, check=False)
            wout, _ = wrk.communicate(timeout=a.profile + 60)
            _STARTED.remove(wrk)  # type: ignore[arg-type]
            m = re.search(r"^WRKJSON (.*)$", wout, re.M)
            repo = gw.spec.partition("@")[2] or a.repo
            summary = summarize_profile(raw, str(Path(repo).resolve()), a.top) if raw.exists() else {}
            summary["raw"] = str(raw)
            if m:
                w = json.loads(m.group(1))
                summary["rps_under_profiler"] = w["requests"] / (w["duration_us"] / 1e6)
            results[kind] = summary
        return results


WARM = " (warm cores: SCHED_IDLE spinners on both cores)"

TRACING = "+tracing"
"""Spec suffix: the same gateway with tracing on, OTLP/HTTP batch export to a loopback sink; every request
sampled, or the fraction after a colon (`+tracing:0.1`: parent-based trace-id ratio sampler)."""
_TRACING = re.compile(r"\+tracing(?::([0-9.]+))?$")


def label_of(server: str) -> str:
    """'uvicorn@/tmp/x/y' -> 'uvicorn@y': short enough for a table column ('+tracing' kept)."""
    m = _TRACING.search(server)
    tracing = m.group(0) if m else ""
    spec, sep, repo = (server[: m.start()] if m else server).partition("@")
    return (f"{spec}@{Path(repo).name}" if sep else spec) + tracing


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text)


def describe(label: str, side: str, r: dict[str, Any]) -> str:
    cpu = r["cpu"]
    if "rps" in r:
        s = f"{label:18s} {side:6s} {r['rps']:8.0f} req/s  errors {r['errors']}"
    else:
        key = "ttft_ms" if "ttft_ms" in r else "latency_ms"
        p = r.get(key, {})
        s = (
            f"{label:18s} {side:6s} {key[:-3]} p50 {p.get('p50', float('nan')):7.2f} ms  "
            f"p99 {p.get('p99', float('nan')):7.2f} ms  ok {r['ok']}/{r['sent']}  errors {r['errors']}"
        )
    return s + (
        f"  (gw cpu {cpu['gateway_cpu']:.0%}; foreign load: gw core {cpu['foreign_gateway_core']:.0%}, "
        f"load core {cpu['foreign_load_core']:.0%})"
    )


# --------------------------------------------------------------------------- py-spy raw -> tables

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


LOOP_FRAMES = ("Runner.run", "run", "MPServer._spawn_asgi_lifespan_worker", "_spawn_asgi_lifespan_worker")
"""Outermost Python frames under which the event loop (C: uvloop/libuv, or granian's Rust) runs: their self
time is the loop's own work (polling, transports, callbacks' C parts)."""


def classify(func: str, path: str, repo: str) -> str:
    """A frame -> the component it belongs to."""
    roots = {repo.rstrip("/"), str(REPO)}
    for root in roots:
        if path.startswith(root + "/"):
            rel = path[len(root) + 1 :].split("/")
            return f"escalade/{rel[0]}"
    m = re.search(r"site-packages/([^/]+)", path)
    if m:
        name = m.group(1).removesuffix(".py")
        if name == "opentelemetry" or name.startswith("opentelemetry"):
            return "opentelemetry"
        return name.split(".")[0]
    if re.search(r"/lib/python3\.\d+/asyncio/", path):
        return "asyncio (stdlib)"
    if re.search(r"/lib/python3\.\d+/", path) or "<frozen" in path:
        return "stdlib"
    return "native" if path and not path.endswith(".py") else "other"


def summarize_profile(raw: Path, repo: str, top: int) -> dict[str, Any]:
    """py-spy raw (folded) stacks -> self and inclusive percentages by function and by component."""
    samples = 0
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    self_comp: Counter[str] = Counter()
    incl_comp: Counter[str] = Counter()
    # "own" time of a component: the sample's leaf walked up to the first frame of a listed component
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        if frames and frames[0].startswith(("process ", "thread ")):
            frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        parsed = []
        for f in frames:
            m = _FRAME.match(f)
            func, file = (m.group("func"), m.group("file")) if m else (f, "")
            parsed.append((f"{func} ({short(file)})", classify(func, file, repo), func))
        leaf_name, leaf_comp, leaf_func = parsed[-1]
        if leaf_func in LOOP_FRAMES:
            leaf_comp = "event loop (C/Rust, under run())"
        self_fn[leaf_name] += count
        self_comp[leaf_comp] += count
        for name in {p[0] for p in parsed}:
            incl_fn[name] += count
        for comp in {p[1] for p in parsed if p[2] not in LOOP_FRAMES}:
            incl_comp[comp] += count

    def table(c: Counter[str], k: int) -> list[tuple[str, float]]:
        return [(name, round(100 * v / samples, 1)) for name, v in c.most_common(k)] if samples else []

    return {
        "samples": samples,
        "self_by_function": table(self_fn, top),
        "inclusive_by_function": table(incl_fn, top * 2),
        "self_by_component": table(self_comp, 30),
        "inclusive_by_component": table(incl_comp, 30),
    }


def short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/lib/python3.12/", "/lib/python3.13/"):
        if marker in path:
            return path.split(marker, 1)[1]
    for top in ("/gateway/", "/providers/", "/policies/", "/tests/"):
        if top in path:
            return top.strip("/") + "/" + path.split(top, 1)[1]
    return path


# --------------------------------------------------------------------------- report


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Medians over the clean runs (all runs if none is clean)."""
    s: dict[str, Any] = {"server": result["server"]}

    def runs(key: str, side: str) -> list[dict[str, Any]]:
        rs = result.get(key, {}).get(side, [])
        clean = [r for r in rs if not r.get("spoiled")]
        return clean or rs

    def dirty(key: str) -> bool:
        """No clean run on one side: the median is of spoiled runs."""
        return any(all(r.get("spoiled") for r in result[key][side]) for side in ("direct", "via"))

    for kind in ("unary", "stream"):
        key = f"throughput_{kind}"
        if key in result:
            d, v = runs(key, "direct"), runs(key, "via")
            s[key] = {
                "direct_rps": median([r["rps"] for r in d]),
                "via_rps": median([r["rps"] for r in v]),
                "via_rps_all": [round(r["rps"]) for r in result[key]["via"]],
                "via_cpu_all": [r.get("gateway_cpu_us_per_req") for r in result[key]["via"]],
                "direct_rps_all": [round(r["rps"]) for r in result[key]["direct"]],
                "via_errors": sum(r["errors"] for r in result[key]["via"]),
                "via_p50_ms": median([r["p50_us"] / 1e3 for r in v]),
                "via_p99_ms": median([r["p99_us"] / 1e3 for r in v]),
                "direct_p50_ms": median([r["p50_us"] / 1e3 for r in d]),
                "gateway_cpu": median([r["cpu"]["gateway_cpu"] for r in v]),
                "gateway_cpu_us_per_req": median([r.get("gateway_cpu_us_per_req") for r in v]),
                "spoiled_runs": sum(r.get("spoiled", False) for side in ("direct", "via") for r in result[key][side]),
                "dirty": dirty(key),
            }
    for key, metric in (("latency_unary", "latency_ms"), ("latency_stream", "ttft_ms")):
        if key in result:
            d, v = runs(key, "direct"), runs(key, "via")
            entry: dict[str, Any] = {"metric": metric, "rate": v[0]["rate"] if v else None}
            for q in ("p50", "p99"):
                dq = median([r[metric].get(q) for r in d])
                vq = median([r[metric].get(q) for r in v])
                entry[f"direct_{q}_ms"], entry[f"via_{q}_ms"] = dq, vq
                entry[f"added_{q}_ms"] = None if dq is None or vq is None else vq - dq
                # per-round differences (direct and via of the same round), then their median
                pairs = [
                    r2[metric].get(q, 0) - r1[metric].get(q, 0)
                    for r1, r2 in zip(result[key]["direct"], result[key]["via"], strict=False)
                ]
                entry[f"added_{q}_ms_per_round"] = [round(x, 3) for x in pairs]
            if metric == "ttft_ms":
                for q in ("p50", "p99"):
                    dq = median([r["ttfb_ms"].get(q) for r in d])
                    vq = median([r["ttfb_ms"].get(q) for r in v])
                    entry[f"ttfb_added_{q}_ms"] = None if dq is None or vq is None else vq - dq
            entry["gateway_cpu"] = median([r["cpu"]["gateway_cpu"] for r in v])
            entry["errors_via"] = sum(sum(r["errors"].values()) for r in result[key]["via"])
            entry["spoiled_runs"] = sum(
                r.get("spoiled", False) for side in ("direct", "via") for r in result[key][side]
            )
            entry["dirty"] = dirty(key)
            s[key] = entry
    s["rss_max_mib"] = result.get("rss_max_kib", 0) / 1024
    s["rss_hwm_mib"] = result.get("rss_hwm_kib", 0) / 1024
    s["rss_start_mib"] = result.get("rss_start_kib", 0) / 1024
    return s


def fmt(x: float | None, spec: str = ".0f", suffix: str = "") -> str:
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


def paired(base: list[float | None], other: list[float | None], ratio: bool) -> str:
    """Round-by-round comparison of two gateways measured in the same rounds: other/base (as a percent
    change) or other - base; the median and the range."""
    values = [
        (o / b - 1) * 100 if ratio else o - b
        for b, o in zip(base, other, strict=False)
        if b is not None and o is not None and b > 0
    ]
    if not values:
        return "n/a"
    spec = "+.1f" if ratio else "+.0f"
    unit = "%" if ratio else ""
    return f"{median(values):{spec}}{unit} ({min(values):{spec}} to {max(values):{spec}}{unit}, {len(values)} rounds)"


def markdown(summaries: list[dict[str, Any]], args: argparse.Namespace) -> str:
    c = args.concurrency
    names = [s["server"] for s in summaries]
    head = "| metric | direct (mock) | " + " | ".join(f"via escalade ({n})" for n in names) + " |"
    lines = [head, "|---" * (2 + len(names)) + "|"]

    def mark(entry: dict[str, Any]) -> str:
        return " ⚠ spoiled runs only" if entry.get("dirty") else ""

    def row(label: str, direct: str, vals: list[str]) -> None:
        lines.append(f"| {label} | {direct} | " + " | ".join(vals) + " |")

    first = summaries[0]
    for kind, label in (("unary", f"req/s c={c}, non-streaming"), ("stream", f"req/s c={c}, streaming (20 chunks)")):
        key = f"throughput_{kind}"
        if key in first:
            row(
                label,
                fmt(median([s[key]["direct_rps"] for s in summaries])),
                [
                    f"{fmt(s[key]['via_rps'])} ({s[key]['via_rps'] / s[key]['direct_rps']:.1%} of direct){mark(s[key])}"
                    for s in summaries
                ],
            )
            row(
                f"gateway CPU µs/request ({kind}, c={c})",
                "",
                [fmt(s[key]["gateway_cpu_us_per_req"]) for s in summaries],
            )
            if len(summaries) > 1:  # each round ran every gateway: compare them round by round
                row(
                    f"req/s vs {first['server']}: per-round ratio, median (min-max)",
                    "",
                    [""] + [paired(first[key]["via_rps_all"], x[key]["via_rps_all"], True) for x in summaries[1:]],
                )
                row(
                    f"CPU µs/request vs {first['server']}: per-round difference, median (min-max)",
                    "",
                    [""] + [paired(first[key]["via_cpu_all"], x[key]["via_cpu_all"], False) for x in summaries[1:]],
                )
            row(
                f"closed-loop p50 / p99 ms ({kind}, c={c})",
                fmt(first[key]["direct_p50_ms"], ".2f"),
                [f"{fmt(s[key]['via_p50_ms'], '.2f')} / {fmt(s[key]['via_p99_ms'], '.2f')}" for s in summaries],
            )
    if "latency_unary" in first:
        L = "latency_unary"
        for q in ("p50", "p99"):
            row(
                f"latency {q} @{args.rate:g}/s, non-streaming (ms)",
                fmt(median([s[L][f"direct_{q}_ms"] for s in summaries]), ".2f"),
                [
                    f"{fmt(s[L][f'via_{q}_ms'], '.2f')} (**+{fmt(s[L][f'added_{q}_ms'], '.2f')}** added){mark(s[L])}"
                    for s in summaries
                ],
            )
    if "latency_stream" in first:
        L = "latency_stream"
        for q in ("p50", "p99"):
            row(
                f"stream TTFT {q} @{args.stream_rate:g}/s, paced (ms)",
                fmt(median([s[L][f"direct_{q}_ms"] for s in summaries]), ".2f"),
                [
                    f"{fmt(s[L][f'via_{q}_ms'], '.2f')} (**+{fmt(s[L][f'added_{q}_ms'], '.2f')}** added){mark(s[L])}"
                    for s in summaries
                ],
            )
    row("gateway RSS max (MiB)", "", [f"{s['rss_max_mib']:.0f} (start {s['rss_start_mib']:.0f})" for s in summaries])
    spoiled = [
        f"{s['server']}: {sum(v.get('spoiled_runs', 0) for v in s.values() if isinstance(v, dict))}" for s in summaries
    ]
    lines.append("")
    lines.append(
        ("Latency measured with --warm-cores." + WARM + " " if args.warm_cores else "")
        + f"Medians of {args.repeats} (throughput) / {args.lat_repeats} (latency) runs; throughput runs "
        f"{args.duration:g}s, latency runs {args.lat_duration:g}s. Runs spoiled by other tenants' CPU load "
        f"(> {args.max_foreign:.0%} on the load core, or on the gateway core for runs through it): "
        + ", ".join(spoiled)
        + "."
    )
    return "\n".join(lines)


def profile_markdown(summaries: list[dict[str, Any]], results: list[dict[str, Any]], top: int) -> str:
    out = []
    for res in results:
        for kind, p in (res.get("profile") or {}).items():
            if not p.get("samples"):
                continue
            out.append(
                f"\n### py-spy: {res['server']}, {kind}, {p['samples']} samples "
                f"({fmt(p.get('rps_under_profiler'))} req/s under the profiler)\n"
            )
            out.append("| # | function (self time) | % |\n|---|---|---|")
            out += [f"| {i} | `{n}` | {v} |" for i, (n, v) in enumerate(p["self_by_function"][:top], 1)]
            out.append("\n| component | self % | inclusive % |\n|---|---|---|")
            incl = dict(p["inclusive_by_component"])
            out += [f"| {n} | {v} | {incl.get(n, '')} |" for n, v in p["self_by_component"]]
            out.append("\n| function (inclusive) | % |\n|---|---|")
            out += [f"| `{n}` | {v} |" for n, v in p["inclusive_by_function"][: top * 2]]
    return "\n".join(out)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--servers",
        default="uvicorn",
        help="comma list of SERVER[:OPTIONS][@REPO]: uvicorn (= escalade serve) or granian, launcher "
        "options after ':' (e.g. 'granian:--task-impl rust'), and a checkout to serve from after '@' "
        "(default uvicorn; REPO defaults to --repo); a '+tracing' suffix runs that gateway with tracing on, "
        "'+tracing:0.1' with 10%% of requests sampled",
    )
    ap.add_argument("--repo", default=str(REPO), help="checkout to serve the gateway from (default: this one)")
    ap.add_argument("--gateway-env", action="append", default=[], metavar="K=V", help="extra env for the gateway")
    ap.add_argument("--only", default="throughput,latency", help="phases: throughput,latency (comma list)")
    ap.add_argument(
        "--warm-cores",
        action="store_true",
        help="latency phases with a SCHED_IDLE busy loop on both cores, so no vCPU halts between requests. A "
        "diagnostic: this machine's VM halts an idle vCPU without polling first (haltpoll.guest_halt_poll_ns=0), "
        "and a request through the gateway wakes both cores more often than a direct one; the difference between "
        "a run with and without this option is what those wakes cost (foreign-load checks are off)",
    )
    ap.add_argument(
        "--kinds", default="unary,stream", help="throughput phase: unary, stream or both (comma list; default both)"
    )
    ap.add_argument("--quick", action="store_true", help="short runs: about one minute per server")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=10, help="seconds per closed-loop run (default 10)")
    ap.add_argument("--repeats", type=int, default=3, help="closed-loop runs per point (median quoted)")
    ap.add_argument("--rate", type=float, default=100, help="open-loop rate, non-streaming (req/s)")
    ap.add_argument("--stream-rate", type=float, default=30, help="open-loop rate, streaming TTFT (req/s)")
    ap.add_argument("--lat-duration", type=float, default=10, help="seconds per open-loop run")
    ap.add_argument("--lat-repeats", type=int, default=3)
    ap.add_argument("--gateway-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1)
    ap.add_argument(
        "--max-foreign",
        type=float,
        default=0.10,
        help="a run is spoiled when CPU that is not the benchmark's exceeds this on the load core, or (runs via "
        "the gateway) on the gateway core (0.10 = 10%%)",
    )
    ap.add_argument("--retries", type=int, default=2, help="redo a spoiled run up to this many times")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=120,
        metavar="SECONDS",
        help="before each run, wait up to this long for other tenants' CPU load to stop (0: never wait)",
    )
    ap.add_argument(
        "--tracing",
        action="store_true",
        help="for every --servers entry, also run its twin with tracing on (SPEC+tracing: "
        "OTEL_TRACES_SAMPLER=always_on, OTLP/HTTP batch export to a loopback sink on the load core), "
        "side by side in the same rounds",
    )
    ap.add_argument("--no-wrk", action="store_true", help="use the built-in asyncio closed-loop client instead of wrk")
    ap.add_argument("--profile", type=float, default=0, metavar="SECONDS", help="py-spy record the gateway under load")
    ap.add_argument("--profile-kinds", default="unary", help="unary,stream")
    ap.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--profile-native", action="store_true", help="py-spy --native (C frames: msgspec, uvloop...)")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json", default="", help="results file (default /tmp/escalade-bench-<time>.json)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the work dir (policy, logs, profiles)")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.repeats, args.lat_duration, args.lat_repeats = 4, 2, 4, 1
    args.only = set(args.only.split(","))
    if not set(args.kinds.split(",")) <= {"unary", "stream"}:
        raise SystemExit("--kinds: unary, stream or both (comma list)")
    args.kinds = [k for k in ("unary", "stream") if k in args.kinds.split(",")]
    if args.profile_kinds and not set(args.profile_kinds.split(",")) <= set(SCENARIOS):
        raise SystemExit(f"--profile-kinds: a comma list of {', '.join(SCENARIOS)}")
    args.profile_kinds = args.profile_kinds.split(",")
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if args.tracing:
        servers += [s + TRACING for s in servers if not _TRACING.search(s)]
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.load_core})  # this script is the open-loop client: the load core
    try:
        import uvloop

        loop_name = "uvloop"
    except ImportError:
        uvloop, loop_name = None, "asyncio"

    workdir = Path(tempfile.mkdtemp(prefix="escalade-bench-"))
    bench = Bench(args, workdir)
    if uvloop is not None:
        bench.loop = uvloop.new_event_loop()
    asyncio.set_event_loop(bench.loop)
    started = time.time()
    try:
        bench.start_mock()
        log(
            f"mock on 127.0.0.1:{bench.mock_port} (core {args.load_core}); load generator: "
            f"{'wrk' if bench.use_wrk else 'asyncio'} + {loop_name} open-loop client; work dir {workdir}"
        )
        results = bench.run(servers)
    finally:
        bench.stop_gateways()
        sink_tally = bench.stop_sink()
        if sink_tally:
            log(f"otlp sink received: {sink_tally}")
        if bench.mock is not None:
            stop(bench.mock)
        bench.loop.close()
    summaries = [summarize(r) for r in results]
    table = markdown(summaries, args)
    prof = profile_markdown(summaries, results, args.top)
    print(table)
    if prof:
        print(prof)
    path = Path(args.json or f"/tmp/escalade-bench-{time.strftime('%Y%m%d-%H%M%S')}.json")
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
        "load_generator": "wrk" if bench.use_wrk else "asyncio",
        "python": sys.version.split()[0],
        "git": subprocess.run(
            ["git", "-C", args.repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip(),
    }
    path.write_text(
        json.dumps({"meta": meta, "summary": summaries, "table_md": table, "runs": results}, indent=1, default=str)
    )
    log(f"results: {path}")
    if not args.keep_logs and not args.profile:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        log(f"logs and profiles kept in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
