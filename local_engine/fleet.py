"""The engines one process runs: started together, stopped together (concurrently)."""

import asyncio
from collections.abc import Iterator

from local_engine.supervisor import EngineStatus, EngineSupervisor


class Engines:
    """A set of EngineSupervisors keyed by provider name."""

    def __init__(self, supervisors: list[EngineSupervisor] | None = None) -> None:
        self._by_name = {s.name: s for s in supervisors or []}

    def __iter__(self) -> Iterator[EngineSupervisor]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __getitem__(self, name: str) -> EngineSupervisor:
        return self._by_name[name]

    def start(self) -> None:
        for supervisor in self:
            supervisor.start()

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self))

    async def wait_ready(self, timeout: float | None = None) -> bool:
        results = await asyncio.gather(*(s.wait_ready(timeout) for s in self))
        return all(results)

    def statuses(self) -> dict[str, EngineStatus]:
        return {name: s.status for name, s in self._by_name.items()}
