"""The gateway's live store: built from the policy's `state:` section, started and stopped with the
gateway, and rebuilt when a hot reload changes that section.

A reload that changes the backend (or its URL variable, key prefix or sync interval) restarts the
store: the old one pushes what it buffered and stops, the new one starts (a new memory store starts
empty; a Redis store pulls the fleet's state). The routing snapshot is kept until the new store
publishes its own. If the new store cannot be built (its URL variable is unset) the old one keeps
serving and the problem is logged and shown in /readyz.
"""

import asyncio
import contextlib
import logging

from gateway.state import GatewayState
from gateway.store import build_store
from gateway.store.base import Store
from policies.health import Health
from policies.schema import StateConf

log = logging.getLogger("escalade.state")

CHECK_S = 1.0


class StoreKeeper:
    def __init__(self, state: GatewayState) -> None:
        self._state = state
        self.conf: StateConf = state.runtime.policy.state
        self.problem: str | None = None
        store = build_store(self.conf, self._policy, self._publish)
        self._install(store, None)
        self._task: asyncio.Task[None] | None = None

    @property
    def store(self) -> Store:
        assert self._state.store is not None
        return self._state.store  # type: ignore[no-any-return]

    def _policy(self):  # type: ignore[no-untyped-def]
        return self._state.runtime.policy

    def _publish(self, health: Health) -> None:
        self._state.health = health

    def _install(self, new: Store, old: Store | None) -> None:
        observers = self._state.observers
        if old is not None and old in observers:
            observers[observers.index(old)] = new
        else:
            observers.append(new)
        self._state.store = new

    async def start(self) -> None:
        await self.store.start()
        self._task = asyncio.create_task(self._watch(), name="escalade-state-keeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.store.stop()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_S)
            conf = self._state.runtime.policy.state
            if conf == self.conf:
                continue
            try:
                await self._switch(conf)
            except Exception:
                log.exception("state store switch failed; the old store keeps serving")

    async def _switch(self, conf: StateConf) -> None:
        try:
            new = build_store(conf, self._policy, self._publish)
        except ValueError as exc:
            if self.problem != str(exc):
                log.error("policy state section changed but the new store cannot be built: %s", exc)
            self.problem = str(exc)
            return
        old = self.store
        await new.start()
        self._install(new, old)
        self.conf, self.problem = conf, None
        log.info("state store restarted: %s -> %s", old.backend, new.backend)
        await old.stop()

    def status(self) -> dict[str, object]:
        status = dict(self.store.status())
        if self.problem:
            status["problem"] = self.problem
        return status
