"""The timing every benchmark shares: repeated wall-clock runs of one callable."""
from __future__ import annotations

import statistics
import time


def median_time(fn, repeats: int) -> tuple[float, float, float]:
    """(median, min, max) seconds of `repeats` calls of fn()."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)
