"""Timing helpers shared by the scenarios: progress lines with an ETA,
interleaved rounds, and summaries (median, min, max) computed from raw samples.

Noise control lives here: ``rounds`` yields warm-up rounds first (flagged, so
their samples are dropped) and rotates the order of strategies every round, so
no strategy always runs first or right after another one's cache churn.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from typing import Iterator, Sequence, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Progress:
    """One line per step on stderr: ``[scenario 12/40] what ... elapsed, ETA``."""

    def __init__(self, scenario: str, total: int, stream=sys.stderr) -> None:
        self.scenario = scenario
        self.total = max(1, total)
        self.done = 0
        self.start = time.monotonic()
        self.stream = stream

    def step(self, what: str, weight: float = 1) -> None:
        """One step done; ``weight`` is its share of ``total`` (big sizes weigh more)."""
        self.done += weight
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        print(f"[{self.scenario} {100 * self.done / self.total:3.0f}%] {what}  "
              f"({elapsed:.0f}s elapsed, ETA {eta:.0f}s)", file=self.stream, flush=True)


def rounds(strategies: Sequence[T], warmup: int, repeats: int) -> Iterator[tuple[int, bool, list[T]]]:
    """(round, is_warmup, strategies in this round's rotated order)."""
    n = len(strategies)
    for r in range(warmup + repeats):
        shift = r % n if n else 0
        yield r, r < warmup, list(strategies[shift:]) + list(strategies[:shift])


def summary(samples: Sequence[float]) -> dict:
    """Median, min and max of raw samples (kept in the same units)."""
    if not samples:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "n": len(samples)}


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> dict:
    """Ratios computed round by round (same round = same machine state), then summarised."""
    pairs = [a / b for a, b in zip(numerators, denominators) if b > 0]
    return summary(pairs)


class Timer:
    __slots__ = ("t0", "elapsed")

    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.elapsed = time.perf_counter() - self.t0
