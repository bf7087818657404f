"""The engine supervisor against a fake engine (a real process on a real port, but starting in ms)."""

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from local_engine import runfiles
from local_engine.supervisor import EngineStatus, EngineSupervisor, Phase, Timing, backoff_delay
from tests.unit.test_local_engine_fake import FAKE_ENGINE, free_port

FAST = Timing(
    poll_s=0.05,
    probe_timeout_s=0.5,
    unhealthy_after=2,
    restart_unhealthy_s=30.0,
    backoff_base_s=0.2,
    backoff_max_s=0.8,
    stable_s=30.0,
    stop_grace_s=2.0,
)


@dataclass(frozen=True)
class FakeConf:
    """Duck-types the policy's EngineConf."""

    model: str = "fake-model"
    command: list[str] = field(default_factory=lambda: [sys.executable, FAKE_ENGINE, "--model"])
    served_model_name: str | None = "fake"
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 20.0


def make(tmp_path: Path, *args: str, timing: Timing = FAST, ready_timeout_s: float = 20.0, **kw) -> EngineSupervisor:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    conf = FakeConf(args=["--state-dir", str(state), *args], ready_timeout_s=ready_timeout_s, **kw)
    seen: list[EngineStatus] = []
    sup = EngineSupervisor(
        "local",
        conf,
        f"http://127.0.0.1:{free_port()}/v1",
        run_dir=tmp_path / "run",
        timing=timing,
        on_change=seen.append,
    )
    sup.seen = seen  # type: ignore[attr-defined]
    return sup


