"""Helpers of the benchmarks: interleaved rounds, medians, one line per result."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(rounds: int, **variants: Callable[[int], None]) -> dict[str, list[float]]:
    """Run each variant once per round, alternating, so drift (disk, caches, the other core)
    hits all of them alike. Each variant gets the round number (to use fresh folders)."""
    out: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        order = list(variants.items())
        if r % 2:
            order.reverse()
        for name, fn in order:
            t = time.perf_counter()
            fn(r)
            out[name].append(time.perf_counter() - t)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired(xs: list[float], ys: list[float]) -> float:
    """The median of ``xs[i] - ys[i]``: the cost of x over y from rounds of :func:`interleaved`,
    each pair run back to back. Robust to this machine's drift between slow and fast phases (its
    bare ``python -c pass`` takes 14 to 21 ms by the minute), which a difference of the two
    medians is not: each median may come from another phase."""
    return statistics.median(x - y for x, y in zip(xs, ys, strict=True))


def line(label: str, value: float, goal: str, ok: bool) -> str:
    return f"{label:<58} {value:9.3f}   goal {goal:<10} {'ok' if ok else 'MISSED'}"
