"""The retry budget: retries of a deployment may add at most `ratio` x its first attempts, plus
`min_per_s` a second, over the last `WINDOW_S` seconds. Without it, every request retrying a failing
deployment multiplies its outage (a 100 % failure turns N requests into N x attempts). When the
budget is spent, dispatch falls back to the next deployment instead of retrying.

No I/O: the ledger is plain counters and time is an argument. Each replica keeps its own (retry
decisions sit on the request path and must not wait for a shared store); a fleet of N replicas can
add ratio x first attempts + N x min_per_s retries a second.
"""

from policies.schema import RetryBudgetConf

WINDOW_S = 10


def retry_allowed(first_attempts: int, retries: int, conf: RetryBudgetConf, window_s: float = WINDOW_S) -> bool:
    """May one more retry go out, given the first attempts and retries seen in the last `window_s`?"""
    return retries + 1 <= conf.ratio * first_attempts + conf.min_per_s * window_s


class RetryLedger:
    """First attempts and retries per deployment, in one-second slices over the last WINDOW_S."""

    __slots__ = ("_slices",)

    def __init__(self) -> None:
        self._slices: dict[str, dict[int, list[int]]] = {}

    def first_attempt(self, deployment: str, now: float) -> None:
        self._slice(deployment, now)[0] += 1

    def try_retry(self, deployment: str, conf: RetryBudgetConf, now: float) -> bool:
        """True (and the retry is counted) when the budget allows one more retry now."""
        first, retries = self.counts(deployment, now)
        if not retry_allowed(first, retries, conf):
            return False
        self._slice(deployment, now)[1] += 1
        return True

    def counts(self, deployment: str, now: float) -> tuple[int, int]:
        """(first attempts, retries) of the last WINDOW_S seconds."""
        slices = self._slices.get(deployment)
        if not slices:
            return 0, 0
        oldest = int(now) - WINDOW_S + 1
        for second in [s for s in slices if s < oldest]:
            del slices[second]
        return sum(c[0] for c in slices.values()), sum(c[1] for c in slices.values())

    def _slice(self, deployment: str, now: float) -> list[int]:
        slices = self._slices.setdefault(deployment, {})
        second = int(now)
        counts = slices.get(second)
        if counts is None:
            counts = slices[second] = [0, 0]
            if len(slices) > WINDOW_S:
                self.counts(deployment, now)  # prune
        return counts
