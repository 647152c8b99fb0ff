"""Paired comparisons of two models scored on the same items: the difference (MODEL - REFERENCE)
with a paired bootstrap 95% interval, and for yes/no outcomes an exact McNemar p-value.

Why paired: every model answers the same prompts, and whether a prompt is answered harmfully
depends mostly on the prompt, so two models' outcomes are strongly correlated. Comparing two
Wilson intervals throws that away and calls most real differences noise; resampling prompts
with both of their outcomes kept together (the paired bootstrap) and testing only the prompts on
which the two models disagree (McNemar) use it. Pure numpy and integers, no I/O: every number is
recomputable from the records (docs/results-schema.md, `paired`).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_RESAMPLES = 10_000
LEVEL = 0.95
# Elements of one resampling chunk (index-resampling bootstrap): bounds the memory, not the result.
_CHUNK = 1 << 21
# The records' yes/no outcome behind each paired metric: (record kind, field).
BINARY = {"asr": ("harmful", "success"), "asr_attack": ("attack", "success"),
          "over_refusal": ("alarming", "refused"), "utility": ("utility", "correct")}
METRICS = (*BINARY, "nll")


class PairingError(ValueError):
    """The two models were not scored on the same items, so a paired comparison has no meaning."""


# -- the maths -------------------------------------------------------------------------------------
def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b pairs where only the model has the outcome and c where
    only the reference has it: under H0 each discordant pair is a fair coin, so
    p = min(1, 2 P[Binomial(b + c, 1/2) <= min(b, c)]). No discordant pair: p = 1.

    Exact integer arithmetic (the binomial tail as an integer over 2^(b+c)), so the value is exact
    to float rounding for any n; no scipy needed.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0 (got b={b}, c={c})")
    m, k = b + c, min(b, c)
    if m == 0:
        return 1.0
    term, tail = 1, 1  # C(m, 0)
    for i in range(k):
        term = term * (m - i) // (i + 1)  # C(m, i + 1), exact
        tail += term
    return min(1.0, 2 * tail / (1 << m))


def _interval(samples: np.ndarray, estimate: float, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap samples, widened to hold the estimate: a percentile
    interval of a very skewed bootstrap distribution can in principle miss its own point estimate,
    and an interval that contradicts the number it qualifies would only confuse."""
    a = (1 - level) / 2
    lo, hi = np.quantile(samples, [a, 1 - a])
    return min(float(lo), estimate), max(float(hi), estimate)


def bootstrap_binary_diff(b: int, c: int, n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                          level: float = LEVEL) -> tuple[float, float]:
    """Paired bootstrap interval of the difference of two rates, (b - c) / n, from n pairs of which
    b have the outcome only for the model and c only for the reference.

    Resampling n pairs with replacement and recomputing the difference depends only on how many
    of the b-pairs and c-pairs were drawn: (B*, C*, rest) ~ Multinomial(n, (b, c, n - b - c) / n).
    Drawing those counts is therefore the bootstrap itself, exactly, in O(resamples) time and
    memory instead of O(resamples * n). The draw is oriented by the larger discordant count, so
    swapping the two models negates every sample (and the interval) exactly.
    """
    if n <= 0 or b < 0 or c < 0 or b + c > n:
        raise ValueError(f"need 0 <= b, c and b + c <= n > 0 (got b={b}, c={c}, n={n})")
    estimate = (b - c) / n
    if b + c == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    hi_count, lo_count = max(b, c), min(b, c)
    draws = rng.multinomial(n, np.array([hi_count, lo_count, n - b - c]) / n, size=resamples)
    samples = (draws[:, 0] - draws[:, 1]) / n  # (larger - smaller) / n
    if b == c:  # the bootstrap distribution is symmetric: make its samples so, for an exact swap
        samples = np.concatenate([samples, -samples])
    elif b < c:
        samples = -samples
    return _interval(samples, estimate, level)


