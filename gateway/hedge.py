"""Hedging: race a backup deployment against a slow first one; the first to produce a token wins.

The first attempt starts alone. If it has not produced its first token (a stream's commit point, or the
whole unary answer) after `after_s`, the backup starts beside it. The first success wins and the other is
cancelled, which closes its upstream connection. A failure does not end the race while the other runs.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from providers.errors import GatewayError

R = TypeVar("R")


@dataclass(slots=True)
class Raced(Generic[R]):
    winner: int | None
    """0 (the first) or 1 (the backup); None when every started attempt failed."""
    result: R | None
    started: int
    """1 when the first finished before `after_s` (the backup never ran), else 2."""
    errors: list[tuple[int, GatewayError]] = field(default_factory=list)
    """(0 or 1, error) of each attempt that failed, first's first."""


async def race(
    first: Awaitable[R],
    backup: Callable[[], Awaitable[R]],
    after_s: float,
    release: Callable[[R], Awaitable[None]] | None = None,
) -> Raced[R]:
    """Run `first`; start `backup()` when `first` is still running after `after_s`; the first success wins.

    The loser is cancelled; a loser that succeeded in the same instant is handed to `release` (e.g. to
    close its open stream). Errors other than GatewayError (bugs, cancellation) propagate after both
    attempts are stopped.
    """
    tasks: dict[asyncio.Task[R], int] = {asyncio.ensure_future(first): 0}
    errors: list[tuple[int, GatewayError]] = []
    winner: asyncio.Task[R] | None = None
    try:
        done, _ = await asyncio.wait(tasks, timeout=after_s)
        if not done:
            tasks[asyncio.ensure_future(backup())] = 1
        while True:
            for task in sorted(done, key=tasks.__getitem__):
                error = task.exception()
                if error is None:
                    winner = task
                    return Raced(winner=tasks[task], result=task.result(), started=len(tasks), errors=errors)
                if not isinstance(error, GatewayError):
                    raise error
                errors.append((tasks[task], error))
            running = [task for task in tasks if not task.done()]
            if not running:
                return Raced(winner=None, result=None, started=len(tasks), errors=sorted(errors, key=lambda e: e[0]))
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _stop(tasks, winner, release)


async def _stop(
    tasks: "dict[asyncio.Task[R], int]",
    winner: "asyncio.Task[R] | None",
    release: Callable[[R], Awaitable[None]] | None,
) -> None:
    """Cancel the attempts still running and wait until they have closed their upstream connections;
    release a loser that succeeded anyway."""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    for task in tasks:
        if task is not winner and release is not None and not task.cancelled() and task.exception() is None:
            await release(task.result())
