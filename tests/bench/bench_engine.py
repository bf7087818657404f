#!/usr/bin/env python3
"""Local-engine benchmark: escalade in front of the real CPU vLLM it launches, against vLLM directly.

Starts `escalade serve` with a policy whose only deployment is the tiny model on a managed CPU vLLM
engine, and measures:

  1. engine start: `escalade serve` launched -> /readyz 200 (the engine answers /health), and the
     engine's memory (RSS summed over its process group) when ready and after the load;
  2. closed-loop load at --concurrency (16), streaming chat requests with include_usage (max_tokens
     --max-tokens, temperature 0.7, and vLLM's `ignore_eos` so that every request generates exactly
     --max-tokens tokens), direct to vLLM vs through escalade, --repeats rounds of one run each,
     the order rotated each round. Each run starts its workers staggered over one request latency
     (so that they do not finish in lockstep) and counts the requests that end inside a --seconds
     window once all are running; the drain after it is not counted, and the next run waits until
     the engine is idle. Per run: requests/s, output tokens/s, time to first content token (p50 / p90)
     on the client, and, from vLLM's own /metrics differenced over the window, what the engine did
     (requests finished, tokens per request, mean end-to-end / first-token / queue time, tokens per
     engine step, tokens per second second by second);
  3. CPU: escalade's, the load generator's (this process), the engine's, each core's busy fraction,
     and what else ran on core 0; TCP connections opened per request.

The summary gives the medians of each variant and the per-round ratios (via_i / direct_i) with their
median and range, which slow drift between rounds does not move.

--mixed drives every variant at once in each run (--concurrency shared out evenly, the workers of each
interleaved): the same engine steps serve both, so the engine's own swings (on a shared VM its speed
moves by +-25% within a minute: see the per-second figures) cancel, and the per-round ratio is what
the relay adds per request. --also CHECKOUT adds escalade from another copy of the repo, on the same
engine, as a third variant (e.g. a scratch copy with a patch applied).

Everything runs on this machine. --split-cores gives the engine core 1 and escalade + the load
generator core 0 (the engine's throughput is then the engine's alone, and escalade's cost shows as
its latency and CPU). Every process started is stopped at exit.

    ESCALADE_VLLM_VENV=/tmp/escalade-vllm/venv-... ESCALADE_TINY_MODEL=/tmp/escalade-vllm/tiny-mixtral \\
        python tests/bench/bench_engine.py --split-cores [--mixed] [--seconds 20] [--repeats 6]

--capture needs no engine: it sends the bench's request once directly and once through escalade to a
loopback server standing in for vLLM, and prints both as received (head and body).
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
import msgspec
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from local_engine import runfiles  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
CLK = os.sysconf("SC_CLK_TCK")
PROMPT = [{"role": "user", "content": "Write a short story about the weather in Paris."}]
MODEL = "tiny-mixtral"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request_body(max_tokens: int, ignore_eos: bool) -> bytes:
    body = {
        "model": MODEL,
        "messages": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        body["ignore_eos"] = True  # vLLM's sampling extension: generate max_tokens whatever is sampled
    return json.dumps(body).encode()


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
                    "served_model_name": MODEL,
                    "args": ["--dtype", "float32", "--enforce-eager", "--max-model-len", "2048"],
                    "env": env,
                    "ready_timeout_s": 300,
                },
            }
        },
        "models": {"tiny": {"provider": "local", "model": MODEL, "local": True}},
        "routes": {MODEL: {"models": ["tiny"]}},  # same model name direct and via escalade
        "timeouts": {"connect_s": 2, "headers_s": 60, "first_token_s": 60, "idle_s": 60, "total_s": 300},
    }


# ---------------------------------------------------------------- processes, CPU, memory


def group_rss_mib(pgid: int) -> float:
    total = 0
    for pid in runfiles.group_members(pgid):
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total / 2**20


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (all their threads)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rfind(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK


def core_busy_s() -> dict[int, float]:
    """Busy (not idle, not iowait) CPU seconds so far, per core, from /proc/stat."""
    busy = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *ticks = line.split()
            values = [int(t) for t in ticks[:8]]
            busy[int(name[3:])] = (sum(values) - values[3] - values[4]) / CLK
    return busy


def tcp_opens() -> int:
    """TCP connections this machine has opened so far (ActiveOpens in /proc/net/snmp)."""
    names, values = (
        line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Tcp:")
    )
    return int(values[names.index("ActiveOpens")])


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def start_gateway(policy_doc: dict, work: Path, repo: Path = REPO) -> subprocess.Popen[bytes]:
    """`escalade serve` of the checkout `repo` on this policy."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "policy.yaml").write_text(yaml.safe_dump(policy_doc))
    env = {**os.environ, "ESCALADE_RUN_DIR": str(work / "run"), "PYTHONPATH": str(repo)}
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(work / "policy.yaml"), "--log-level", "warning"],
        cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def wait_ready(gateway: subprocess.Popen[bytes], base: str, limit_s: float) -> bool:
    began = time.monotonic()
    while subprocess.run(["curl", "-sf", "-o", "/dev/null", f"{base}/readyz"], check=False).returncode != 0:
        if gateway.poll() is not None or time.monotonic() - began > limit_s:
            return False
        time.sleep(0.2)
    return True


