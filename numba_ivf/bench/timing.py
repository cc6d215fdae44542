"""Timing shared by the demo, the harness and the comparison scripts."""

from __future__ import annotations

import math
import statistics
import time

from .._config import BENCH_MAX_INNER, BENCH_MIN_REPEAT_S


def median_time(fn, repeats: int, first_s: float | None = None) -> float:
    """Median over ``repeats`` of the time of one call of ``fn`` (seconds).

    With ``first_s`` (a warm-up call's time), a call faster than BENCH_MIN_REPEAT_S is
    repeated inside each timed repeat, so that timer resolution and one-off scheduling
    hiccups on a shared machine do not dominate.
    """
    inner = 1 if first_s is None else int(min(
        BENCH_MAX_INNER, max(1, math.ceil(BENCH_MIN_REPEAT_S / max(first_s, 1e-6)))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)
