"""Generation batches: as few as the batch size allows, equal sizes, nothing lost or reordered."""

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