def stop(gateway: subprocess.Popen[bytes]) -> None:
    gateway.send_signal(signal.SIGTERM)
    try:
        gateway.wait(60)
    except subprocess.TimeoutExpired:
        gateway.kill()


# ---------------------------------------------------------------- vLLM's /metrics


ENGINE_FIGURES = {
    "finished": "vllm:request_success_total",
    "gen_tokens": "vllm:generation_tokens_total",
    "prompt_tokens": "vllm:prompt_tokens_total",
    "e2e": "vllm:e2e_request_latency_seconds",
    "ttft": "vllm:time_to_first_token_seconds",
    "queue": "vllm:request_queue_time_seconds",
    "step_tokens": "vllm:iteration_tokens_total",
}


def metric_sums(text: str) -> dict[str, float]:
    """Every sample of the exposition, summed over label sets (histogram buckets left out)."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        if brace >= 0:
            name, rest = line[:brace], line[line.rfind("}") + 1 :]
        else:
            name, _, rest = line.partition(" ")
        if name.endswith("_bucket") or not rest.split():
            continue
        with contextlib.suppress(ValueError):
            sums[name] = sums.get(name, 0.0) + float(rest.split()[0])
    return sums


@dataclass
class EngineSide:
    """What vLLM itself counted between two scrapes. None: the engine does not export that figure."""

    finished: float | None = None
    gen_tokens_per_request: float | None = None
    e2e_ms: float | None = None
    ttft_ms: float | None = None
    queue_ms: float | None = None
    tokens_per_step: float | None = None

    @classmethod
    def between(cls, before: dict[str, float], after: dict[str, float]) -> EngineSide:
        def delta(name: str) -> float | None:
            return after[name] - before.get(name, 0.0) if name in after else None

        def mean_ms(family: str) -> float | None:
            total, count = delta(f"{family}_sum"), delta(f"{family}_count")
            return 1000 * total / count if total is not None and count else None

        finished = delta(ENGINE_FIGURES["finished"])
        gen = delta(ENGINE_FIGURES["gen_tokens"])
        steps_sum, steps = (
            delta(ENGINE_FIGURES["step_tokens"] + "_sum"),
            delta(ENGINE_FIGURES["step_tokens"] + "_count"),
        )
        return cls(
            finished=finished,
            gen_tokens_per_request=gen / finished if gen is not None and finished else None,
            e2e_ms=mean_ms(ENGINE_FIGURES["e2e"]),
            ttft_ms=mean_ms(ENGINE_FIGURES["ttft"]),
            queue_ms=mean_ms(ENGINE_FIGURES["queue"]),
            tokens_per_step=steps_sum / steps if steps_sum is not None and steps else None,
        )


async def scrape(session: aiohttp.ClientSession, origin: str) -> dict[str, float]:
    async with session.get(f"{origin}/metrics") as response:
        return metric_sums(await response.text())


GEN_TOKENS = ENGINE_FIGURES["gen_tokens"]


def in_engine(sums: dict[str, float]) -> float:
    return sums.get("vllm:num_requests_running", 0.0) + sums.get("vllm:num_requests_waiting", 0.0)


# ---------------------------------------------------------------- the load


@dataclass
class Done:
    """One answered request: perf_counter times, and the completion tokens its usage chunk reported."""

    began: float
    first: float | None
    ended: float
    tokens: int


@dataclass
class Run:
    name: str
    window: tuple[float, float] = (0.0, 0.0)
    done: list[Done] = field(default_factory=list)
    errors: int = 0
    engine: EngineSide = field(default_factory=EngineSide)
    engine_load: list[float] = field(default_factory=list)
    """Requests the engine held (running + waiting), sampled every second."""
    engine_rate: list[float] = field(default_factory=list)
    """Tokens the engine generated per second, second by second (how steady the engine itself was)."""
    cpu: dict[str, float] = field(default_factory=dict)
    """Cores kept busy over the window: gateway, bench (the load generator), engine, core0, core1."""
    opens_per_request: float = 0.0
    """TCP connections opened on this machine during the window, per request counted (all targets')."""

    @property
    def seconds(self) -> float:
        return self.window[1] - self.window[0]

    @property
    def counted(self) -> list[Done]:
        """Requests that ended inside the window."""
        w0, w1 = self.window
        return [d for d in self.done if w0 <= d.ended < w1]

    @property
    def rps(self) -> float:
        return len(self.counted) / self.seconds

    @property
    def tps(self) -> float:
        return sum(d.tokens for d in self.counted) / self.seconds

    @property
    def ttft(self) -> list[float]:
        """Time to the first content token of the requests that began inside the window."""
        w0, w1 = self.window
        return [d.first - d.began for d in self.done if w0 <= d.began < w1 and d.first is not None]

    def off_length(self, max_tokens: int) -> int:
        return sum(1 for d in self.counted if d.tokens != max_tokens)


_chunk = msgspec.json.Decoder()


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
            chunk = _chunk.decode(line[6:])
            if first is None and any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    run.done.append(Done(began, first, time.perf_counter(), tokens))


@dataclass
class Load:
    concurrency: int
    seconds: float
    body: bytes
    origin: str
    latency_s: float = 1.0
    """One request's latency at this load (from the warm-up): the workers' start is spread over it."""
    stagger: bool = True
    watch: list[int] = field(default_factory=list)

    async def run(self, targets: list[tuple[str, str, int]]) -> dict[str, Run]:
        """Drive every target at once, --concurrency workers shared out evenly; one Run per target.

        A target is (name, base URL, pid of the escalade whose CPU is counted, 0 for none). The engine's
        figures are the same for all (one engine). Usually one target; --mixed gives all of them.
        """
        each = self.concurrency // len(targets)
        ramp = self.latency_s if self.stagger else 0.0
        w0 = time.perf_counter() + ramp + 0.2
        w1 = w0 + self.seconds
        runs = {name: Run(name, window=(w0, w1)) for name, _, _ in targets}
        timeout = aiohttp.ClientTimeout(total=120)
        async with contextlib.AsyncExitStack() as stack:
            probe = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))  # not a worker's slot
            sessions = {
                name: await stack.enter_async_context(
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=each), timeout=timeout)
                )
                for name, _, _ in targets
            }

            async def worker(slot: int, name: str, base: str) -> None:
                await asyncio.sleep(slot * ramp / (each * len(targets)))  # the targets' workers interleave
                while time.perf_counter() < w1:
                    await one(sessions[name], f"{base}/chat/completions", self.body, runs[name])

            async def watch() -> None:
                await asyncio.sleep(w0 - time.perf_counter())
                pids = [pid for _, _, pid in targets]
                before, cpu0, opens0 = await scrape(probe, self.origin), self._cpu(pids), tcp_opens()
                load, rate, last = [], [], (time.perf_counter(), before.get(GEN_TOKENS, 0.0))
                while (left := w1 - time.perf_counter()) > 0.1:
                    await asyncio.sleep(min(1.0, left))
                    if time.perf_counter() < w1 - 0.1:
                        sums, now = await scrape(probe, self.origin), time.perf_counter()
                        load.append(in_engine(sums))
                        rate.append((sums.get(GEN_TOKENS, 0.0) - last[1]) / (now - last[0]))
                        last = (now, sums.get(GEN_TOKENS, 0.0))
                after, cpu1, opens1 = await scrape(probe, self.origin), self._cpu(pids), tcp_opens()
                wall = cpu1["wall"] - cpu0["wall"]
                cpu = {k: (cpu1[k] - cpu0[k]) / wall for k in cpu0 if k != "wall"}
                for name, _, pid in targets:
                    run = runs[name]
                    run.engine = EngineSide.between(before, after)
                    run.engine_load, run.engine_rate = load, rate
                    run.opens_per_request = (opens1 - opens0) / max(1, sum(len(r.counted) for r in runs.values()))
                    drivers = sum(v for k, v in cpu.items() if k.startswith("pid")) + cpu["bench"]
                    run.cpu = {
                        "gateway": cpu.get(f"pid{pid}", 0.0),
                        **{k: v for k, v in cpu.items() if not k.startswith("pid")},
                        "core0 other": cpu.get("core0", 0.0) - drivers,
                    }

            slots = [(name, base) for i in range(each) for name, base, _ in targets]
            await asyncio.gather(watch(), *(worker(n, name, base) for n, (name, base) in enumerate(slots)))
            await self._idle(probe)
        return runs

    def _cpu(self, gateway_pids: list[int]) -> dict[str, float]:
        cores = core_busy_s()
        return {
            "wall": time.perf_counter(),
            **{f"pid{pid}": cpu_s([pid]) for pid in gateway_pids if pid},
            "bench": own_cpu_s(),
            "engine": cpu_s(self.watch),
            **{f"core{n}": busy for n, busy in cores.items()},
        }

    async def _idle(self, probe: aiohttp.ClientSession) -> None:
        """Until the engine holds no request (a run must not start on the previous one's tail)."""
        end = time.perf_counter() + 30
        while in_engine(await scrape(probe, self.origin)) > 0 and time.perf_counter() < end:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else (values or [0.0])[0]


