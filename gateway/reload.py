"""Hot reload: watch the policy file, validate a new version off the request path, swap atomically.

An invalid candidate is refused and logged; the old policy keeps serving and the admin status
endpoint shows what was wrong. Provider clients whose config did not change are carried over;
the others are closed after the longest time an in-flight request could still be using them.
"""

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from gateway import logs
from gateway.runtime import build_runtime, policy_version, retire
from gateway.state import GatewayState
from policies.loader import PolicyError, parse_policy
from providers.secrets import MissingSecret

log = logging.getLogger("escalade.reload")

_background: set[asyncio.Task[None]] = set()


async def reload_now(state: GatewayState, *, force: bool = False) -> bool:
    """Load the policy file if it changed (or `force`). True when the live policy is now the file's."""
    path = state.policy_path
    if path is None:
        return False
    state.status.last_checked_at = time.time()
    before = _signature(path)
    try:
        text = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        return _reject(state, f"{path}: cannot read the policy file ({exc.strerror})")
    if _signature(path) != before:  # written while we read it: the watcher tries again once it settles
        return False
    if not force and policy_version(text) == state.runtime.version:
        state.status.last_error = None  # the file is back to what is serving
        state.status.last_error_at = None
        return True
    try:
        policy = await asyncio.to_thread(parse_policy, text, str(path))
        runtime = await asyncio.to_thread(build_runtime, policy, text, state.runtime)
    except PolicyError as exc:
        return _reject(state, str(exc))
    except (MissingSecret, ValueError) as exc:
        return _reject(state, f"{path}: {exc}")
    old = state.swap(runtime)
    logs.reconfigure(runtime.policy.telemetry)
    log.info("policy %s loaded from %s (was %s)", runtime.version, path, old.version)
    task = asyncio.create_task(retire(old, runtime, grace_s=old.policy.timeouts.total_s))
    _background.add(task)
    task.add_done_callback(_background.discard)
    return True


def _reject(state: GatewayState, problems: str) -> bool:
    state.status.rejected += 1
    state.status.last_error = problems
    state.status.last_error_at = time.time()
    log.error("policy reload refused; still serving %s:\n%s", state.runtime.version, problems)
    return False


class PolicyWatcher:
    """Polls the policy file's stat every `interval_s` and reloads once a change has settled.

    A file is read only after its size, mtime and inode stayed the same for one whole interval: a
    policy written in place (truncate, then write) is never read half-written, which could otherwise
    be a valid policy with whole sections missing.
    """

    def __init__(self, state: GatewayState, interval_s: float) -> None:
        self._state = state
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._state.policy_path is not None and self._interval_s > 0:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        path = self._state.policy_path
        assert path is not None
        seen = _signature(path)
        settling = False
        while True:
            await asyncio.sleep(self._interval_s)
            current = _signature(path)
            if current != seen:  # changed: wait until it stops changing (a write may be half done)
                seen, settling = current, True
                continue
            if not settling:
                continue
            settling = False
            try:
                await reload_now(self._state)
            except Exception:  # the watcher must outlive any surprise
                log.exception("policy reload crashed; still serving %s", self._state.runtime.version)


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
