#!/usr/bin/env python3
"""Local-engine benchmark: escalade in front of the real CPU vLLM it launches, against vLLM directly.

Starts `escalade serve` with a policy whose only deployment is the tiny model on a managed CPU vLLM
engine, and measures:

  1. engine start: `escalade serve` launched -> /readyz 200 (the engine answers /health), and the
     engine's memory (RSS summed over its process group) when ready and after the load;
  2. closed-loop load at --concurrency (16) for --seconds per run, streaming chat requests with
     include_usage (max_tokens --max-tokens, temperature 0.7), direct to vLLM vs through escalade,
     interleaved, --repeats times each: requests/s, output tokens/s, time to first content token
     (p50 / p90), and what escalade adds (via - direct, medians of the runs).

Everything runs on this machine: vLLM, escalade and the load generator share its cores, so escalade's
own CPU use shows up as lost engine throughput. Every process started is stopped at exit.

    ESCALADE_VLLM_VENV=/tmp/escalade-vllm/venv-... ESCALADE_TINY_MODEL=/tmp/escalade-vllm/tiny-mixtral \\
        python tests/bench/bench_engine.py [--concurrency 16] [--seconds 15] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from local_engine import runfiles  # noqa: E402
from local_engine.metrics import parse_metrics  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
CLK = os.sysconf("SC_CLK_TCK")
PROMPT = [{"role": "user", "content": "Write a short story about the weather in Paris."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def policy(venv: Path, model: Path, port: int, root: Path) -> dict:
    env = {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CACHE_ROOT": str(root / "cache" / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(root / "cache" / "torchinductor"),
        "TMPDIR": str(root / "tmp"),
        "VLLM_NO_USAGE_STATS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    if (venv / "lib" / "libiomp5.so").exists():
        env["LD_PRELOAD"] = str(venv / "lib" / "libiomp5.so")
    return {
        "server": {"listen": f"127.0.0.1:{free_port()}", "admin_listen": None, "max_tokens": 4096},
        "providers": {
            "local": {
                "type": "vllm",
                "base_url": f"http://127.0.0.1:{port}/v1",
                "engine": {
                    "command": [str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model"],
                    "model": str(model),
                    "served_model_name": "tiny-mixtral",
                    "args": ["--dtype", "float32", "--enforce-eager", "--max-model-len", "2048"],
                    "env": env,
                    "ready_timeout_s": 300,
                },
            }
        },
        "models": {"tiny": {"provider": "local", "model": "tiny-mixtral", "local": True}},
        "routes": {"tiny-mixtral": {"models": ["tiny"]}},  # same model name direct and via escalade
        "timeouts": {"connect_s": 2, "headers_s": 60, "first_token_s": 60, "idle_s": 60, "total_s": 300},
    }


def group_rss_mib(pgid: int) -> float:
    total = 0
    for pid in runfiles.group_members(pgid):
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total / 2**20


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rfind(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK


@dataclass
class Run:
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    seconds: float = 0.0
    gateway_cpu: float = 0.0
    """Cores the gateway process kept busy during the run (CPU seconds / wall seconds)."""
    engine_cpu: float = 0.0
    engine_load: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds


async def one(session: aiohttp.ClientSession, url: str, body: bytes, run: Run) -> None:
    began = time.perf_counter()
    first = None
    tokens = 0
    async with session.post(url, data=body, headers={"content-type": "application/json"}) as response:
        if response.status != 200:
            run.errors += 1
            await response.read()
            return
        async for line in response.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            if first is None and any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                first = time.perf_counter() - began
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    run.requests += 1
    run.tokens += tokens
    if first is not None:
        run.ttft.append(first)


async def sample_engine(session: aiohttp.ClientSession, origin: str, run: Run, end: float) -> None:
    """How many requests the engine holds (running + waiting), sampled every 0.25 s."""
    while time.perf_counter() < end:
        async with session.get(f"{origin}/metrics") as response:
            load = parse_metrics(await response.text())
        run.engine_load.append((load.running or 0) + (load.waiting or 0))
        await asyncio.sleep(0.25)


async def load(base: str, concurrency: int, seconds: float, max_tokens: int, origin: str) -> Run:
    body = json.dumps(
        {"model": "tiny-mixtral", "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0.7,
         "stream": True, "stream_options": {"include_usage": True}}
    ).encode()  # fmt: skip
    run = Run()
    end = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def worker() -> None:
            while time.perf_counter() < end:
                await one(session, f"{base}/chat/completions", body, run)

        began = time.perf_counter()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as probe:  # not a worker's slot
            await asyncio.gather(sample_engine(probe, origin, run, end), *(worker() for _ in range(concurrency)))
        run.seconds = time.perf_counter() - began
    return run


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else (values or [0.0])[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--gateway-nice", type=int, default=0, help="run escalade at this niceness (negative: before the engine)"
    )
    parser.add_argument(
        "--split-cores",
        action="store_true",
        help="engine (all its processes and OpenMP threads) on core 1; escalade and the load generator on core 0",
    )
    args = parser.parse_args()
    venv = Path(os.environ.get("ESCALADE_VLLM_VENV", "/tmp/escalade-vllm/venv"))
    model = Path(os.environ.get("ESCALADE_TINY_MODEL", "/tmp/escalade-vllm/tiny-mixtral"))
    root = Path(os.environ.get("ESCALADE_VLLM_ROOT", "/tmp/escalade-vllm"))
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    port = free_port()
    doc = policy(venv, model, port, root)
    if args.split_cores:
        doc["providers"]["local"]["engine"]["env"]["VLLM_CPU_OMP_THREADS_BIND"] = "1"
    (work / "policy.yaml").write_text(yaml.safe_dump(doc))
    env = {**os.environ, "ESCALADE_RUN_DIR": str(work / "run")}
    began = time.monotonic()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(work / "policy.yaml"), "--log-level", "warning"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    via = f"http://{doc['server']['listen']}/v1"
    origin = f"http://127.0.0.1:{port}"
    direct = f"{origin}/v1"
    try:
        while True:
            try:
                if (
                    subprocess.run(["curl", "-sf", "-o", "/dev/null", f"{via[:-3]}/readyz"], check=False).returncode
                    == 0
                ):
                    break
            except OSError:
                pass
            if gateway.poll() is not None or time.monotonic() - began > 300:
                print("escalade or its engine did not start", file=sys.stderr)
                return 1
            time.sleep(0.2)
        start_s = time.monotonic() - began
        if args.gateway_nice:  # now, not at launch: the engine must not inherit it (main thread only)
            os.setpriority(os.PRIO_PROCESS, gateway.pid, args.gateway_nice)
        record = runfiles.read_record(next((work / "run").glob("engine-local-*.json")))
        if args.split_cores:
            for pid in runfiles.group_members(record.pgid):
                subprocess.run(["taskset", "-a", "-p", "-c", "1", str(pid)], check=False, capture_output=True)
            subprocess.run(["taskset", "-a", "-p", "-c", "0", str(gateway.pid)], check=False, capture_output=True)
            os.sched_setaffinity(0, {0})
        rss_ready = group_rss_mib(record.pgid)
        print(f"engine start: {start_s:.1f}s from `escalade serve` to /readyz 200; RSS {rss_ready:.0f} MiB")
        asyncio.run(
            load(direct, args.concurrency, 3.0, args.max_tokens, origin)
        )  # warm-up (the first requests are slow)
        runs: dict[str, list[Run]] = {"direct": [], "via": []}
        for _ in range(args.repeats):
            for name, base in (("direct", direct), ("via", via)):
                engine_pids = runfiles.group_members(record.pgid)
                before = (cpu_s([gateway.pid]), cpu_s(engine_pids))
                run = asyncio.run(load(base, args.concurrency, args.seconds, args.max_tokens, origin))
                run.gateway_cpu = (cpu_s([gateway.pid]) - before[0]) / run.seconds
                run.engine_cpu = (cpu_s(engine_pids) - before[1]) / run.seconds
                runs[name].append(run)
                print(
                    f"  {name:6} {run.rps:6.1f} req/s {run.tps:7.0f} tok/s  TTFT p50 {pct(run.ttft, 50) * 1000:6.1f} ms"
                    f" p90 {pct(run.ttft, 90) * 1000:6.1f} ms  CPU: gateway {run.gateway_cpu:.2f}, engine"
                    f" {run.engine_cpu:.2f} cores  in engine {statistics.mean(run.engine_load or [0]):.1f}"
                    f"  ({run.requests} requests, {run.errors} errors)"
                )
        rss_after = group_rss_mib(record.pgid)
        med = {
            name: (
                statistics.median(r.rps for r in rs),
                statistics.median(r.tps for r in rs),
                statistics.median(pct(r.ttft, 50) for r in rs),
            )
            for name, rs in runs.items()
        }
        (d_rps, d_tps, d_ttft), (v_rps, v_tps, v_ttft) = med["direct"], med["via"]
        print(f"\nconcurrency {args.concurrency}, streaming, max_tokens {args.max_tokens}, medians of {args.repeats}:")
        print(f"  direct to vLLM:  {d_rps:6.1f} req/s  {d_tps:7.0f} output tok/s  TTFT p50 {d_ttft * 1000:6.1f} ms")
        print(f"  through escalade:{v_rps:6.1f} req/s  {v_tps:7.0f} output tok/s  TTFT p50 {v_ttft * 1000:6.1f} ms")
        print(
            f"  escalade: {100 * (v_rps / d_rps - 1):+.1f}% req/s, {100 * (v_tps / d_tps - 1):+.1f}% tok/s, "
            f"TTFT p50 {1000 * (v_ttft - d_ttft):+.1f} ms"
        )
        via_cpu = statistics.median(r.gateway_cpu for r in runs["via"])
        print(f"  escalade's own CPU while relaying: {via_cpu:.2f} cores (this machine has {os.cpu_count()})")
        print(f"engine RSS: {rss_ready:.0f} MiB when ready, {rss_after:.0f} MiB after the load")
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(60)
        except subprocess.TimeoutExpired:
            gateway.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