def fmt(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else "n/a"


def show(run: Run, max_tokens: int) -> None:
    e, c = run.engine, run.cpu
    client_ttft = statistics.mean(run.ttft) * 1000 if run.ttft else None
    cores = " ".join(f"{k} {v:.2f}" for k, v in sorted(c.items()) if k.startswith("core") and "other" not in k)
    print(
        f"  {run.name:10} {run.rps:6.2f} req/s {run.tps:7.1f} tok/s  TTFT p50 {pct(run.ttft, 50) * 1000:5.1f}"
        f" p90 {pct(run.ttft, 90) * 1000:5.1f} mean {fmt(client_ttft, '5.1f')} ms"
        f" | engine: {fmt(e.finished, '.0f')} done, {fmt(e.gen_tokens_per_request, '.1f')} tok/req,"
        f" e2e {fmt(e.e2e_ms, '.1f')} TTFT {fmt(e.ttft_ms, '.1f')} queue {fmt(e.queue_ms, '.2f')} ms,"
        f" {fmt(e.tokens_per_step, '.1f')} tok/step, holds {statistics.mean(run.engine_load or [0]):.1f},"
        f" {min(run.engine_rate or [0]):.0f}-{max(run.engine_rate or [0]):.0f} tok/s by the second"
        f" | CPU gateway {c.get('gateway', 0):.2f} bench {c.get('bench', 0):.2f} engine {c.get('engine', 0):.2f}"
        f" {cores} | {run.opens_per_request:.2f} TCP opens/req | {len(run.counted)} counted,"
        f" {run.off_length(max_tokens)} not {max_tokens} tokens, {run.errors} errors"
    )


ROWS = [
    # label, figure of a run, format, how a via run compares with its round's direct run (ratio / added / -)
    ("requests/s", lambda r: r.rps, ".2f", "ratio"),
    ("output tokens/s", lambda r: r.tps, ".1f", "ratio"),
    ("TTFT p50 (ms)", lambda r: pct(r.ttft, 50) * 1000, ".1f", "added"),
    ("TTFT p90 (ms)", lambda r: pct(r.ttft, 90) * 1000, ".1f", "added"),
    ("TTFT mean (ms)", lambda r: statistics.mean(r.ttft) * 1000 if r.ttft else None, ".1f", "added"),
    ("engine: TTFT mean (ms)", lambda r: r.engine.ttft_ms, ".1f", "added"),
    ("engine: e2e mean (ms)", lambda r: r.engine.e2e_ms, ".1f", "added"),
    ("engine: queue mean (ms)", lambda r: r.engine.queue_ms, ".2f", "added"),
    ("engine: tokens/step", lambda r: r.engine.tokens_per_step, ".2f", "ratio"),
    (
        "engine: slowest second / fastest",
        lambda r: min(r.engine_rate) / max(r.engine_rate) if r.engine_rate and max(r.engine_rate) else None,
        ".2f",
        "",
    ),
    ("engine: requests held", lambda r: statistics.mean(r.engine_load or [0]), ".2f", ""),
    ("engine: generated tokens / finished", lambda r: r.engine.gen_tokens_per_request, ".1f", ""),
    ("TCP connections opened/request", lambda r: r.opens_per_request, ".3f", ""),
    ("CPU gateway (cores)", lambda r: r.cpu.get("gateway"), ".3f", ""),
    ("CPU load generator (cores)", lambda r: r.cpu.get("bench"), ".3f", ""),
    ("CPU engine (cores)", lambda r: r.cpu.get("engine"), ".3f", ""),
    ("core 0 busy", lambda r: r.cpu.get("core0"), ".3f", ""),
    (
        "core 0 other (not the escalades driven, not the load)",
        lambda r: r.cpu.get("core0 other"),
        ".3f",
        "",
    ),
    ("core 1 busy", lambda r: r.cpu.get("core1"), ".3f", ""),
]


def summarize(rounds: list[dict[str, Run]], names: list[str], args: argparse.Namespace) -> None:
    """Medians of each variant, and each via variant against the direct run of the same round."""

    def values(name: str, of) -> list[float]:
        return [x for x in (of(r[name]) for r in rounds) if x is not None]

    def compare(name: str, of, how: str) -> str:
        pairs = [(of(r["direct"]), of(r[name])) for r in rounds]
        pairs = [(d, v) for d, v in pairs if d is not None and v is not None]
        if not how or not pairs:
            return ""
        if how == "ratio":
            xs = [100 * v / d for d, v in pairs if d]
            return f"{statistics.median(xs):.1f}% [{min(xs):.1f}-{max(xs):.1f}]"
        xs = [v - d for d, v in pairs]
        return f"{statistics.median(xs):+.2f} [{min(xs):+.2f} .. {max(xs):+.2f}]"

    vias = [n for n in names if n != "direct"]
    eos = "on" if args.ignore_eos else "off"
    print(
        f"\nconcurrency {args.concurrency}, streaming, max_tokens {args.max_tokens}, ignore_eos {eos},"
        f" stagger {'on' if args.stagger else 'off'}, {len(rounds)} rounds of {args.seconds:g} s windows"
        f" ({'all variants at once, --concurrency shared' if args.mixed else 'order rotated each round'}),"
        f" split cores: {args.split_cores}"
    )
    head = "| | direct |" + "".join(f" {n} | {n} vs direct, per round: median [min-max] |" for n in vias)
    print("\n" + head)
    print("|---|---|" + "---|---|" * len(vias))
    for label, of, spec, how in ROWS:
        cells = [fmt(statistics.median(values("direct", of)) if values("direct", of) else None, spec)]
        for n in vias:
            xs = values(n, of)
            cells += [fmt(statistics.median(xs) if xs else None, spec), compare(n, of, how)]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\n(medians over the rounds; 'added' rows are via minus direct in ms, 'ratio' rows via / direct)")
    for n in vias:
        rps = statistics.median(r[n].rps / r["direct"].rps for r in rounds)
        tps = statistics.median(r[n].tps / r["direct"].tps for r in rounds)
        ttft = statistics.median(pct(r[n].ttft, 50) - pct(r["direct"].ttft, 50) for r in rounds) * 1000
        met = rps >= 0.97 and tps >= 0.97 and ttft < 2.0
        print(
            f"bar for {n} (req/s and tok/s >= 97% of direct, TTFT p50 added < 2 ms; medians of the rounds): "
            f"{100 * rps:.1f}%, {100 * tps:.1f}%, {ttft:+.2f} ms -> {'met' if met else 'NOT met'}"
        )
        ratios = [100 * r[n].tps / r["direct"].tps for r in rounds]
        if len(ratios) > 1:
            spread = 2 * statistics.stdev(ratios) / len(ratios) ** 0.5
            print(f"  {n}/direct tok/s, mean of the rounds: {statistics.mean(ratios):.1f}% +- {spread:.1f} (2 SE)")
    runs = [run for r in rounds for run in r.values()]
    off = sum(run.off_length(args.max_tokens) for run in runs)
    print(f"requests not exactly {args.max_tokens} tokens (client usage): {off} of {sum(len(x.counted) for x in runs)}")


# ---------------------------------------------------------------- capture (no engine)


class Capture(asyncio.Protocol):
    """A stand-in for vLLM on loopback: records each request (head and body) and answers a short stream."""

    seen: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        if len(rest) < length:
            return
        self.seen.append(self.buf[: len(head) + 4 + length])
        self.buf = rest[length:]
        events = [
            {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
            {"choices": [{"index": 0, "delta": {"content": "Hi"}}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
            {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}},
        ]
        base = {"id": "chatcmpl-capture", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
        sse = b"".join(b"data: " + json.dumps({**base, **e}).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        self.transport.write(  # type: ignore[attr-defined]
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n" % len(sse) + sse
        )


async def capture(max_tokens: int, ignore_eos: bool, work: Path) -> int:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Capture, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    doc = policy(Path("/nonexistent"), Path("/nonexistent"), port, work)
    del doc["providers"]["local"]["engine"]
    gateway = start_gateway(doc, work)
    via = f"http://{doc['server']['listen']}"
    try:
        ready = await asyncio.to_thread(wait_ready, gateway, via, 30)
        if not ready:
            print("escalade did not start", file=sys.stderr)
            return 1
        body = request_body(max_tokens, ignore_eos)
        for name, base in (
            ("direct (the bench's own request)", f"http://127.0.0.1:{port}/v1"),
            ("via escalade", f"{via}/v1"),
        ):
            run = Run(name)
            async with aiohttp.ClientSession() as session:
                await one(session, f"{base}/chat/completions", body, run)
            raw = Capture.seen[-1]
            head, _, sent = raw.partition(b"\r\n\r\n")
            print(f"--- {name}: {len(run.done)} answered, {run.errors} errors; vLLM would receive:")
            print(head.decode("latin-1"))
            print(json.dumps(json.loads(sent), sort_keys=True))
        direct_body, via_body = (json.loads(r.partition(b"\r\n\r\n")[2]) for r in Capture.seen[-2:])
        same = direct_body == via_body
        print(f"\nbodies {'identical as JSON' if same else 'DIFFER'}")
        return 0 if same else 1
    finally:
        await asyncio.to_thread(stop, gateway)
        server.close()


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window of each run")
    parser.add_argument("--repeats", type=int, default=6, help="rounds: one run of each variant, order rotated")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send vLLM's ignore_eos so that every request generates exactly --max-tokens tokens",
    )
    parser.add_argument(
        "--stagger",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="spread the workers' first requests over one request latency (else all start at once)",
    )
    parser.add_argument(
        "--mixed",
        action="store_true",
        help="drive every variant at once (--concurrency shared out evenly) in each run: the same engine steps"
        " serve both, so the engine's own drift cancels; compares what each relay adds per request",
    )
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds of load each way before the first run")
    parser.add_argument(
        "--gateway-nice", type=int, default=0, help="run escalade at this niceness (negative: before the engine)"
    )
    parser.add_argument(
        "--split-cores",
        action="store_true",
        help="engine (all its processes and OpenMP threads) on core 1; escalade and the load generator on core 0",
    )
    parser.add_argument(
        "--also",
        type=Path,
        action="append",
        default=[],
        metavar="CHECKOUT",
        help="also run escalade from this checkout (another copy of the repo) on the same engine: a third variant",
    )
    parser.add_argument("--capture", action="store_true", help="no engine: show what vLLM receives each way, and exit")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    try:
        if args.capture:
            return asyncio.run(capture(args.max_tokens, args.ignore_eos, work))
        return bench(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench(args: argparse.Namespace, work: Path) -> int:
    venv = Path(os.environ.get("ESCALADE_VLLM_VENV", "/tmp/escalade-vllm/venv"))
    model = Path(os.environ.get("ESCALADE_TINY_MODEL", "/tmp/escalade-vllm/tiny-mixtral"))
    root = Path(os.environ.get("ESCALADE_VLLM_ROOT", "/tmp/escalade-vllm"))
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    port = free_port()
    doc = policy(venv, model, port, root)
    if args.split_cores:
        doc["providers"]["local"]["engine"]["env"]["VLLM_CPU_OMP_THREADS_BIND"] = "1"
    began = time.monotonic()
    gateway = start_gateway(doc, work / "via")
    gateways = [gateway]
    origin = f"http://127.0.0.1:{port}"
    targets = {"direct": (f"{origin}/v1", 0), "via": (f"http://{doc['server']['listen']}/v1", gateway.pid)}
    try:
        if not wait_ready(gateway, targets["via"][0][:-3], 300):
            print("escalade or its engine did not start", file=sys.stderr)
            return 1
        start_s = time.monotonic() - began
        for checkout in args.also:  # the same engine, not managed by these (no `engine:` section)
            other = json.loads(json.dumps(doc))
            del other["providers"]["local"]["engine"]
            other["server"]["listen"] = f"127.0.0.1:{free_port()}"
            extra = start_gateway(other, work / f"via-{len(gateways)}", checkout.resolve())
            gateways.append(extra)
            name = f"via@{checkout.resolve().name}"
            targets[name] = (f"http://{other['server']['listen']}/v1", extra.pid)
            if not wait_ready(extra, targets[name][0][:-3], 60):
                print(f"escalade from {checkout} did not start", file=sys.stderr)
                return 1
        if args.gateway_nice:  # now, not at launch: the engine must not inherit it (main thread only)
            for g in gateways:
                os.setpriority(os.PRIO_PROCESS, g.pid, args.gateway_nice)
        record = runfiles.read_record(next((work / "via" / "run").glob("engine-local-*.json")))
        engine_pids = runfiles.group_members(record.pgid)
        if args.split_cores:
            for pid in engine_pids:
                subprocess.run(["taskset", "-a", "-p", "-c", "1", str(pid)], check=False, capture_output=True)
            for g in gateways:
                subprocess.run(["taskset", "-a", "-p", "-c", "0", str(g.pid)], check=False, capture_output=True)
            os.sched_setaffinity(0, {0})
        rss_ready = group_rss_mib(record.pgid)
        idle0 = cpu_s(engine_pids)
        time.sleep(2.0)
        idle_cpu = (cpu_s(engine_pids) - idle0) / 2.0
        print(f"engine CPU while idle: {idle_cpu:.2f} cores")
        print(f"engine start: {start_s:.1f}s from `escalade serve` to /readyz 200; RSS {rss_ready:.0f} MiB")
        body = request_body(args.max_tokens, args.ignore_eos)
        load = Load(args.concurrency, args.warmup, body, origin, stagger=args.stagger, watch=engine_pids)
        for name, (base, pid) in targets.items():  # the first requests are slow; the pools fill
            warm = asyncio.run(load.run([(f"warm-up {name}", base, pid)]))[f"warm-up {name}"]
            if warm.counted and name == "direct":
                load.latency_s = statistics.median(d.ended - d.began for d in warm.counted)
        print(f"warm-up: {load.latency_s * 1000:.0f} ms per request direct; each run's workers start spread over that")
        load.seconds = args.seconds
        names = list(targets)
        if args.mixed and args.concurrency % len(names):
            used = args.concurrency // len(names) * len(names)
            print(f"--mixed: {args.concurrency} workers do not share out evenly over {len(names)}: {used} used")
        rounds: list[dict[str, Run]] = []
        for i in range(args.repeats):
            order = names[i % len(names) :] + names[: i % len(names)]  # each variant first in turn
            runs = {}
            if args.mixed:
                runs = asyncio.run(load.run([(name, *targets[name]) for name in order]))
            else:
                for name in order:
                    runs.update(asyncio.run(load.run([(name, *targets[name])])))
            for name in order:
                show(runs[name], args.max_tokens)
            rounds.append(runs)
        rss_after = group_rss_mib(record.pgid)
        summarize(rounds, names, args)
        print(
            f"engine start {start_s:.1f} s; engine RSS {rss_ready:.0f} MiB when ready,"
            f" {rss_after:.0f} MiB after the load"
        )
    finally:
        for g in reversed(gateways):
            stop(g)
    return 0


if __name__ == "__main__":
    sys.exit(main())
