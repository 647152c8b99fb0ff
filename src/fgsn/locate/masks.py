"""Safety-neuron masks: the harmful top-q minus the task top-p (method.md step 2), at weight or
neuron (output row) granularity (stored bit-packed by fgsn.artifacts.masks)."""

from __future__ import annotations

import torch

from fgsn.errors import InputError

GRANULARITIES = ("weight", "neuron")


def top_fraction(scores: torch.Tensor, frac: float) -> torch.Tensor:
    """Boolean mask of the top `frac` share of `scores` (exactly round(frac * n) entries)."""
    if not 0.0 <= frac <= 1.0:
        raise InputError(f"fraction {frac} must lie in [0, 1]")
    flat = scores.reshape(-1)
    k = int(round(frac * flat.numel()))
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if k > 0:
        idx = torch.topk(flat, k, sorted=False).indices
        mask[idx] = True
    return mask.reshape(scores.shape)


def safety_mask(harmful: torch.Tensor, task: torch.Tensor, q: float, p: float, granularity: str = "weight",
                budget: float | None = None) -> torch.Tensor:
    """mask = top_q(harmful) \\ top_p(task) (method.md step 2). At neuron granularity the score of an
    output row is its row sum and whole rows are selected.

    With `budget`, the mask has exactly round(budget * n) entries (or rows): the highest harmful
    scores among those outside the task top-p. This compares scores at equal parameter budgets,
    where q alone would give masks of different sizes once the task exclusion is taken out."""
    if granularity not in GRANULARITIES:
        raise InputError(f"unknown granularity {granularity!r}; use weight or neuron")
    h, t = (harmful, task) if granularity == "weight" else (harmful.sum(1), task.sum(1))
    excluded = top_fraction(t, p)
    if budget is None:
        sel = top_fraction(h, q) & ~excluded
    else:
        if not 0.0 <= budget <= 1.0:
            raise InputError(f"--budget {budget} must lie in [0, 1]")
        k = min(int(round(budget * h.numel())), int((~excluded).sum()))
        sel = torch.zeros(h.numel(), dtype=torch.bool)
        if k > 0:
            cand = h.reshape(-1).masked_fill(excluded.reshape(-1), float("-inf"))
            sel[torch.topk(cand, k, sorted=False).indices] = True
        sel = sel.reshape(h.shape)
    return sel if granularity == "weight" else sel.unsqueeze(1).expand_as(harmful).clone()
