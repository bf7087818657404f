"""The `escalade` command as an operator runs it: a real process, real signals."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tests.support.gateway import mock_policy

REPO = Path(__file__).resolve().parents[2]


def escalade(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=60, **kw)


def test_help_explains_the_commands():
    out = escalade("--help").stdout
    assert "serve" in out and "check" in out and "OTEL_EXPORTER_OTLP_ENDPOINT" in out
    assert "--policy" in escalade("serve", "--help").stdout


def test_check_prints_what_each_route_tries(tmp_path):
    out = escalade("check", "deploy/policies/mock.yaml")
    assert out.returncode == 0, out.stderr
    assert "auto [priority]: primary -> backup" in out.stdout


def test_check_reports_every_problem_with_path_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nroutes:\n  auto:\n    models: [ghost]\n    stratgy: priority\n")
    out = escalade("check", str(bad))
    assert out.returncode == 1
    assert "unknown field `stratgy`" in out.stderr and "(line 5)" in out.stderr
    missing = escalade("check", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_serve_answers_then_drains_on_sigterm(tmp_path, mock):
    policy = mock_policy(mock.base_url, models={"m": {"provider": "mock", "model": "ok"}}, routes={"auto": {"models": ["m"]}})
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(policy))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(path), "--listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        banner = proc.stdout.readline()
        assert "serving http://127.0.0.1:" in banner, proc.stderr.read() if proc.poll() is not None else banner
        base = banner.split("serving ")[1].split(" ")[0]
        body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(f"{base}/chat/completions", json=body, timeout=10).json()["choices"][0]["message"]["content"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_refuses_an_invalid_policy(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 2\n")
    start = time.monotonic()
    out = escalade("serve", "--policy", str(bad))
    assert out.returncode == 1 and "cannot start" in out.stderr and time.monotonic() - start < 30
