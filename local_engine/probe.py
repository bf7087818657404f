"""One-shot, synchronous looks at an engine and a by-hand stop: what `escalade engine status|stop` use."""

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from local_engine import runfiles
from local_engine.command import engine_address
from local_engine.metrics import EngineLoad, parse_metrics


@dataclass(frozen=True, slots=True)
class Seen:
    state: str
    """ready | not ready (its process group is alive, /health does not answer 200) | down."""
    origin: str
    record: runfiles.EngineRecord | None
    """Who runs it, when an escalade process does (and the group is alive)."""
    load: EngineLoad | None


def probe(name: str, base_url: str, *, run_dir: Path | None = None, timeout_s: float = 2.0) -> Seen:
    address = engine_address(base_url)
    path = runfiles.record_path(run_dir or runfiles.default_run_dir(), name, address.port)
    record = runfiles.read_record(path)
    if record is not None and not runfiles.group_alive(record.pgid):
        record = None
    with httpx.Client(base_url=address.origin, timeout=timeout_s, trust_env=False) as http:
        try:
            healthy = http.get("/health").status_code == 200
            metrics = http.get("/metrics") if healthy else None
        except httpx.HTTPError:
            healthy, metrics = False, None
    load = parse_metrics(metrics.text) if metrics is not None and metrics.status_code == 200 else None
    state = "ready" if healthy else ("not ready" if record is not None else "down")
    return Seen(state=state, origin=address.origin, record=record, load=load)


def stop_engine(
    name: str, base_url: str, *, grace_s: float, force: bool = False, run_dir: Path | None = None
) -> tuple[bool, str]:
    """Stop the engine an escalade process runs at `base_url`. Returns (success, what happened).

    An engine run by `escalade engine start` is stopped through its supervisor (SIGTERM to it), so
    that it does not restart the engine. One run by `escalade serve` is left alone unless `force`
    (the gateway would restart it). Without a live supervisor, the group is signalled directly.
    """
    address = engine_address(base_url)
    path = runfiles.record_path(run_dir or runfiles.default_run_dir(), name, address.port)
    record = runfiles.read_record(path)
    if record is None or not runfiles.group_alive(record.pgid):
        runfiles.remove_record(path)
        return True, "not running (no live engine recorded in this run directory)"
    supervised = runfiles.process_alive(record.supervisor_pid)
    if supervised and record.owner == "serve" and not force:
        return False, (
            f"run by `escalade serve` (pid {record.supervisor_pid}); stop the gateway instead, "
            "or pass --force (the gateway will start it again)"
        )
    if supervised and record.owner != "serve":
        os_kill(record.supervisor_pid, signal.SIGTERM)
        if _wait_gone(record.pgid, grace_s + 10.0):
            return True, f"stopped by its supervisor (pid {record.supervisor_pid})"
    killed = terminate_group(record.pgid, grace_s)
    runfiles.remove_record(path, record.pgid)
    how = "SIGKILL after the grace period" if killed else "SIGTERM"
    return True, f"stopped process group {record.pgid} ({how})"


def terminate_group(pgid: int, grace_s: float) -> bool:
    """SIGTERM the group, wait up to `grace_s`, SIGKILL the rest. True when SIGKILL was needed."""
    runfiles.signal_group(pgid, signal.SIGTERM)
    if _wait_gone(pgid, grace_s):
        return False
    runfiles.signal_group(pgid, signal.SIGKILL)
    _wait_gone(pgid, 5.0)
    return True


def os_kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pgid: int, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while runfiles.group_alive(pgid):
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True
