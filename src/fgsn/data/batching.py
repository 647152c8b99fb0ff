"""Batches of token sequences that waste little on padding and fit a token budget.

Shared by every teacher-forced pass over variable-length sequences (reference-answer NLL, the
snip gradient sums): memory and compute grow with batch x width, so a batch is bounded in padded
tokens as well as in items, and a sequence much shorter than its batch's longest starts a new
batch instead of being padded to it.
"""

from __future__ import annotations

# An item shorter than this share of its batch's longest starts a new batch: padding it would cost
# more than the smaller batch does (the demo's 16 arithmetic/GSM answers: 3.8 s in one batch, 2.2 s
# grouped; benchmarks/demo_speed.py).
MIN_FILL = 0.6


def length_batches(lengths: list[int], batch_size: int, max_batch_tokens: int,
                   min_fill: float = MIN_FILL) -> list[list[int]]:
    """Indices into `lengths`, longest first, grouped: at most `batch_size` items, at most
    `max_batch_tokens` padded tokens (a single longer item still gets its own batch), and no
    item shorter than `min_fill` x the batch's longest."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:  # longest first: a batch's first item sets its width
        b = batches[-1] if batches else None
        width = lengths[b[0]] if b else 0
        if (b is None or len(b) >= batch_size or width * (len(b) + 1) > max_batch_tokens
                or lengths[i] < min_fill * width):
            batches.append([i])
        else:
            b.append(i)
    return batches
