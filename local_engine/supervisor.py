"""Launches one engine, watches /health and /metrics, restarts it with backoff, stops its process group.

One EngineSupervisor per provider with `engine:`. Its life:

    starting --/health 200--> ready --3 failed probes--> unhealthy --/health 200--> ready
       |  \\-- not ready within engine.ready_timeout_s: stopped, then restarting
       \\---- the process exits (from any phase) --> restarting --backoff--> starting

Backoff doubles from `backoff_base_s` up to `backoff_max_s` and starts over once an engine has
been ready for `stable_s`. An engine unhealthy for `restart_unhealthy_s` while its process lives
on is restarted as well. Stopping sends SIGTERM to the engine's whole process group, waits
`stop_grace_s`, then sends SIGKILL to whatever is left.

If, when the supervisor starts, an engine already answers at the address (or another live
escalade process has a record for it, see runfiles.py), the supervisor only watches it: it never
launches, restarts or stops an engine it did not launch.
"""

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import aiohttp

from local_engine import leash, runfiles
from local_engine.command import EngineConfig, build_argv, engine_address, engine_env
from local_engine.metrics import EngineLoad, parse_metrics

log = logging.getLogger("escalade.engine")

LEASH = str(Path(leash.__file__).resolve())
_LOG_HEADER = "=== escalade: launching engine"
LOG_ROTATE_BYTES = 64 * 2**20


class Phase(StrEnum):
    STARTING = "starting"
    """Launched (or watched) and not yet answering /health."""
    READY = "ready"
    UNHEALTHY = "unhealthy"
    """Was ready; /health has failed several probes in a row."""
    RESTARTING = "restarting"
    """Exited or was stopped for failing; waiting out the backoff."""
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Timing:
    poll_s: float = 0.5
    """Interval of the /health and /metrics probes."""
    probe_timeout_s: float = 2.0
    unhealthy_after: int = 3
    """Consecutive failed /health probes before a ready engine counts as unhealthy."""
    restart_unhealthy_s: float = 60.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    stable_s: float = 60.0
    """Ready this long: the next failure starts the backoff over."""
    stop_grace_s: float = 20.0


def backoff_delay(failures: int, timing: Timing) -> float:
    """Delay before the restart that follows `failures` consecutive failures (1, 2, 4, ... up to the cap)."""
    return min(timing.backoff_max_s, timing.backoff_base_s * 2 ** max(0, failures - 1))


@dataclass(frozen=True, slots=True)
class EngineStatus:
    """A snapshot of one engine, replaced (never mutated) on every change."""

    name: str
    origin: str
    phase: Phase
    owned: bool
    """Launched by this process (False: watching an engine something else runs)."""
    pgid: int | None = None
    restarts: int = 0
    since: float = 0.0
    """When the current phase began (time.time())."""
    last_exit: int | None = None
    last_error: str | None = None
    load: EngineLoad | None = None
    log_path: str | None = None

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY


