"""Neuron importance scores (method.md step 2 and the variants of the repair issue).

Each score is computed once on harmful inputs and once on task inputs; masks.py keeps the
harmful top-q minus the task top-p. With X the inputs of a module over a prompt set:

- `wanda`       |W_ft|_ij * ||X_:,j||             (the paper's Eq. 3, Wanda on the fine-tuned weights)
- `wanda-delta` |dW|_ij * ||X_:,j||               (where the update changes the computation)
- `offsafety`   |dW - C dW|_ij * ||X_:,j||        (the part of the update outside the safety subspace)
- `snip`        |dW_ij * dL/dW_ij|                (first-order effect of the update on a loss: the
                                                   refusal loss on harmful prompts, the answer loss
                                                   on task prompts; one backward pass, no step)
- `snip-signed` first-order loss change of reverting an entry to its aligned value: on harmful
                prompts relu(dW_ij * g_ij) (reverting lowers the refusal loss), on task prompts
                relu(-dW_ij * g_ij) (reverting raises the task loss); |.| in `snip` also counts
                entries whose reversal would work against refusal
- `contrast`    ||y_ft,i - y_aligned,i||           (change of output neuron i's activation between
                                                   the aligned and the fine-tuned model; neuron
                                                   granularity only)
- `random`      uniform noise                     (a control with the same mask sizes)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fgsn.errors import InputError, NumericalError
from fgsn.locate.options import SCORES

SIDES = ("harmful", "task")
# What each score needs from the probes, beyond the weights.
NEEDS_NORMS = {"wanda", "wanda-delta", "offsafety"}
NEEDS_GRADS = {"snip", "snip-signed"}
NEEDS_CONTRAST = {"contrast"}


@dataclass
class ScoreInputs:
    """What a score may use for one weight tensor; matrices (out, in) float32."""

    name: str
    w_finetuned: torch.Tensor
    delta: torch.Tensor
    project: Callable[[torch.Tensor], torch.Tensor]   # Y -> C Y for this tensor's projector
    norms: dict[str, torch.Tensor] = field(default_factory=dict)      # side -> (in,)
    grads: dict[str, torch.Tensor] = field(default_factory=dict)      # side -> (out, in)
    contrast: dict[str, torch.Tensor] = field(default_factory=dict)   # side -> (out,)
    seed: int = 0


def _activation_weighted(m: torch.Tensor, s: ScoreInputs, side: str) -> torch.Tensor:
    return m * s.norms[side].unsqueeze(0)


def score(kind: str, s: ScoreInputs, side: str, offsafety_cache: dict | None = None) -> torch.Tensor:
    if kind == "wanda":
        out = _activation_weighted(s.w_finetuned.abs(), s, side)
    elif kind == "wanda-delta":
        out = _activation_weighted(s.delta.abs(), s, side)
    elif kind == "offsafety":
        cache = offsafety_cache if offsafety_cache is not None else {}
        if "m" not in cache:
            cache["m"] = (s.delta - s.project(s.delta)).abs()
        out = _activation_weighted(cache["m"], s, side)
    elif kind == "snip":
        out = (s.delta * s.grads[side]).abs()
    elif kind == "snip-signed":
        sign = 1.0 if side == "harmful" else -1.0
        out = (sign * s.delta * s.grads[side]).clamp_min(0.0)
    elif kind == "contrast":
        out = s.contrast[side].unsqueeze(1).expand_as(s.delta)
    elif kind == "random":
        g = torch.Generator().manual_seed(s.seed * 2 + SIDES.index(side))
        out = torch.rand(s.delta.shape, generator=g)
    else:
        raise InputError(f"unknown --score {kind!r}; choose one of {', '.join(SCORES)}")
    if not torch.isfinite(out).all():
        raise NumericalError(f"{s.name}: {kind} scores on {side} prompts contain NaN/Inf; the weights or the "
                             "activations overflowed (try --dtype float32)")
    return out


def score_pair(kind: str, s: ScoreInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(harmful score, task score) for one tensor."""
    cache: dict = {}
    return score(kind, s, "harmful", cache), score(kind, s, "task", cache)