async def until(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_backoff_doubles_up_to_the_cap() -> None:
    t = Timing(backoff_base_s=1, backoff_max_s=60)
    assert [backoff_delay(n, t) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


async def test_ready_metrics_then_stop_takes_the_whole_group(tmp_path: Path) -> None:
    sup = make(tmp_path, "--child", "--ready-after", "0.3")
    (tmp_path / "state" / "waiting").write_text("3")
    sup.start()
    await until(lambda: sup.status.phase is Phase.STARTING)
    assert not sup.status.ready
    assert await sup.wait_ready(10)
    await until(lambda: sup.status.load is not None)
    status = sup.status
    assert (status.load.waiting, status.load.running, status.load.kv_cache_usage) == (3.0, 1.0, 0.25)
    assert status.owned and status.pgid is not None
    pgid = status.pgid
    assert len(runfiles.group_members(pgid)) >= 3  # leash, engine, its helper
    record = runfiles.read_record(sup.record_path)
    assert record is not None and record.pgid == pgid and record.supervisor_pid == os.getpid()
    assert "--served-model-name fake --host 127.0.0.1" in " ".join(record.argv)

    (tmp_path / "state" / "waiting").write_text("7")
    await until(lambda: sup.status.load.waiting == 7.0)

    await sup.stop()
    assert sup.status.phase is Phase.STOPPED
    assert runfiles.group_members(pgid) == []
    assert not sup.record_path.exists()
    assert "launching engine local" in sup.log_path.read_text()
    phases = [s.phase for s in sup.seen]
    assert phases.index(Phase.STARTING) < phases.index(Phase.READY) < phases.index(Phase.STOPPING)


async def test_a_crashing_engine_is_restarted_with_growing_backoff(tmp_path: Path) -> None:
    sup = make(tmp_path, "--exit-after", "0.2", "--exit-code", "3")
    sup.start()
    try:
        await until(lambda: sup.status.restarts >= 4, timeout=15)
    finally:
        await sup.stop()
    assert sup.status.last_error is None or "exited with status 3" in sup.status.last_error
    restarts = [s for s in sup.seen if s.phase is Phase.RESTARTING]
    assert "exited with status 3" in (restarts[0].last_error or "")
    launches = sorted({s.since for s in sup.seen if s.phase is Phase.STARTING})
    gaps = [b - a for a, b in itertools.pairwise(launches)]
    # each cycle: the 0.2 s run, then a backoff of 0.2, 0.4, 0.8 s
    assert gaps[1] > gaps[0] + 0.1 and gaps[2] > gaps[1] + 0.2, gaps


async def test_an_engine_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    timing = Timing(poll_s=0.05, probe_timeout_s=0.5, stop_grace_s=0.5)
    sup = make(tmp_path, "--ignore-term", "--child", timing=timing)
    sup.start()
    assert await sup.wait_ready(10)
    pgid = sup.status.pgid
    began = time.monotonic()
    await sup.stop()
    took = time.monotonic() - began
    assert runfiles.group_members(pgid) == []
    assert 0.4 < took < 4, took


async def test_not_ready_in_time_means_stopped_and_launched_again(tmp_path: Path) -> None:
    sup = make(tmp_path, "--ready-after", "60", ready_timeout_s=0.5)
    sup.start()
    try:
        await until(lambda: sup.status.restarts >= 1)
        first = next(s for s in sup.seen if s.phase is Phase.RESTARTING)
        assert "not ready 0.5s after launch" in (first.last_error or "")
    finally:
        await sup.stop()
    assert sup.status.phase is Phase.STOPPED


async def test_failing_health_makes_it_unhealthy_then_ready_again(tmp_path: Path) -> None:
    sup = make(tmp_path)
    sup.start()
    try:
        assert await sup.wait_ready(10)
        (tmp_path / "state" / "unhealthy").touch()
        await until(lambda: sup.status.phase is Phase.UNHEALTHY)
        assert sup.status.load is None  # stale load figures are not kept
        (tmp_path / "state" / "unhealthy").unlink()
        await until(lambda: sup.status.ready)
        assert sup.status.restarts == 0
    finally:
        await sup.stop()


async def test_a_command_that_cannot_start_is_reported_and_retried(tmp_path: Path) -> None:
    sup = make(tmp_path, command=["/nonexistent/vllm", "serve"])
    sup.start()
    try:
        await until(lambda: sup.status.restarts >= 1)
    finally:
        await sup.stop()
    first = next(s for s in sup.seen if s.phase is Phase.RESTARTING)
    assert "exited with status 127" in first.last_error and "cannot start '/nonexistent/vllm'" in first.last_error


async def test_an_engine_already_answering_is_watched_not_launched(tmp_path: Path) -> None:
    sup = make(tmp_path)
    port = int(sup.origin.rsplit(":", 1)[1])
    other = subprocess.Popen([sys.executable, FAKE_ENGINE, "--model", "m", "--port", str(port)])
    try:
        await until(lambda: _answers(sup.origin), timeout=10)
        sup.start()
        assert await sup.wait_ready(5)
        assert not sup.status.owned and sup.status.pgid is None
        assert "did not start" in (sup.status.last_error or "")
        await sup.stop()
        assert other.poll() is None  # not ours to stop
        assert not sup.record_path.exists()
    finally:
        other.kill()
        other.wait()


def _answers(origin: str) -> bool:
    import httpx

    try:
        return httpx.get(origin + "/health", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


SUPERVISE_THEN_HANG = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from local_engine.supervisor import EngineSupervisor, Timing
    from tests.unit.test_local_engine_supervisor import FakeConf

    async def main():
        conf = FakeConf(args=["--child", "--ignore-term"])
        timing = Timing(poll_s=0.05, stop_grace_s=0.5)
        sup = EngineSupervisor("local", conf, {url!r}, run_dir=Path({run!r}), timing=timing)
        sup.start()
        assert await sup.wait_ready(20)
        print(sup.status.pgid, flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
    """
)


def test_the_engine_group_dies_with_its_supervisor(tmp_path: Path) -> None:
    """Even SIGKILL of the supervising process (no cleanup code runs) takes the engine down: the leash."""
    repo = str(Path(__file__).resolve().parents[2])
    code = SUPERVISE_THEN_HANG.format(repo=repo, url=f"http://127.0.0.1:{free_port()}/v1", run=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=repo)
    try:
        pgid = int(proc.stdout.readline())
        assert len(runfiles.group_members(pgid)) >= 3
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        end = time.monotonic() + 6  # poll (0.25 s) + grace (0.5 s: the engine ignores SIGTERM) + margin
        while runfiles.group_members(pgid) and time.monotonic() < end:
            time.sleep(0.05)
        assert runfiles.group_members(pgid) == []
    finally:
        proc.kill()
        proc.wait()
