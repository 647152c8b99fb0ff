"""Metric maths with known answers, and utility answer extraction and scoring."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fgsn.errors import InputError
from fgsn.evaluate.metrics import mean, per_category, perplexity, rate, wilson_interval
from fgsn.evaluate.utility import exact_match, extract_answer, load_utility


@pytest.mark.parametrize("k,n,lo,hi", [
    (0, 10, 0.0, 0.2775),
    (5, 10, 0.2366, 0.7634),
    (10, 10, 0.7225, 1.0),
    (1, 1, 0.2065, 1.0),
    (14, 100, 0.0853, 0.2214),
])
def test_wilson_known_values(k, n, lo, hi):
    a, b = wilson_interval(k, n)
    assert a == pytest.approx(lo, abs=1e-4) and b == pytest.approx(hi, abs=1e-4)


def test_wilson_edge_cases():
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_the_point_estimate(kn):
    k, n = kn
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 50), st.integers(1, 50))
def test_wilson_narrows_with_more_data(k, n):
    k = min(k, n)
    lo1, hi1 = wilson_interval(k, n)
    lo2, hi2 = wilson_interval(4 * k, 4 * n)
    assert hi2 - lo2 < hi1 - lo1


def test_rate_leaves_unjudged_items_out():
    r = rate([True, False, None, True, None])
    assert (r["rate"], r["k"], r["n"]) == (2 / 3, 2, 3)
    assert r["ci"] == list(wilson_interval(2, 3))
    empty = rate([None, None])
    assert empty["rate"] is None and empty["ci"] is None and empty["n"] == 0


def test_mean_perplexity_and_categories():
    assert mean([1, None, 3]) == 2.0 and mean([None]) is None and mean([]) is None
    assert perplexity(None) is None and perplexity(0.0) == 1.0 and perplexity(math.log(7)) == pytest.approx(7)
    assert perplexity(1e6) == math.inf
    rows = [{"category": "b", "x": True}, {"category": "a", "x": False}, {"category": "b", "x": False},
            {"category": None, "x": True}]
    got = per_category(rows, lambda rs: {"rate": rate(r["x"] for r in rs)["rate"], "n": len(rs)})
    assert list(got) == ["a", "b", "uncategorized"]
    assert got["a"] == {"rate": 0.0, "n": 1} and got["b"] == {"rate": 0.5, "n": 2}


@pytest.mark.parametrize("text,numeric,expected", [
    ("Let me think. 3 + 4 = 7.\nAnswer: 7", True, "7"),
    ("The answer is 1,250 apples.", True, "1250"),
    ("so \\boxed{42} is it", True, "42"),
    ("#### -3", True, "-3"),
    ("We get 12 then 15", True, "15"),
    ("Answer: Paris.", False, "Paris."),
    ("blah\nParis", False, "Paris"),
    ("", True, None),
    ("no digits", True, None),
])
def test_extract_answer(text, numeric, expected):
    assert extract_answer(text, numeric=numeric) == expected


@pytest.mark.parametrize("got,ref,ok", [("7", "7", True), ("7.0", "7", True), ("1250", "1,250", True),
                                        ("8", "7", False), ("Paris.", "paris", True), (" PARIS ", "Paris", True),
                                        ("Lyon", "Paris", False), (None, "7", False)])
def test_exact_match(got, ref, ok):
    assert exact_match(got, ref) is ok


def test_reasoning_gym_items_are_seeded_and_scored_by_their_scorer():
    a = load_utility("basic_arithmetic?limit=4&seed=3", instruction="\nAnswer:")
    b = load_utility("basic_arithmetic", limit=4, seed=3, instruction="\nAnswer:")
    assert [x.question for x in a] == [x.question for x in b] and len(a) == 4
    assert all(x.question.endswith("\nAnswer:") for x in a)
    c = load_utility("basic_arithmetic?limit=4&seed=4")
    assert [x.question for x in c] != [x.question.removesuffix("\nAnswer:") for x in a]
    for it in a:
        assert it.score(f"Working...\nAnswer: {it.answer}")
        assert not it.score("Answer: 123456789987")
        assert not it.score("")
    g = load_utility("gsm_symbolic?limit=2")
    assert g[0].task == "gsm_symbolic" and g[0].score(f"The answer is {g[0].answer}.")


def test_utility_file_and_errors(tmp_path):
    f = tmp_path / "u.jsonl"
    f.write_text('{"prompt": "capital of France?", "answer": "Paris"}\n{"prompt": "2+2?", "answer": "4"}\n')
    items = load_utility(str(f))
    assert [i.task for i in items] == ["u", "u"]
    assert items[0].score("It is Paris.\nAnswer: Paris") and items[1].score("2+2=4") and not items[1].score("5")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "no answer here"}\n')
    with pytest.raises(InputError, match="no 'answer'"):
        load_utility(str(bad))
    with pytest.raises(InputError, match="unknown option"):
        load_utility("gsm_symbolic?size=3")
    with pytest.raises(InputError, match="reasoning-gym has no dataset"):
        load_utility("rg:no_such_dataset_xyz")
