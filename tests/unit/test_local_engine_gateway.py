"""The gateway with a supervised (fake) engine: routing around it, max_queue spill, /readyz, shutdown."""

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from local_engine import runfiles
from tests.support.gateway import GatewayThread, mock_policy, write_policy
from tests.unit.test_local_engine_fake import FAKE_ENGINE, free_port

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture
def engine_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ESCALADE_RUN_DIR", str(tmp_path / "run"))
    state = tmp_path / "engine-state"
    state.mkdir()
    return state


def sections(state: Path, *engine_args: str, routes: dict | None = None) -> dict:
    return {
        "providers": {
            "local": {
                "type": "vllm",
                "base_url": f"http://127.0.0.1:{free_port()}/v1",
                "engine": {
                    "command": [sys.executable, FAKE_ENGINE, "--model"],
                    "model": "fake-model",
                    "served_model_name": "fake",
                    "args": ["--state-dir", str(state), "--child", *engine_args],
                    "ready_timeout_s": 30,
                },
            }
        },
        "models": {
            "tiny": {"provider": "local", "model": "fake", "max_queue": 2, "local": True},
            "backup": {"provider": "mock", "model": "ok?text=from+backup"},
        },
        "routes": routes
        or {
            "auto": {"models": ["tiny", "backup"]},
            "local-only": {"models": ["tiny"]},
            "think": {"models": ["tiny"], "reasoning_effort": "high"},
        },
    }


def ask(gw, route: str) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/chat/completions", json={**CHAT, "model": route}, timeout=10)


def readyz(gw) -> httpx.Response:
    return httpx.get(f"{gw.admin_url}/readyz", timeout=5)


def test_requests_go_around_a_starting_engine_then_to_it(make_gateway, engine_dir: Path) -> None:
    gw = make_gateway(sections(engine_dir, "--ready-after", "0.8"))
    answer = ask(gw, "auto")
    assert answer.status_code == 200 and answer.headers["x-escalade-model"] == "backup"

    refused = ask(gw, "local-only")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    error = refused.json()["error"]
    assert error["code"] == "no_eligible_deployment"
    assert "tiny: local engine `local` is starting" in error["message"]

    ready = readyz(gw)
    assert ready.status_code == 200  # `auto` can serve
    body = ready.json()
    assert body["engines"]["local"]["state"] == "starting" and body["engines"]["local"]["managed"] is True
    assert set(body["routes_waiting"]) == {"local-only", "think"}

    wait_for(lambda: ask(gw, "auto").headers["x-escalade-model"] == "tiny")
    assert ask(gw, "local-only").json()["choices"][0]["message"]["content"] == "fake engine"
    body = readyz(gw).json()
    assert body["engines"]["local"]["state"] == "ready" and "routes_waiting" not in body
    assert body["engines"]["local"]["kv_cache_usage"] == 0.25


def test_a_deep_queue_spills_to_the_next_deployment(make_gateway, engine_dir: Path) -> None:
    gw = make_gateway(sections(engine_dir))
    wait_for(lambda: ask(gw, "auto").headers["x-escalade-model"] == "tiny")
    (engine_dir / "waiting").write_text("3")  # max_queue is 2
    wait_for(lambda: ask(gw, "auto").headers["x-escalade-model"] == "backup", timeout=5)
    refused = ask(gw, "local-only")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "3 requests queued (max_queue 2)" in refused.json()["error"]["message"]
    assert readyz(gw).status_code == 200  # load is not readiness
    (engine_dir / "waiting").write_text("2")
    wait_for(lambda: ask(gw, "auto").headers["x-escalade-model"] == "tiny", timeout=5)


def test_readyz_waits_for_the_engine_when_nothing_else_can_serve(make_gateway, engine_dir: Path) -> None:
    gw = make_gateway(sections(engine_dir, "--ready-after", "0.6", routes={"auto": {"models": ["tiny"]}}))
    waiting = readyz(gw)
    assert waiting.status_code == 503
    assert waiting.json()["routes_waiting"]["auto"].endswith("(tiny: local engine `local` is starting)")
    wait_for(lambda: readyz(gw).status_code == 200)


def test_route_reasoning_effort_reaches_the_engine_top_level(make_gateway, engine_dir: Path) -> None:
    gw = make_gateway(sections(engine_dir))
    wait_for(lambda: ask(gw, "local-only").headers.get("x-escalade-model") == "tiny")
    assert ask(gw, "think").status_code == 200
    bodies = [json.loads(line) for line in (engine_dir / "requests.jsonl").read_text().splitlines()]
    assert bodies[-1]["reasoning_effort"] == "high" and bodies[-1]["model"] == "fake"
    assert all("chat_template_kwargs" not in b for b in bodies)


def test_stopping_the_gateway_stops_the_engine_group(mock, engine_dir: Path, tmp_path: Path) -> None:
    path = write_policy(tmp_path / "policy.yaml", mock_policy(mock.base_url, **sections(engine_dir)))
    gw = GatewayThread(path).start()  # not make_gateway: this test stops it itself
    wait_for(lambda: gw.state.engines["local"].status.ready)
    supervisor = gw.state.engines["local"]
    pgid = supervisor.status.pgid
    record = runfiles.read_record(supervisor.record_path)
    assert record is not None and record.owner == "serve" and record.pgid == pgid
    assert len(runfiles.group_members(pgid)) >= 3
    gw.stop()
    assert runfiles.group_members(pgid) == []
    assert not supervisor.record_path.exists()
