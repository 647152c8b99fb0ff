"""Safety-neuron masks: the harmful top-q minus the task top-p (method.md step 2), at weight or
neuron (output row) granularity, stored bit-packed."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from fgsn.errors import InputError, IntegrityError

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


def pack(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.reshape(-1).numpy().astype(np.uint8)))


def unpack(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    n = int(np.prod(shape))
    bits = np.unpackbits(packed.numpy(), count=n)
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


def save_masks(path: str | os.PathLike, masks: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Bit-packed masks in one safetensors file (shapes in its metadata); atomic."""
    from safetensors.torch import save

    from fgsn.atomic import atomic_write_bytes

    shapes = {k: list(v.shape) for k, v in masks.items()}
    # One metadata key: safetensors writes its metadata map in no fixed order, and masks must be
    # byte-identical across identical runs.
    metadata = {"fgsn": json.dumps({"shapes": shapes, "meta": meta or {}}, sort_keys=True)}
    data = save({k: pack(v) for k, v in sorted(masks.items())}, metadata=metadata)
    atomic_write_bytes(path, data)


def load_masks(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        raw = open(path, "rb").read()  # noqa: SIM115
        tensors = load(raw)
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        doc = json.loads(metadata["fgsn"])
        shapes, meta = doc["shapes"], doc["meta"]
    except (OSError, SafetensorError, KeyError, json.JSONDecodeError) as e:
        raise IntegrityError(f"mask file {path} is unreadable or corrupt ({e}); re-run locate") from e
    return {k: unpack(v, tuple(shapes[k])) for k, v in tensors.items()}, meta