def bootstrap_ratio_diff(num_a: Sequence[float], den_a: Sequence[float], num_b: Sequence[float],
                         den_b: Sequence[float], resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                         level: float = LEVEL) -> tuple[float, tuple[float, float]]:
    """Difference of two ratio estimators sum(num)/sum(den) over the same n items (e.g. the
    token-weighted mean NLL of reference answers: num = an item's NLL sum, den = its tokens) and
    its paired bootstrap interval: the same resampled items for both models. Vectorised in chunks
    of resamples so that memory stays bounded for any n."""
    na, da, nb, db = (np.asarray(x, dtype=np.float64) for x in (num_a, den_a, num_b, den_b))
    n = len(na)
    if n == 0 or not len(da) == len(nb) == len(db) == n:
        raise ValueError("the four arrays must have the same, non-zero length")
    if (da <= 0).any() or (db <= 0).any():
        raise ValueError("every item needs a positive denominator (token count)")
    estimate = float(na.sum() / da.sum() - nb.sum() / db.sum())
    rng = np.random.default_rng(seed)
    samples = np.empty(resamples)
    rows = max(1, _CHUNK // n)
    for start in range(0, resamples, rows):
        r = min(rows, resamples - start)
        idx = rng.integers(0, n, size=(r, n))
        samples[start:start + r] = na[idx].sum(1) / da[idx].sum(1) - nb[idx].sum(1) / db[idx].sum(1)
    return estimate, _interval(samples, estimate, level)


# -- pairing items -----------------------------------------------------------------------------------
def _check_same_keys(a: Mapping, b: Mapping, what: str) -> None:
    if a.keys() != b.keys():
        only_a, only_b = len(a.keys() - b.keys()), len(b.keys() - a.keys())
        raise PairingError(f"{what}: not the same items ({only_a} only in the model, {only_b} only in the "
                           "reference); evaluate both in one `fgsn eval` run to compare them pairwise")


def paired_binary(model: Mapping[Any, bool | None], reference: Mapping[Any, bool | None],
                  categories: Mapping[Any, str] | None = None, resamples: int = DEFAULT_RESAMPLES,
                  seed: int = 0, what: str = "items") -> dict[str, Any] | None:
    """{diff, ci, p, n, discordant, significant[, categories]} for yes/no outcomes keyed by item;
    an item either model has no verdict for (judge error: None) is left out of n. Raises
    PairingError when the two do not hold the same items; None when no item is judged by both."""
    _check_same_keys(model, reference, what)
    keys = [k for k in model if model[k] is not None and reference[k] is not None]

    def stats(ks: list) -> dict[str, Any]:
        b = sum(1 for k in ks if model[k] and not reference[k])
        c = sum(1 for k in ks if reference[k] and not model[k])
        n = len(ks)
        lo, hi = bootstrap_binary_diff(b, c, n, resamples, seed)
        return {"diff": (b - c) / n, "ci": [lo, hi], "p": mcnemar_exact(b, c), "n": n,
                "discordant": {"model": b, "reference": c}, "significant": not lo <= 0 <= hi}

    if not keys:
        return None
    out = stats(keys)
    if categories is not None:
        groups: dict[str, list] = defaultdict(list)
        for k in keys:
            groups[categories.get(k) or "uncategorized"].append(k)
        out["categories"] = {cat: stats(ks) for cat, ks in sorted(groups.items())}
    return out


def paired_ratio(model: Mapping[Any, tuple[float, float]], reference: Mapping[Any, tuple[float, float]],
                 resamples: int = DEFAULT_RESAMPLES, seed: int = 0, what: str = "items") -> dict[str, Any] | None:
    """{diff, ci, n, significant} of two ratio estimators over the same items ({key: (num, den)}),
    e.g. per-item (NLL sum, tokens). No McNemar: the outcome is not yes/no."""
    _check_same_keys(model, reference, what)
    keys = [k for k in model if model[k][1] > 0 and reference[k][1] > 0]
    if not keys:
        return None
    d, (lo, hi) = bootstrap_ratio_diff([model[k][0] for k in keys], [model[k][1] for k in keys],
                                       [reference[k][0] for k in keys], [reference[k][1] for k in keys],
                                       resamples, seed)
    return {"diff": d, "ci": [lo, hi], "n": len(keys), "significant": not lo <= 0 <= hi}


# -- from a run's records ------------------------------------------------------------------------------
def item_outcomes(rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[dict, dict]]:
    """Per binary metric: ({item key: outcome}, {item key: category}) from one model's records.
    An item's key is (set, uid, occurrence): the uid is a hash of the prompt text, the occurrence
    number keeps hand-made records with repeated ids apart."""
    out: dict[str, tuple[dict, dict]] = {m: ({}, {}) for m in BINARY}
    kind_to_metric = {kind: (metric, fld) for metric, (kind, fld) in BINARY.items()}
    seen: Counter = Counter()
    for r in rows:
        kind = r.get("kind")
        if kind not in kind_to_metric:
            continue
        metric, fld = kind_to_metric[kind]
        base = (kind, r.get("set"), r.get("uid") or r.get("prompt"))
        key = (*base, seen[base])
        seen[base] += 1
        v = r.get(fld)
        out[metric][0][key] = None if v is None else bool(v)
        out[metric][1][key] = str(r.get("category") or "uncategorized")
    return out


def nll_item_map(nll: Mapping[str, Any] | None) -> dict[Any, tuple[float, float]] | None:
    """{item key: (NLL sum, tokens)} from an nll.json's `per_item` ([[key, nll, tokens], ...]), or
    None when it has none (no reference set, or a file written before per-item values were kept)."""
    items = (nll or {}).get("per_item")
    if not isinstance(items, list):
        return None
    out: dict[Any, tuple[float, float]] = {}
    seen: Counter = Counter()
    for key, value, tokens in items:
        out[(key, seen[key])] = (float(value), float(tokens))
        seen[key] += 1
    return out


def references(order: Sequence[str], against: Sequence[str]) -> list[str]:
    """The models every other model is compared with: `against` as given ("all": every model,
    i.e. every pair once), else those named aligned and finetuned, else the first model."""
    if list(against) == ["all"]:
        return list(order)
    if against:
        unknown = [n for n in against if n not in order]
        if unknown:
            log.warning("paired comparison: %s not among the evaluated models %s; ignored", unknown, list(order))
        return [n for n in against if n in order]
    named = [n for n in ("aligned", "finetuned") if n in order]
    return named or list(order[:1])


def pairs(order: Sequence[str], refs: Sequence[str]) -> list[tuple[str, str]]:
    """(model, reference) pairs: every model against each reference, each unordered pair once (a
    reference is compared with a later reference, not again the other way round)."""
    out = []
    for j, ref in enumerate(refs):
        for m in order:
            if m == ref or (m in refs and refs.index(m) < j):
                continue
            out.append((m, ref))
    return out


def paired_results(order: Sequence[str], rows: Mapping[str, list[Mapping[str, Any]]],
                   nll_items: Mapping[str, Mapping[str, tuple[float, float]] | None], against: Sequence[str] = (),
                   resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paired, settings): `paired` maps "MODEL vs REF" to {model, reference, asr, asr_attack,
    over_refusal, utility, nll}, each a stats dict, None (not measured for both) or
    {"skipped": reason} (not the same items); `settings` says how they were computed."""
    refs = references(order, against)
    outcomes = {n: item_outcomes(rows[n]) for n in order}
    out: dict[str, Any] = {}
    for m, ref in pairs(order, refs):
        entry: dict[str, Any] = {"model": m, "reference": ref}
        for metric in BINARY:
            (a, cats), (b, _) = outcomes[m][metric], outcomes[ref][metric]
            try:
                entry[metric] = paired_binary(a, b, cats, resamples, seed, what=metric) \
                    if (a or b) else None
            except PairingError as e:
                entry[metric] = {"skipped": str(e)}
        na, nb = nll_items.get(m), nll_items.get(ref)
        if na is None and nb is None:
            entry["nll"] = None
        elif na is None or nb is None:
            lacking = m if na is None else ref
            entry["nll"] = {"skipped": f"{lacking} has no per-item reference NLL (none measured, or an nll.json "
                                       "written before per-item values were kept: rerun fgsn eval, the cache is reused)"}
        else:
            try:
                entry["nll"] = paired_ratio(na, nb, resamples, seed, what="nll")
            except PairingError as e:
                entry["nll"] = {"skipped": str(e)}
        for metric in METRICS:
            if isinstance(entry[metric], dict) and "skipped" in entry[metric]:
                log.warning("paired %s vs %s, %s skipped: %s", m, ref, metric, entry[metric]["skipped"])
        out[f"{m} vs {ref}"] = entry
    settings = {"references": refs, "resamples": resamples, "seed": seed, "level": LEVEL,
                "interval": "paired bootstrap over items, percentile",
                "test": "exact McNemar (two-sided binomial test on the discordant items)",
                "significant": "the interval excludes 0"}
    return out, settings