class EngineSupervisor:
    """Keeps one engine running. `start()` inside an event loop, `await stop()` before the loop ends."""

    def __init__(
        self,
        name: str,
        conf: EngineConfig,
        base_url: str,
        *,
        run_dir: Path,
        owner: str = "serve",
        timing: Timing = Timing(),
        on_change: Callable[[EngineStatus], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = build_argv(conf, base_url)  # raises ValueError before anything is launched
        address = engine_address(base_url)
        self.origin = address.origin
        self._env = engine_env(conf, os.environ)
        self._ready_timeout_s = conf.ready_timeout_s
        self._owner = owner
        self._timing = timing
        self._on_change = on_change
        self.record_path = runfiles.record_path(run_dir, name, address.port)
        self.log_path = runfiles.log_path(run_dir, name, address.port)
        self._status = EngineStatus(name=name, origin=self.origin, phase=Phase.STOPPED, owned=True, since=time.time())
        self._stopping = False
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def status(self) -> EngineStatus:
        return self._status

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"engine {self.name}")

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the engine is ready (now or within `timeout` seconds)."""
        if self._status.ready:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self._status.ready:
                    self._ready.clear()
                    await self._ready.wait()
        return self._status.ready

    async def stop(self) -> None:
        """Stop the engine (if this process launched it) and the probes. Idempotent."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a failure was logged where it happened
                await self._task

    # ------------------------------------------------------------ the loop

    async def _run(self) -> None:
        # aiohttp rather than httpx for the probes: httpx logs every request at INFO (4 lines a second).
        timeout = aiohttp.ClientTimeout(total=self._timing.probe_timeout_s)
        async with aiohttp.ClientSession(base_url=self.origin, timeout=timeout) as http:
            self._http = http
            try:
                other = await self._run_elsewhere()
                if other is not None:
                    await self._watch_only(other)
                else:
                    await self._keep_running()
            except Exception:  # a bug here must not leave an engine behind or kill the gateway
                log.exception("engine %s: supervisor failed", self.name)
                raise
            finally:
                self._set(phase=Phase.STOPPED, load=None)

    async def _run_elsewhere(self) -> str | None:
        """Who else runs an engine at this address, if anyone (then this supervisor only watches)."""
        record = runfiles.read_record(self.record_path)
        if record is not None and record.supervisor_pid != os.getpid() and _alive(record):
            return f"`escalade {record.owner}` (pid {record.supervisor_pid})"
        if await self._probe_health():
            return "a process escalade did not start"
        return None

    async def _watch_only(self, who: str) -> None:
        log.warning("engine %s: %s already serves %s; watching it, not launching another", self.name, who, self.origin)
        self._set(phase=Phase.STARTING, owned=False, last_error=f"run by {who}")
        failures = 0
        while not self._stopping:
            healthy = await self._probe()
            failures = 0 if healthy else failures + 1
            if healthy:
                self._set(phase=Phase.READY)
            elif self._status.phase is Phase.READY and failures >= self._timing.unhealthy_after:
                self._set(phase=Phase.UNHEALTHY, load=None)
            await self._sleep(self._timing.poll_s)

    async def _keep_running(self) -> None:
        failures = 0
        while not self._stopping:
            ready_for = await self._run_once()
            if self._stopping:
                break
            failures = 1 if ready_for >= self._timing.stable_s else failures + 1
            delay = backoff_delay(failures, self._timing)
            self._set(phase=Phase.RESTARTING, restarts=self._status.restarts + 1, load=None, pgid=None)
            log.warning("engine %s: %s; restarting in %.1fs", self.name, self._status.last_error, delay)
            await self._sleep(delay)

    async def _run_once(self) -> float:
        """Launch, then probe until the engine exits or must be stopped. Returns how long it was ready."""
        try:
            proc = self._launch()
        except OSError as exc:
            self._set(last_error=f"cannot launch: {exc}")
            return 0.0
        self._set(phase=Phase.STARTING, pgid=proc.pid, last_error=None, load=None)
        log.info("engine %s: launched (process group %d, log %s)", self.name, proc.pid, self.log_path)
        try:
            return await self._probe_until_done(proc)
        finally:
            await self._terminate(proc)
            runfiles.remove_record(self.record_path, proc.pid)

    async def _probe_until_done(self, proc: subprocess.Popen[bytes]) -> float:
        t = self._timing
        launched = time.monotonic()
        ready_at: float | None = None
        failing_since: float | None = None
        failures = 0
        while not self._stopping:
            code = proc.poll()
            if code is not None:  # not ready from now on (routing must not wait for the cleanup)
                why = f"exited with status {code}{_last_line(self.log_path)}"
                self._set(phase=Phase.RESTARTING, last_exit=code, last_error=why, load=None)
                break
            healthy = await self._probe()
            now = time.monotonic()
            phase = self._status.phase
            failures = 0 if healthy else failures + 1
            if healthy:
                failing_since = None
                if phase is not Phase.READY:
                    if ready_at is None:
                        ready_at = now
                        log.info("engine %s: ready after %.1fs at %s", self.name, now - launched, self.origin)
                    self._set(phase=Phase.READY)
            elif phase is Phase.STARTING and now - launched > self._ready_timeout_s:
                self._set(last_error=f"not ready {self._ready_timeout_s:g}s after launch (engine.ready_timeout_s)")
                break
            elif phase is Phase.READY and failures >= t.unhealthy_after:
                failing_since = now
                self._set(phase=Phase.UNHEALTHY, load=None)
                log.warning("engine %s: /health failed %d times in a row", self.name, failures)
            elif failing_since is not None and now - failing_since > t.restart_unhealthy_s:
                self._set(last_error=f"unhealthy for {t.restart_unhealthy_s:g}s")
                break
            await self._sleep(t.poll_s)
        return 0.0 if ready_at is None else time.monotonic() - ready_at

    # ------------------------------------------------------------ processes

    def _launch(self) -> subprocess.Popen[bytes]:
        self.log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:  # one old log is kept, as <name>.log.1
                self.log_path.replace(self.log_path.with_suffix(".log.1"))
        leash_argv = [sys.executable, LEASH, "--parent", str(os.getpid()), "--grace", f"{self._timing.stop_grace_s:g}"]
        with self.log_path.open("ab") as out:
            out.write(f"\n{_LOG_HEADER} {self.name} at {time.ctime()}: {self.argv}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                [*leash_argv, "--", *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=True,
                close_fds=True,
            )
        record = runfiles.EngineRecord(
            provider=self.name,
            origin=self.origin,
            pgid=proc.pid,
            supervisor_pid=os.getpid(),
            owner=self._owner,
            log=str(self.log_path),
            started_at=time.time(),
            argv=self.argv,
        )
        runfiles.write_record(self.record_path, record)
        return proc

    async def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the group (if the leader still runs), wait the grace period, SIGKILL what is left."""
        pgid = proc.pid
        if proc.poll() is None:
            if self._stopping:
                self._set(phase=Phase.STOPPING, load=None)
            log.info("engine %s: SIGTERM to process group %d", self.name, pgid)
            runfiles.signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + self._timing.stop_grace_s
            while time.monotonic() < deadline and (proc.poll() is None or runfiles.group_alive(pgid)):
                await asyncio.sleep(0.1)
        if runfiles.group_alive(pgid):
            log.warning("engine %s: SIGKILL to what is left of process group %d", self.name, pgid)
        runfiles.signal_group(pgid, signal.SIGKILL)
        end = time.monotonic() + 5.0
        while (proc.poll() is None or runfiles.group_alive(pgid)) and time.monotonic() < end:
            await asyncio.sleep(0.05)
        self._set(last_exit=proc.returncode)
        if self._stopping:
            log.info("engine %s: stopped (exit status %s)", self.name, proc.returncode)

    # ------------------------------------------------------------ probes

    async def _probe(self) -> bool:
        """/health, then /metrics when healthy. Updates the load figures."""
        healthy = await self._probe_health()
        if healthy:
            load = await self._scrape()
            if load is not None:
                self._set(load=load)
        return healthy

    async def _probe_health(self) -> bool:
        assert self._http is not None
        try:
            async with self._http.get("/health") as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _scrape(self) -> EngineLoad | None:
        assert self._http is not None
        try:
            async with self._http.get("/metrics") as response:
                text = await response.text(errors="replace")
                return parse_metrics(text) if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when stop() is called."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    def _set(self, **changes: object) -> None:
        old = self._status
        if "phase" in changes and changes["phase"] is not old.phase:
            changes["since"] = time.time()
        new = replace(old, **changes)  # type: ignore[arg-type]
        if new == old:
            return
        self._status = new
        if new.ready:
            self._ready.set()
        if self._on_change is not None:
            try:
                self._on_change(new)
            except Exception:
                log.exception("engine %s: status listener failed", self.name)


def _alive(record: runfiles.EngineRecord) -> bool:
    return runfiles.process_alive(record.supervisor_pid) and runfiles.group_alive(record.pgid)


def _last_line(path: Path) -> str:
    """`: <the engine's last log line>`, to say why it died without opening the log."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    if not lines or lines[-1].startswith(_LOG_HEADER):
        return ""
    return f": {lines[-1][:300]}"
