"""The gateway with a real vLLM (the CPU build, tiny random MoE model) that it launches and supervises.

One engine start is shared by every test session that needs it (tests/integration/conftest.py: the
`stack` fixture). Needs ESCALADE_VLLM_VENV and ESCALADE_TINY_MODEL (tests/run.sh builds both).
"""

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai

from tests.support.gateway import GatewayThread, mock_policy, write_policy
from tests.unit.test_local_engine_fake import free_port

VENV = Path(os.environ.get("ESCALADE_VLLM_VENV", "/nonexistent"))
MODEL = Path(os.environ.get("ESCALADE_TINY_MODEL", "/nonexistent"))
ROOT = Path(os.environ.get("ESCALADE_VLLM_ROOT", "/tmp/escalade-vllm"))
AVAILABLE = (VENV / "bin" / "python").exists() and (MODEL / "model.safetensors").exists()


def engine_section(port: int) -> dict[str, Any]:
    env = {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CACHE_ROOT": str(ROOT / "cache" / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(ROOT / "cache" / "torchinductor"),
        "TMPDIR": str(ROOT / "tmp"),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    if (VENV / "lib" / "libiomp5.so").exists():
        env["LD_PRELOAD"] = str(VENV / "lib" / "libiomp5.so")
    outputs = {"backend": "xgrammar", "disable_any_whitespace": True, "enable_in_reasoning": True}
    return {
        "type": "vllm",
        "base_url": f"http://127.0.0.1:{port}/v1",
        "engine": {
            "command": [str(VENV / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model"],
            "model": str(MODEL),
            "served_model_name": "tiny-mixtral",
            "args": [
                *("--dtype", "float32", "--enforce-eager", "--max-model-len", "2048"),
                *("--enable-auto-tool-choice", "--tool-call-parser", "mistral", "--reasoning-parser", "mistral"),
                *("--structured-outputs-config", json.dumps(outputs, separators=(",", ":"))),
            ],
            "env": env,
            "ready_timeout_s": 300,
        },
    }


def cascade_route(hold: str) -> dict[str, Any]:
    """The tiny model gated, then a mock large model (its random answers must fail the gate)."""
    return {
        "strategy": "cascade",
        "rungs": [{"models": ["tiny"]}, {"models": ["large"]}],
        "gate": {"checks": ["empty"], "min_score": 0.5, "hold": hold, "prefix_tokens": 4},
    }


class Stack:
    """The gateway (with its engine) shared by the session."""

    def __init__(self, gw: GatewayThread, started_in_s: float) -> None:
        self.gw = gw
        self.started_in_s = started_in_s
        self.stopped = False
        meta = json.loads((MODEL / "escalade-tiny.json").read_text())
        self.bias = {str(i): 50 for i in meta["forcing_token_ids"]}

    @property
    def engine(self) -> Any:
        return self.gw.state.engines["local"]

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gw.base_url, api_key="unused", max_retries=0, timeout=60)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.gw.stop(timeout=90)


@contextmanager
def running_stack(upstream_base_url: str, run_dir: Path) -> Iterator[Stack]:
    """The gateway and its engine, ready; stopped (and the engine's leftovers removed) on exit."""
    (ROOT / "tmp").mkdir(parents=True, exist_ok=True)
    saved = os.environ.get("ESCALADE_RUN_DIR")
    os.environ["ESCALADE_RUN_DIR"] = str(run_dir)
    policy = mock_policy(
        upstream_base_url,
        providers={"local": engine_section(free_port())},
        models={
            "tiny": {"provider": "local", "model": "tiny-mixtral", "local": True, "max_queue": 64},
            "backup": {"provider": "mock", "model": "ok?text=answer+from+the+fallback"},
            "large": {"provider": "mock", "model": "ok?text=answer+from+the+large+model",
                      "price": {"input_per_mtok": 1.0, "output_per_mtok": 10.0}},
        },
        routes={
            "local": {"models": ["tiny"]},
            "auto": {"models": ["tiny", "backup"]},
            "think": {"models": ["tiny"], "reasoning_effort": "high"},
            # tests/integration/test_vllm_cascade.py: the random model's answers must fail the gate
            "cascade-full": cascade_route("full"),
            "cascade-prefix": cascade_route("prefix"),
        },
        timeouts={"connect_s": 2, "headers_s": 60, "first_token_s": 60, "idle_s": 60, "total_s": 120},
    )
    path = write_policy(run_dir / "policy.yaml", policy)
    shm_before = set(SHM.iterdir()) if SHM.is_dir() else set()
    began = time.monotonic()
    gw = GatewayThread(path).start()
    stack = Stack(gw, 0.0)
    try:
        wait_for(lambda: stack.engine.status.ready, 300, lambda: log_tail(stack))
        stack.started_in_s = time.monotonic() - began
        print(f"\nengine ready {stack.started_in_s:.1f}s after the gateway started", file=sys.stderr)
        yield stack
    finally:
        stack.stop()
        remove_engine_leftovers(shm_before)
        if saved is None:
            os.environ.pop("ESCALADE_RUN_DIR", None)
        else:
            os.environ["ESCALADE_RUN_DIR"] = saved


def wait_for(predicate, timeout: float, why=lambda: "") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"not reached in {timeout}s: {why()}")
        time.sleep(0.1)


def log_tail(stack: Stack) -> str:
    status = stack.engine.status
    try:
        tail = stack.engine.log_path.read_text(errors="replace")[-3000:]
    except OSError:
        tail = ""
    return f"{status}\n{tail}"


SHM = Path("/dev/shm")
LEFTOVERS = ("psm_", "sem.mp-", "__KMP_REGISTERED_LIB_")


def remove_engine_leftovers(before: set[Path]) -> None:
    """The killed engine's shared memory (vLLM cannot clean up after SIGKILL), if no process uses it."""
    if not SHM.is_dir():
        return
    in_use = open_paths()
    for entry in set(SHM.iterdir()) - before:
        if entry.name.startswith(LEFTOVERS) and str(entry) not in in_use:
            entry.unlink(missing_ok=True)


def open_paths() -> set[str]:
    paths: set[str] = set()
    for pid in pids():
        try:
            paths.update(line.split(maxsplit=5)[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines())
            paths.update(str(fd.readlink()) for fd in Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
    return paths


def pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
