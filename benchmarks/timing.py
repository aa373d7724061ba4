"""Wall-clock timing shared by the benchmark scripts (run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import time
from typing import Callable


def timed(run: Callable[[], object], repeats: int, warmup: int = 0) -> list[float]:
    """Seconds of each of ``repeats`` runs, after ``warmup`` untimed runs."""
    for _ in range(warmup):
        run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return seconds
