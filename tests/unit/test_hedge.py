"""gateway.hedge.race: who wins, what happens to the loser, and how failures are reported."""

import asyncio

import pytest

from gateway.hedge import race
from providers.errors import UpstreamUnavailable


async def answer(value: str, gate: asyncio.Event | None = None, log: list | None = None) -> str:
    try:
        if gate is not None:
            await gate.wait()
        return value
    except asyncio.CancelledError:
        if log is not None:
            log.append(f"{value} cancelled")
        raise


async def fail(gate: asyncio.Event | None = None) -> str:
    if gate is not None:
        await gate.wait()
    raise UpstreamUnavailable("down")


def run(coro):
    return asyncio.run(coro)


def test_first_in_time_means_no_backup():
    started = []

    async def main():
        return await race(answer("first"), lambda: started.append(1) or answer("backup"), after_s=10)

    raced = run(main())
    assert (raced.winner, raced.result, raced.started, started) == (0, "first", 1, [])


def test_a_slow_first_is_raced_and_cancelled_when_the_backup_wins():
    log: list = []

    async def main():
        never = asyncio.Event()
        return await race(answer("first", never, log), lambda: answer("backup"), after_s=0.01)

    raced = run(main())
    assert (raced.winner, raced.result, raced.started) == (1, "backup", 2)
    assert log == ["first cancelled"]  # cancelled, and waited for, before race returned


def test_a_failure_waits_for_the_other_racer():
    async def main():
        gate = asyncio.Event()

        async def backup():
            await asyncio.sleep(0)
            gate.set()  # the first fails only once the backup runs
            await asyncio.sleep(0.01)
            return "backup"

        return await race(fail(gate), backup, after_s=0.01)

    raced = run(main())
    assert (raced.winner, raced.result) == (1, "backup")
    assert [(i, e.kind) for i, e in raced.errors] == [(0, "UpstreamUnavailable")]


def test_both_fail_reports_both_errors_first_first():
    async def main():
        gate = asyncio.Event()

        async def backup():
            try:
                raise UpstreamUnavailable("backup down")
            finally:
                gate.set()

        return await race(fail(gate), backup, after_s=0.01)

    raced = run(main())
    assert raced.winner is None and raced.started == 2
    assert [i for i, _ in raced.errors] == [0, 1]


def test_a_loser_that_succeeded_in_the_same_instant_is_released():
    released: list = []

    async def main():
        gate = asyncio.Event()

        async def backup():
            gate.set()
            return "backup"

        async def release(result):
            released.append(result)

        return await race(answer("first", gate), backup, after_s=0.01, release=release)

    raced = run(main())
    assert raced.result in ("first", "backup")
    assert released == [{"first": "backup", "backup": "first"}[raced.result]]


def test_bugs_propagate_and_stop_the_other_racer():
    log: list = []

    async def broken():
        raise KeyError("bug")

    async def main():
        never = asyncio.Event()
        return await race(answer("first", never, log), broken, after_s=0.01)

    with pytest.raises(KeyError):
        run(main())
    assert log == ["first cancelled"]
