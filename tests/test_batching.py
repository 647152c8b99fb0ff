"""Batching: generation batches as few as the batch size allows and of equal size; teacher-forced
batches bounded in items and padded tokens, without padding short sequences to long ones."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fgsn.evaluate.generation import _batches


@given(n=st.integers(0, 500), size=st.integers(1, 128))
def test_batches_are_balanced_and_cover_the_order(n, size):
    order = list(range(n))[::-1]
    got = _batches(order, size)
    assert [i for b in got for i in b] == order
    assert len(got) == -(-n // size)
    if got:
        sizes = [len(b) for b in got]
        assert max(sizes) <= size and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_a_hundred_prompts_at_64_are_two_batches_of_50():
    assert [len(b) for b in _batches(list(range(100)), 64)] == [50, 50]


@given(lengths=st.lists(st.integers(1, 300), max_size=60), size=st.integers(1, 16),
       budget=st.integers(1, 4096))
def test_length_batches_respect_size_budget_and_fill(lengths, size, budget):
    from fgsn.data.batching import MIN_FILL, length_batches

    got = length_batches(lengths, size, budget)
    assert sorted(i for b in got for i in b) == list(range(len(lengths)))
    for b in got:
        width = lengths[b[0]]
        assert width == max(lengths[i] for i in b)  # the first item sets the width
        assert len(b) <= size and (len(b) == 1 or width * len(b) <= budget)
        assert all(lengths[i] >= MIN_FILL * width for i in b)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 2000), min_size=1, max_size=200), st.integers(1, 64), st.integers(1, 20000))
def test_budget_batches_cap_padded_tokens_while_prompts_are_long(lengths, size, budget):
    from fgsn.evaluate.generation import budget_batches

    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    got = budget_batches(order, lengths, size, budget)
    assert [i for b in got for i in b] == order  # every prompt once, longest first
    assert all(1 <= len(b) <= size for b in got)
    for b in got:  # within the budget unless a single prompt is longer than it
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= budget
    if max(lengths) * size <= budget:  # nothing is long: the balanced batches of before
        assert got == _batches(order, size)


def test_jailbreak_length_prompts_do_not_pad_a_whole_batch():
    from fgsn.evaluate.generation import budget_batches

    lengths = [1200] * 6 + [60] * 120
    got = budget_batches(list(range(len(lengths))), lengths, 64, 8192)
    assert [len(b) for b in got] == [6, 60, 60]
