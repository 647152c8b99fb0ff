"""Batching: generation batches as few as the batch size allows and of equal size; teacher-forced
batches bounded in items and padded tokens, without padding short sequences to long ones."""

from __future__ import annotations

from hypothesis import given
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
