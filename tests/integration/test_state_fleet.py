"""Several gateway PROCESSES (`python -m gateway.cli serve`) sharing one real Redis behave as one:
a circuit opened by one replica's failures is skipped by the others, latency seen by one is seen by
all, and a Redis outage leaves every replica serving on its own state until Redis returns."""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.gateway import mock_policy
from tests.support.redis import REDIS_SERVER, RedisServer

REPO = Path(__file__).resolve().parents[2]
HI = [{"role": "user", "content": "hi"}]
FLAKY = "fault:status?code=503"


class Replica:
    def __init__(self, policy_path: Path, redis_url: str) -> None:
        env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(policy_path), "--listen", "127.0.0.1:0",
             "--admin-listen", "127.0.0.1:0", "--log-level", "warning"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        banner = self.proc.stdout.readline()
        if "serving http://" not in banner:
            self.proc.kill()
            raise RuntimeError(f"gateway did not start: {banner} {self.proc.stderr.read()}")
        self.base = banner.split("serving ")[1].split(" ")[0]
        self.admin = banner.split("admin ")[1].split(";")[0].split()[0]

    def ask(self) -> httpx.Response:
        return httpx.post(f"{self.base}/chat/completions", json={"model": "auto", "messages": HI}, timeout=20)

    def deployments(self) -> dict:
        return httpx.get(f"{self.admin}/admin/state", timeout=5).json()["deployments"]

    def readyz(self) -> httpx.Response:
        return httpx.get(f"{self.base.removesuffix('/v1')}/readyz", timeout=5)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.stderr.read()


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what} not reached in {timeout}s")
        time.sleep(0.05)


@pytest.fixture
def replicas(tmp_path, mock):
    started: list[Replica] = []

    def start(redis_url: str, prefix: str) -> Replica:
        policy = mock_policy(
            mock.base_url,
            models={"flaky": {"provider": "mock", "model": FLAKY}, "good": {"provider": "mock", "model": "ok"}},
            routes={"auto": {"models": ["flaky", "good"]}},
            retries={"attempts": 1},
            resilience={"breaker": {"consecutive_failures": 2, "open_s": 60}},
            state={"backend": "redis", "key_prefix": prefix, "sync_interval_s": 0.1},
        )
        path = tmp_path / f"policy-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(policy))
        replica = Replica(path, redis_url)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.stop()


def calls(mock, model: str) -> int:
    return sum(1 for r in mock.log if r.get("model") == model)


def test_replicas_share_circuits_and_latency(replicas, redis_server, mock):
    prefix = f"fleet-{time.monotonic_ns()}"
    a, b = replicas(redis_server.url, prefix), replicas(redis_server.url, prefix)
    for _ in range(2):
        answer = a.ask()
        assert answer.status_code == 200 and answer.headers["x-escalade-model"] == "good"
    assert calls(mock, FLAKY) == 2

    def b_sees_a() -> dict | None:
        view = b.deployments()
        opened = view.get("flaky", {}).get("circuit") == "open"
        return view if opened and view.get("good", {}).get("samples") == 2 else None  # A's two answers

    seen_by_b = wait_for(b_sees_a, what="B seeing the circuit A opened and A's latency")
    assert "2 failures in a row" in seen_by_b["flaky"]["why"] and seen_by_b["good"]["ttft_p50_s"] > 0
    for _ in range(3):
        answer = b.ask()
        assert answer.headers["x-escalade-model"] == "good" and answer.headers["x-escalade-attempts"] == "1"
    assert calls(mock, FLAKY) == 2  # B never tried the deployment A found broken
    wait_for(lambda: a.deployments()["good"]["samples"] == 5, what="A seeing B's answers")


@pytest.fixture
def secret_redis():
    """A Redis that wants a password: the URL carries a secret that must never show."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; tests/run.sh does it)")
    server = RedisServer(password="canary-pw-7f3a9c").start()
    yield server
    server.stop()


def test_redis_outage_keeps_replicas_serving_then_they_catch_up(replicas, secret_redis, mock):
    own_redis = secret_redis
    prefix = f"outage-{time.monotonic_ns()}"
    a = replicas(own_redis.url, prefix)
    wait_for(lambda: a.readyz().json()["state"]["connected"], what="A connected")
    own_redis.kill()  # and it comes back empty: it keeps nothing on disk
    for _ in range(4):
        answer = a.ask()  # Redis is gone: answers keep coming, from local state
        assert answer.status_code == 200 and answer.headers["x-escalade-model"] == "good"
    assert calls(mock, FLAKY) == 2  # A's own breaker opened after two failures, without Redis
    ready = wait_for(lambda: (r := a.readyz()).status_code == 200 and "degraded" in r.json()["state"] and r,
                     what="readyz saying degraded")
    body = ready.json()
    assert body["status"] == "ready" and "cannot reach Redis" in body["state"]["degraded"]
    assert "canary-pw" not in ready.text  # the URL (and its password) is never shown
    own_redis.start()
    wait_for(lambda: a.readyz().json()["state"]["connected"], what="A reconnected")
    b = replicas(own_redis.url, prefix)  # a new replica learns what A saw during the outage
    view = b.deployments()
    assert view["good"]["samples"] == 4 and view["flaky"]["circuit"] == "open"
    assert b.ask().headers["x-escalade-attempts"] == "1"
    assert calls(mock, FLAKY) == 2
    assert "canary-pw" not in httpx.get(f"{a.admin}/admin/state").text
    logs = a.stop() + b.stop()
    assert "cannot reach Redis" in logs and "canary-pw" not in logs


def test_key_rpm_holds_across_replicas(tmp_path, redis_server, mock):
    policy = mock_policy(
        mock.base_url,
        models={"m": {"provider": "mock", "model": "ok"}},
        routes={"auto": {"models": ["m"]}},
        keys=[{"name": "app", "key_sha256": hashlib.sha256(b"sk-app").hexdigest(), "rpm": 5}],
        state={"backend": "redis", "key_prefix": f"rpm-{time.monotonic_ns()}", "sync_interval_s": 0.1},
    )
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    fleet = [Replica(path, redis_server.url) for _ in range(2)]
    try:
        statuses = [
            httpx.post(f"{r.base}/chat/completions", json={"model": "auto", "messages": HI},
                       headers={"authorization": "Bearer sk-app"}, timeout=20).status_code
            for _ in range(4) for r in fleet
        ]
        assert statuses.count(200) == 5 and statuses.count(429) == 3  # one budget of 5 a minute for the fleet
    finally:
        for replica in fleet:
            replica.stop()
