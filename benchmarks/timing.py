"""The timing every benchmark shares: repeated wall-clock runs of one callable."""
from __future__ import annotations

import statistics
import time


def seconds(fn) -> float:
    """Wall-clock seconds of one call of fn()."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn, repeats: int) -> tuple[float, float, float]:
    """(median, min, max) seconds of `repeats` calls of fn()."""
    times = [seconds(fn) for _ in range(repeats)]
    return statistics.median(times), min(times), max(times)


def paired_ratios(fn, reference, repeats: int) -> dict:
    """fn's time over reference's, each repeat timing the two back to back so that a machine
    whose speed drifts (a busy neighbour) moves both alike: the median ratio with its range,
    and the median seconds of each."""
    pairs = [(seconds(fn), seconds(reference)) for _ in range(repeats)]
    ratios = [a / b for a, b in pairs]
    return {"ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "seconds": statistics.median(a for a, _ in pairs),
            "reference_seconds": statistics.median(b for _, b in pairs)}
