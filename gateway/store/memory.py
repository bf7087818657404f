"""The in-process store (the default): one replica, zero setup, every change seen at once."""

import asyncio
import contextlib
import logging
import time
from typing import Any

from gateway.store.base import Clock, PolicySource, Publish, retry_allowed
from gateway.store.ledger import Ledger
from policies.health import Health, ModelHealth, Outcome
from policies.spend import Period

log = logging.getLogger("escalade.state")


def _ignore(_: Health) -> None:
    return None


class MemoryStore:
    backend = "memory"

    def __init__(self, policy: PolicySource, publish: Publish = _ignore, clock: Clock = time.time) -> None:
        self._policy = policy
        self._publish_to = publish
        self.clock = clock
        self.ledger = Ledger()
        self._snapshot: dict[str, ModelHealth] = {}
        self._task: asyncio.Task[None] | None = None

    def __call__(self, outcome: Outcome) -> None:
        if self.ledger.observe(outcome, self._policy().resilience, self.clock()):
            self._publish()

    async def start(self) -> None:
        self._publish()
        self._task = asyncio.create_task(self._run(), name="escalade-state")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def sync(self) -> None:
        self._publish()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._policy().state.sync_interval_s)
            try:
                self._publish()
            except Exception:  # the loop must outlive any surprise
                log.exception("state snapshot failed")

    def _publish(self) -> None:
        policy = self._policy()
        snapshot = self.ledger.health(policy.models, policy.resilience, self.clock())
        if snapshot != self._snapshot:
            self._snapshot = snapshot
            self._publish_to(snapshot)

    def health(self) -> Health:
        return self._snapshot

    def half_open(self, deployment: str) -> bool:
        entry = self._snapshot.get(deployment)
        return entry is not None and entry.circuit == "half_open"

    async def claim_probe(self, deployment: str) -> bool:
        breaker = self._policy().resilience.breaker
        return self.ledger.claim_probe(deployment, breaker.half_open_probes, breaker.open_s, self.clock())

    def first_attempt(self, deployment: str) -> None:
        self.ledger.retries.first_attempt(deployment, self.clock())

    def allow_retry(self, deployment: str) -> bool:
        conf = self._policy().resilience.retry_budget
        return retry_allowed(self._snapshot, self.ledger.retries, deployment, conf, self.clock())

    def spent(self, key: str, period: Period) -> float | None:
        return self.ledger.spent(key, period, self.clock())

    def record_spend(self, key: str, usd: float) -> None:
        if usd > 0:
            self.ledger.add_spend(key, usd, self.clock())

    async def admit(self, key: str, rpm: int | None, tpm: int | None) -> float:
        return self.ledger.admit(key, rpm, tpm, self.clock())

    def add_tokens(self, key: str, tokens: int, tpm: int) -> None:
        if tokens > 0:
            self.ledger.add_tokens(key, tokens, tpm, self.clock())

    def status(self) -> dict[str, Any]:
        return {"backend": self.backend, "shared": False}
