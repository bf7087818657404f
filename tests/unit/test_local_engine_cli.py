"""`escalade engine start|status|stop` with a fake engine, and a gateway that finds the engine running."""

import contextlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.cli import main
from local_engine import runfiles
from tests.support.gateway import GatewayThread
from tests.unit.test_local_engine_fake import FAKE_ENGINE, free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ESCALADE_RUN_DIR", str(tmp_path / "run"))
    doc = {
        "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
        "providers": {
            "local": {
                "type": "vllm",
                "base_url": f"http://127.0.0.1:{free_port()}/v1",
                "engine": {
                    "command": [sys.executable, FAKE_ENGINE, "--model"],
                    "model": "fake-model",
                    "args": ["--child", "--ready-after", "0.3"],
                },
            }
        },
        "models": {"tiny": {"provider": "local", "model": "fake-model"}},
        "routes": {"auto": {"models": ["tiny"]}},
    }
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def escalade(*args: str) -> subprocess.CompletedProcess[str]:
    """`escalade ARGS` in this process (fast): exit status and output, like a finished subprocess."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(args))
    return subprocess.CompletedProcess(args, status, out.getvalue(), err.getvalue())


def test_start_status_stop_by_hand(policy: Path) -> None:
    down = escalade("engine", "status", "--policy", str(policy))
    assert down.returncode == 3 and "down" in down.stdout

    start = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "engine", "start", "--policy", str(policy)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ,
    )  # fmt: skip
    try:
        lines = []
        for line in start.stdout:
            lines.append(line)
            if "engine local: ready" in line:
                break
        assert any("--model fake-model --host 127.0.0.1" in line for line in lines), lines

        status = escalade("engine", "status", "--policy", str(policy))
        assert status.returncode == 0, status.stdout + status.stderr
        header, row = status.stdout.splitlines()
        assert header.split()[:3] == ["ENGINE", "STATE", "URL"]
        assert row.split()[:2] == ["local", "ready"] and f"engine start (pid {start.pid})" in row
        assert "25.0%" in row  # the fake's KV-cache use
        record = runfiles.read_record(next((policy.parent / "run").glob("engine-local-*.json")))
        assert record is not None and record.supervisor_pid == start.pid

        again = escalade("engine", "start", "--policy", str(policy))
        assert again.returncode == 1 and "already running" in again.stderr

        stop = escalade("engine", "stop", "--policy", str(policy))
        assert stop.returncode == 0 and "stopped by its supervisor" in stop.stdout, stop.stdout + stop.stderr
        assert start.wait(10) == 0
        assert runfiles.group_members(record.pgid) == []
        assert "not running" in escalade("engine", "stop", "--policy", str(policy)).stdout
    finally:
        start.kill()
        start.wait()


def test_a_gateway_watches_an_engine_started_by_hand(policy: Path) -> None:
    start = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "engine", "start", "--policy", str(policy)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ,
    )  # fmt: skip
    try:
        for line in start.stdout:
            if "engine local: ready" in line:
                break
        gw = GatewayThread(policy).start()
        try:
            supervisor = gw.state.engines["local"]
            assert supervisor.status.owned is False or not supervisor.status.ready
            body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
            end = time.monotonic() + 10
            while True:
                answer = httpx.post(f"{gw.base_url}/chat/completions", json=body, timeout=5)
                if answer.status_code == 200 or time.monotonic() > end:
                    break
                time.sleep(0.05)
            assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "fake engine"
            assert supervisor.status.owned is False
            busy = escalade("engine", "stop", "--policy", str(policy))  # run by `engine start`: allowed
        finally:
            gw.stop()
        assert busy.returncode == 0
        assert start.wait(10) == 0
    finally:
        start.kill()
        start.wait()


def test_stop_refuses_an_engine_the_gateway_runs(policy: Path) -> None:
    gw = GatewayThread(policy).start()
    try:
        supervisor = gw.state.engines["local"]
        end = time.monotonic() + 10
        while not supervisor.status.ready and time.monotonic() < end:
            time.sleep(0.05)
        refused = escalade("engine", "stop", "--policy", str(policy))
        assert refused.returncode == 1 and "run by `escalade serve`" in refused.stderr
        assert supervisor.status.ready
    finally:
        gw.stop()


def test_escalade_serve_restarts_a_killed_engine_and_sigkill_leaves_nothing(policy: Path) -> None:
    """The real `escalade serve` process (uvloop, signal handlers), not the in-thread gateway."""
    serve = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(policy), "--log-level", "warning"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ,
    )  # fmt: skip
    try:
        admin = serve.stdout.readline().split("admin ")[1].split(";")[0]
        engine = lambda: httpx.get(f"{admin}/readyz", timeout=5).json()["engines"]["local"]  # noqa: E731
        wait(lambda: engine()["state"] == "ready")
        record_file = next((policy.parent / "run").glob("engine-local-*.json"))
        first = runfiles.read_record(record_file)
        os.killpg(first.pgid, 9)
        wait(lambda: engine()["restarts"] == 1 and engine()["state"] == "ready")
        second = runfiles.read_record(record_file)
        assert second.pgid != first.pgid and second.supervisor_pid == serve.pid
        serve.kill()  # SIGKILL: no cleanup code runs in the gateway; the leash takes the engine down
        serve.wait(5)
        wait(lambda: not runfiles.group_members(second.pgid))
    finally:
        serve.kill()
        serve.wait()


def wait(predicate, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.05)
