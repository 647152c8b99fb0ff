"""Neuron importance scores (method.md step 2 and its variants).

Every score is |M_ij| * ||X_:,j||_2 for some weight-shaped quantity M and the input norms X of a
prompt set; the variants differ in M:

- `wanda`       M = W_finetuned                  (the paper's Eq. 3, Wanda)
- `wanda-delta` M = dW = W_finetuned - W_aligned (where the update changes the computation)
- `offsafety`   M = dW - C dW                    (the part of the update outside the safety subspace)
- `random`      uniform noise, a control with the same mask sizes

The same score is computed on harmful and on task inputs; masks.py takes the harmful top-q minus
the task top-p.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fgsn.errors import InputError, NumericalError


@dataclass
class ScoreInputs:
    """What a score may use for one weight tensor, all (out, in) float32."""

    name: str
    w_finetuned: torch.Tensor
    delta: torch.Tensor
    project: Callable[[torch.Tensor], torch.Tensor]   # Y -> C Y for this tensor's projector
    seed: int = 0


def _weight_wanda(s: ScoreInputs) -> torch.Tensor:
    return s.w_finetuned.abs()


def _weight_delta(s: ScoreInputs) -> torch.Tensor:
    return s.delta.abs()


def _weight_offsafety(s: ScoreInputs) -> torch.Tensor:
    return (s.delta - s.project(s.delta)).abs()


SCORE_WEIGHTS: dict[str, Callable[[ScoreInputs], torch.Tensor]] = {
    "wanda": _weight_wanda,
    "wanda-delta": _weight_delta,
    "offsafety": _weight_offsafety,
}
SCORES = (*SCORE_WEIGHTS, "random")


def score_pair(kind: str, s: ScoreInputs, harmful_norms: torch.Tensor, task_norms: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(harmful score, task score) for one tensor."""
    if kind == "random":
        g = torch.Generator().manual_seed(s.seed)
        r = torch.rand(s.delta.shape, generator=g)
        return r, torch.rand(s.delta.shape, generator=g)
    if kind not in SCORE_WEIGHTS:
        raise InputError(f"unknown --score {kind!r}; choose one of {', '.join(SCORES)}")
    m = SCORE_WEIGHTS[kind](s)
    h = m * harmful_norms.unsqueeze(0)
    t = m * task_norms.unsqueeze(0)
    for what, x in (("harmful", h), ("task", t)):
        if not torch.isfinite(x).all():
            raise NumericalError(f"{s.name}: {kind} scores on {what} prompts contain NaN/Inf; the weights or the "
                                 "activations overflowed (try --dtype float32)")
    return h, t
