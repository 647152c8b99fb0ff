"""Metric maths: rates with Wilson 95% intervals, means, and per-category aggregation.

Kept free of I/O and of models so that every number in a report can be recomputed (and tested)
from the records alone. A metric with no measured items is None, never 0: an absent measurement
must not read as a perfect score.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion.

    Why Wilson and not the normal (Wald) interval: harmful-prompt sets are small (50-500) and ASR is
    often near 0 or 1 after a repair, where Wald collapses to a zero-width interval.
    """
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside [0, n={n}]")
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    # Floating error can push a bound a hair past the point estimate at p = 0 or 1.
    return (min(lo, p), max(hi, p))


def rate(flags: Iterable[bool | None]) -> dict[str, Any]:
    """Share of True among the judged items (None = not judged, left out of n)."""
    judged = [bool(f) for f in flags if f is not None]
    n = len(judged)
    k = sum(judged)
    ci = wilson_interval(k, n)
    return {"rate": (k / n) if n else None, "ci": list(ci) if ci else None, "k": k, "n": n}


def mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def group_by(records: Iterable[Mapping[str, Any]], key: str = "category") -> dict[str, list[Mapping[str, Any]]]:
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        groups[str(r.get(key) or "uncategorized")].append(r)
    return dict(sorted(groups.items()))


def per_category(records: list[Mapping[str, Any]], summarize: Callable[[list[Mapping[str, Any]]], dict[str, Any]],
                 key: str = "category") -> dict[str, dict[str, Any]]:
    """Apply `summarize` to each category's records (sorted by category name)."""
    return {cat: summarize(rows) for cat, rows in group_by(records, key).items()}


def perplexity(mean_nll: float | None) -> float | None:
    if mean_nll is None:
        return None
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf
