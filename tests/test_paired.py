"""Paired statistics (fgsn.evaluate.paired): exact McNemar against hand computations, the
bootstrap shortcut against the naive resampling it replaces, coverage of the true difference,
properties (interval holds the estimate, swapping the models negates everything), pairing rules,
and results.json / report rendering from hand-made run folders."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fgsn.evaluate.paired import (
    PairingError,
    bootstrap_binary_diff,
    bootstrap_ratio_diff,
    mcnemar_exact,
    paired_binary,
    paired_ratio,
    paired_results,
    pairs,
    references,
)
from fgsn.evaluate.results import compute_results
from helpers_eval import check_html, harmful_row, report_from_records, write_run


# -- McNemar ------------------------------------------------------------------------------------------
def _binom_p(b: int, c: int) -> float:
    """Direct: 2 * sum_{i <= min} C(m, i) / 2^m, capped at 1, in exact fractions."""
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(Fraction(math.comb(m, i), 2**m) for i in range(min(b, c) + 1))
    return float(min(Fraction(1), 2 * tail))


def test_mcnemar_known_values():
    assert mcnemar_exact(5, 0) == 2 * 0.5**5 == 0.0625
    assert mcnemar_exact(0, 5) == 0.0625
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0  # 2 * 42/64 > 1: capped
    assert mcnemar_exact(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096, rel=1e-15)
    assert mcnemar_exact(1, 0) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


@given(st.integers(0, 300), st.integers(0, 300))
@settings(max_examples=60, deadline=None)
def test_mcnemar_equals_the_binomial_tail(b, c):
    p = mcnemar_exact(b, c)
    assert p == pytest.approx(_binom_p(b, c), rel=1e-12, abs=1e-300)
    assert p == mcnemar_exact(c, b) and 0 < p <= 1


def test_mcnemar_large_counts_do_not_overflow():
    assert 0.0 <= mcnemar_exact(3000, 2000) < 1e-40
    assert mcnemar_exact(2500, 2500) == 1.0


# -- the bootstrap --------------------------------------------------------------------------------------
def _naive_binary(b: int, c: int, n: int, resamples: int, seed: int) -> tuple[float, float]:
    """Resample n pairs with replacement, recompute the rate difference: what the multinomial draw replaces."""
    d = np.array([1] * b + [-1] * c + [0] * (n - b - c), dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(resamples, n))].mean(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


@pytest.mark.parametrize(("b", "c", "n"), [(12, 4, 60), (3, 9, 40), (30, 30, 200), (1, 0, 30)])
def test_binary_bootstrap_matches_naive_resampling(b, c, n):
    lo, hi = bootstrap_binary_diff(b, c, n, resamples=20_000, seed=1)
    nlo, nhi = _naive_binary(b, c, n, 20_000, seed=2)
    step = 1 / n  # both are quantiles of a lattice with spacing 1/n: agree to one step
    assert abs(lo - nlo) <= step + 1e-12 and abs(hi - nhi) <= step + 1e-12


def test_binary_bootstrap_covers_the_true_difference():
    """200 simulated evaluations of n = 150 prompts from a known paired population (model-only
    0.15, reference-only 0.05: true difference 0.10); a 95% interval covers it about 95% of the time."""
    rng = np.random.default_rng(123)
    probs = [0.15, 0.05, 0.80]
    hits = 0
    for s in range(200):
        b, c, _ = rng.multinomial(150, probs)
        lo, hi = bootstrap_binary_diff(int(b), int(c), 150, resamples=4000, seed=s)
        hits += lo <= 0.10 <= hi
    assert 0.90 <= hits / 200 <= 0.99


def test_ratio_bootstrap_equals_a_loop_over_resamples():
    rng = np.random.default_rng(0)
    na, nb = rng.gamma(2.0, 3.0, 40), rng.gamma(2.0, 2.5, 40)
    ta, tb = rng.integers(5, 30, 40).astype(float), rng.integers(5, 30, 40).astype(float)
    d, (lo, hi) = bootstrap_ratio_diff(na, ta, nb, tb, resamples=3000, seed=7)
    assert d == pytest.approx(na.sum() / ta.sum() - nb.sum() / tb.sum())
    r = np.random.default_rng(7)
    samples = []
    for _ in range(3000):
        i = r.integers(0, 40, size=40)
        samples.append(na[i].sum() / ta[i].sum() - nb[i].sum() / tb[i].sum())
    qlo, qhi = np.quantile(samples, [0.025, 0.975])
    assert (lo, hi) == pytest.approx((min(qlo, d), max(qhi, d)), rel=1e-12)


def test_ratio_bootstrap_chunks_do_not_change_the_result(monkeypatch):
    import fgsn.evaluate.paired as paired

    rng = np.random.default_rng(1)
    x, y, t = rng.normal(size=50), rng.normal(size=50), np.ones(50)
    full = bootstrap_ratio_diff(x, t, y, t, resamples=500, seed=3)
    monkeypatch.setattr(paired, "_CHUNK", 50 * 7)  # 7 resamples a chunk
    assert bootstrap_ratio_diff(x, t, y, t, resamples=500, seed=3) == full


def test_ratio_bootstrap_refuses_bad_input():
    with pytest.raises(ValueError, match="same, non-zero length"):
        bootstrap_ratio_diff([1.0], [1.0], [1.0, 2.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="positive denominator"):
        bootstrap_ratio_diff([1.0], [0.0], [1.0], [1.0])


outcomes = st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=120)


@given(outcomes, st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_binary_properties(pairs_, seed):
    a = {i: x for i, (x, _y) in enumerate(pairs_)}
    b = {i: y for i, (_x, y) in enumerate(pairs_)}
    ab = paired_binary(a, b, resamples=500, seed=seed)
    ba = paired_binary(b, a, resamples=500, seed=seed)
    n = len(pairs_)
    assert ab["diff"] == pytest.approx(sum(a.values()) / n - sum(b.values()) / n)
    assert ab["ci"][0] <= ab["diff"] <= ab["ci"][1]
    assert ab["ci"][0] >= -1 and ab["ci"][1] <= 1
    assert ba["diff"] == -ab["diff"] and ba["p"] == ab["p"]
    assert ba["ci"] == pytest.approx([-ab["ci"][1], -ab["ci"][0]], abs=1e-12)
    assert ab["significant"] == ba["significant"] == (not ab["ci"][0] <= 0 <= ab["ci"][1])


@given(st.lists(st.tuples(st.floats(0, 50), st.floats(0, 50), st.integers(1, 40)), min_size=1, max_size=60),
       st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_ratio_properties(items, seed):
    a = {i: (x, t) for i, (x, _y, t) in enumerate(items)}
    b = {i: (y, t) for i, (_x, y, t) in enumerate(items)}
    ab, ba = paired_ratio(a, b, resamples=300, seed=seed), paired_ratio(b, a, resamples=300, seed=seed)
    assert ab["ci"][0] <= ab["diff"] <= ab["ci"][1]
    assert ba["diff"] == pytest.approx(-ab["diff"], abs=1e-9)
    assert ba["ci"] == pytest.approx([-ab["ci"][1], -ab["ci"][0]], abs=1e-9)


def test_identical_models_differ_by_zero():
    a = {i: i % 3 == 0 for i in range(50)}
    r = paired_binary(a, dict(a), categories={i: "x" if i < 25 else "y" for i in a})
    assert r["diff"] == 0 and r["ci"] == [0.0, 0.0] and r["p"] == 1.0 and r["n"] == 50
    assert not r["significant"] and set(r["categories"]) == {"x", "y"}
    nll = {i: (float(i), 3.0) for i in range(10)}
    assert paired_ratio(nll, dict(nll)) == {"diff": 0.0, "ci": [0.0, 0.0], "n": 10, "significant": False}


def test_known_outcome_gives_the_hand_computed_p_and_a_significant_interval():
    # 40 prompts: the model succeeds on 5 the reference refuses, never the other way round
    model = {i: i < 5 for i in range(40)}
    ref = dict.fromkeys(range(40), False)
    r = paired_binary(model, ref)
    assert r["diff"] == 5 / 40 and r["p"] == 0.0625 and r["discordant"] == {"model": 5, "reference": 0}
    assert r["ci"][0] > 0 and r["significant"]  # the interval excludes 0 although McNemar's p > 0.05


def test_unjudged_items_leave_n_and_mismatched_items_are_refused():
    model = {0: True, 1: None, 2: False}
    ref = {0: False, 1: True, 2: None}
    assert paired_binary(model, ref)["n"] == 1
    assert paired_binary({0: None}, {0: True}) is None
    with pytest.raises(PairingError, match="1 only in the model, 1 only in the reference"):
        paired_binary({0: True, 1: False}, {0: True, 2: False})
    with pytest.raises(PairingError, match="not the same items"):
        paired_ratio({0: (1.0, 1.0)}, {1: (1.0, 1.0)})


# -- who is compared with whom ---------------------------------------------------------------------------
def test_references_and_pairs():
    order = ["base", "aligned", "finetuned", "fgsn"]
    assert references(order, []) == ["aligned", "finetuned"]
    assert pairs(order, ["aligned", "finetuned"]) == [("base", "aligned"), ("finetuned", "aligned"),
                                                      ("fgsn", "aligned"), ("base", "finetuned"),
                                                      ("fgsn", "finetuned")]
    assert references(["a", "b", "c"], []) == ["a"]
    assert pairs(["a", "b", "c"], references(["a", "b", "c"], ["all"])) == [("b", "a"), ("c", "a"), ("c", "b")]
    assert references(order, ["fgsn", "nope"]) == ["fgsn"]


# -- results.json and the report -----------------------------------------------------------------------
def _harm(uid: str, cat: str, success: bool | None) -> dict:
    return harmful_row(cat, success) | {"uid": uid, "prompt": uid}


def _run(tmp_path, ft_rows, rep_rows, nll=None):
    aligned = [_harm(f"h{i}", "a" if i < 10 else "b", False) for i in range(20)]
    alarm = [{"kind": "alarming", "set": "al", "uid": f"x{i}", "category": "c", "refused": False} for i in range(8)]
    return write_run(tmp_path / "run", {"aligned": (tmp_path, aligned + alarm), "finetuned": (tmp_path, ft_rows + alarm),
                                        "repaired": (tmp_path, rep_rows + alarm)}, nll=nll)


def test_results_json_has_paired_entries_from_the_records(tmp_path):
    ft = [_harm(f"h{i}", "a" if i < 10 else "b", i < 12) for i in range(20)]  # 12 successes vs 0
    rep = [_harm(f"h{i}", "a" if i < 10 else "b", i == 0) for i in range(20)]  # 1 success
    per = {n: {"mean_nll": 1.0, "tokens": 20, "items": 4,
               "per_item": [[f"k{i}", (1.0 + 0.5 * (n == "finetuned")) * 5, 5] for i in range(4)]}
           for n in ("aligned", "finetuned", "repaired")}
    run = _run(tmp_path, ft, rep, nll=per)
    res = compute_results(run)
    assert list(res["paired"]) == ["finetuned vs aligned", "repaired vs aligned", "repaired vs finetuned"]
    fa = res["paired"]["finetuned vs aligned"]
    assert fa["asr"]["diff"] == 12 / 20 and fa["asr"]["p"] == mcnemar_exact(12, 0) and fa["asr"]["significant"]
    assert fa["asr"]["categories"]["a"]["n"] == 10 and fa["asr"]["categories"]["b"]["diff"] == 2 / 10
    assert fa["over_refusal"]["diff"] == 0 and fa["over_refusal"]["p"] == 1.0
    assert fa["nll"]["diff"] == pytest.approx(0.5) and fa["nll"]["n"] == 4 and "p" not in fa["nll"]
    assert fa["utility"] is None and fa["asr_attack"] is None
    rf = res["paired"]["repaired vs finetuned"]
    assert rf["asr"]["diff"] == -11 / 20 and rf["asr"]["p"] == mcnemar_exact(0, 11)
    assert res["paired_settings"]["references"] == ["aligned", "finetuned"]
    assert res["paired_settings"]["resamples"] == 10_000


def test_mismatched_prompts_are_skipped_with_the_reason(tmp_path, caplog):
    ft = [_harm(f"h{i}", "a", False) for i in range(19)] + [_harm("other", "a", True)]
    run = _run(tmp_path, ft, [_harm(f"h{i}", "a", False) for i in range(20)])
    res = compute_results(run)
    e = res["paired"]["finetuned vs aligned"]
    assert "1 only in the model, 1 only in the reference" in e["asr"]["skipped"]
    assert e["over_refusal"]["n"] == 8  # the other metric is still paired
    assert "skipped" in caplog.text
    # nll.json without per-item values (written before they were kept): skipped, with the fix
    r2 = paired_results(["m", "r"], {"m": [], "r": []}, {"m": {("k", 0): (1.0, 1.0)}, "r": None})[0]
    assert "r has no per-item reference NLL" in r2["r vs m"]["nll"]["skipped"]
    assert "rerun fgsn eval" in r2["r vs m"]["nll"]["skipped"]


def test_report_marks_differences_that_are_not_significant(tmp_path):
    ft = [_harm(f"h{i}", "a", i < 12) for i in range(20)]
    rep = [_harm(f"h{i}", "a", i == 0) for i in range(20)]
    run = _run(tmp_path, ft, rep)
    report_from_records(run)
    md = (run / "report.md").read_text()
    assert "## Paired differences vs references" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| finetuned vs aligned"))
    assert "+60.0 [" in row and "p=0.00049" in row and "n=20" in row
    assert row.split("|")[2].strip().endswith("n=20")  # ΔASR significant: no n.s.
    assert "n.s." in row.split("|")[3]  # Δover-refusal 0 [0, 0]: n.s.
    rep_row = next(ln for ln in md.splitlines() if ln.startswith("| repaired vs aligned"))
    assert "+5.0 [+0.0, +15.0] p=1 n=20 n.s." in rep_row
    html = (run / "report.html").read_text()
    parsed = check_html(html)
    assert '<td class="ns">+5.0 [+0.0, +15.0] p=1 n=20 n.s.</td>' in html
    assert "Paired differences vs references" in "".join(parsed.text)
    saved = json.loads((run / "results.json").read_text())
    assert saved["paired"]["finetuned vs aligned"]["asr"]["diff"] == 0.6


def test_table_order_follows_the_models_not_the_file(tmp_path):
    from fgsn.report.tables import paired_table

    run = _run(tmp_path, [_harm(f"h{i}", "a", i < 3) for i in range(20)], [_harm(f"h{i}", "a", False) for i in range(20)])
    res = compute_results(run)
    rows = [r[0] for r in paired_table(res).rows]
    res["paired"] = dict(sorted(res["paired"].items(), reverse=True))  # as a sorted-keys file could give it
    assert [r[0] for r in paired_table(res).rows] == rows == ["finetuned vs aligned", "repaired vs aligned",
                                                              "repaired vs finetuned"]


def test_one_model_has_no_pairs(tmp_path):
    run = write_run(tmp_path / "run", {"m": (tmp_path, [_harm("h", "a", True)])})
    res = compute_results(run)
    assert res["paired"] == {}
    report_from_records(run)
    assert "Paired differences" not in (run / "report.md").read_text()
