"""Sparse projection of one weight tensor (method.md step 4):

    dW' = mask * (C dW) + (1 - mask) * dW,      W_out = W_aligned + dW'

computed per row block of fused modules (each logical part has its own V and C). Entries outside
the mask keep the fine-tuned value bit for bit (taken from the stored tensor, not recomputed).
For a LoRA update dW = B A, C dW = (C B) A is formed from the factors, which is what makes an
adapter output possible when whole rows are masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fgsn.direction import part_projectors, safety_direction
from fgsn.errors import NumericalError
from fgsn.models.lora import LoraFactors


@dataclass
class ProjectionSettings:
    projector: str = "safelora"
    rank: int | None = None
    energy: float = 0.99


@dataclass
class TensorEdit:
    """What happened to one tensor; goes into the manifest."""

    name: str
    layer: int
    module: str
    numel: int
    masked: int
    changed: int = 0
    delta_norm: float = 0.0
    masked_delta_norm: float = 0.0
    projected_norm: float = 0.0
    parts: list[dict] = field(default_factory=list)
    new_B: torch.Tensor | None = None   # LoRA B' (scaled) when every masked entry fills whole rows

    def to_json(self) -> dict:
        return {"name": self.name, "layer": self.layer, "module": self.module, "numel": self.numel,
                "masked": self.masked, "changed": self.changed, "delta_norm": self.delta_norm,
                "masked_delta_norm": self.masked_delta_norm, "projected_norm": self.projected_norm,
                "parts": self.parts}


def check_finite(t: torch.Tensor, name: str, role: str) -> None:
    """NaN/Inf check at the cost of one reduction: any NaN or Inf makes the float32 sum non-finite;
    the exact elementwise test runs only when the sum is not finite (it may merely overflow)."""
    if not t.is_floating_point() or bool(torch.isfinite(t.sum(dtype=torch.float32))):
        return
    if not bool(torch.isfinite(t).all()):
        raise NumericalError(f"{role} weight {name} contains NaN or Inf; the checkpoint is damaged, "
                             "fix or re-export it before editing")


def project_tensor(name: str, layer: int, module: str, *, w_aligned: torch.Tensor, w_finetuned: torch.Tensor,
                   w_base: torch.Tensor, mask: torch.Tensor, parts: list[tuple[str, int]],
                   settings: ProjectionSettings, factors: LoraFactors | None = None,
                   ) -> tuple[torch.Tensor, TensorEdit]:
    """All weights (out, in) as stored dtype; `mask` bool (out, in). Returns the output weight
    (out, in) in the stored dtype and the edit's statistics."""
    wa = w_aligned.float()
    delta = factors.delta() if factors is not None else w_finetuned.to(torch.float32, copy=True).sub_(wa)
    V_full = safety_direction(wa, w_base)
    edit = TensorEdit(name, layer, module, numel=mask.numel(), masked=int(torch.count_nonzero(mask)),
                      delta_norm=float(delta.norm()), masked_delta_norm=float(torch.where(mask, delta, 0.0).norm()))
    out = w_finetuned.clone()
    whole_rows = factors is not None
    new_B = factors.B.clone() if factors is not None else None
    sq = 0.0
    for part, r0, r1, proj in part_projectors(settings.projector, V_full, parts, settings.rank, settings.energy):
        size = r1 - r0
        pmask = mask[r0:r1]
        row_any = pmask.any(1)
        n_rows = int(torch.count_nonzero(row_any))
        info = {"part": part, "rows": [r0, r1], "masked": int(torch.count_nonzero(pmask)), **proj.describe()}
        if n_rows:
            # all rows touched (common at weight granularity): slices, no gather/scatter copies
            rows = None if n_rows == size else row_any.nonzero().squeeze(1)
            idx = slice(r0, r1) if rows is None else r0 + rows
            sub = pmask if rows is None else pmask[rows]
            if factors is not None:
                CB_rows = proj.apply(factors.B[r0:r1], rows=rows)
                projected = CB_rows @ factors.A
                if bool(sub.all()):
                    new_B[idx] = CB_rows
                else:
                    whole_rows = False
            else:
                projected = proj.apply(delta[r0:r1], rows=rows)       # (C dW)[rows], float32
            pn = float(torch.where(sub, projected, 0.0).norm())
            sq += pn * pn
            projected.add_(wa[idx])                                   # W_aligned + C dW on these rows
            if not bool(torch.isfinite(projected.sum())) and not bool(torch.isfinite(projected).all()):
                raise NumericalError(f"{name}: the projected weight has NaN/Inf; check the base and aligned weights")
            out[idx] = torch.where(sub, projected.to(w_finetuned.dtype), w_finetuned[idx])
            info["projected_norm"] = pn
            info["zero_direction"] = proj.is_zero
        edit.parts.append(info)
    edit.changed = int(torch.count_nonzero(out != w_finetuned))
    edit.projected_norm = sq ** 0.5 if edit.masked else 0.0
    if factors is not None and whole_rows:
        edit.new_B = new_B
    return out, edit
