"""Benchmark-only GC knobs shared by the launchers (nothing here changes the gateway's code)."""

import gc
import sys
import threading
import time


class GcStats:
    """gc.callbacks hook: collections, seconds and objects collected per generation."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.count = [0, 0, 0]
        self.secs = [0.0, 0.0, 0.0]
        self.collected = [0, 0, 0]
        self.started = time.monotonic()

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.t0 = time.perf_counter()
            return
        g = info["generation"]
        self.count[g] += 1
        self.secs[g] += time.perf_counter() - self.t0
        self.collected[g] += info["collected"]

    def report(self) -> str:
        wall = time.monotonic() - self.started
        gens = ", ".join(
            f"gen{g}: {self.count[g]} runs {self.secs[g] * 1e3:.0f} ms ({self.collected[g]} objects freed)"
            for g in range(3)
        )
        total = sum(self.secs)
        return f"gc over {wall:.0f}s: {total * 1e3:.0f} ms in total = {100 * total / wall:.2f}% of wall; {gens}"

    def loop(self) -> None:
        while True:
            time.sleep(5)
            print(self.report(), file=sys.stderr, flush=True)


def apply(*, stats: bool, freeze: bool, threshold: int) -> None:
    """--gc-stats: log GC time every 5 s; --gc-freeze: gc.freeze() now; --gc-threshold N: gen-0 threshold."""
    if stats:
        hook = GcStats()
        gc.callbacks.append(hook)
        threading.Thread(target=hook.loop, daemon=True).start()
    if freeze:
        gc.collect()
        gc.freeze()
    if threshold:
        _, g1, g2 = gc.get_threshold()
        gc.set_threshold(threshold, g1, g2)
