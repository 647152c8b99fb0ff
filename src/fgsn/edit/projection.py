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

from fgsn.edit.projectors import Projector
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
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise NumericalError(f"{role} weight {name} contains NaN or Inf; the checkpoint is damaged, "
                             "fix or re-export it before editing")


def project_tensor(name: str, layer: int, module: str, *, w_aligned: torch.Tensor, w_finetuned: torch.Tensor,
                   w_base: torch.Tensor, mask: torch.Tensor, parts: list[tuple[str, int]],
                   settings: ProjectionSettings, factors: LoraFactors | None = None,
                   ) -> tuple[torch.Tensor, TensorEdit]:
    """All weights (out, in) as stored dtype; `mask` bool (out, in). Returns the output weight
    (out, in) in the stored dtype and the edit's statistics."""
    wa = w_aligned.float()
    delta = factors.delta() if factors is not None else w_finetuned.float() - wa
    V_full = wa - w_base.float()
    new_delta = delta.clone()
    edit = TensorEdit(name, layer, module, numel=mask.numel(), masked=int(mask.sum()),
                      delta_norm=float(delta.norm()), masked_delta_norm=float(delta[mask].norm()))
    whole_rows = factors is not None
    new_B = factors.B.clone() if factors is not None else None
    r0 = 0
    for part, size in parts:
        r1 = r0 + size
        pmask = mask[r0:r1]
        rows = pmask.any(1).nonzero().squeeze(1)
        proj = Projector(settings.projector, V_full[r0:r1], rank=settings.rank, energy=settings.energy)
        info = {"part": part, "rows": [r0, r1], "masked": int(pmask.sum()), **proj.describe()}
        if rows.numel():
            if factors is not None:
                CB_rows = proj.apply(factors.B[r0:r1], rows=rows)
                projected = CB_rows @ factors.A
                if bool(pmask[rows].all()):
                    new_B[r0 + rows] = CB_rows
                else:
                    whole_rows = False
            else:
                projected = proj.apply(delta[r0:r1], rows=rows)
            sub = pmask[rows]
            block = new_delta[r0 + rows]
            block[sub] = projected[sub]
            new_delta[r0 + rows] = block
            info["projected_norm"] = float(projected[sub].norm())
            info["zero_direction"] = proj.is_zero
        edit.parts.append(info)
        r0 = r1
    out_f = wa + new_delta
    if not torch.isfinite(out_f).all():
        raise NumericalError(f"{name}: the projected weight has NaN/Inf; check the base and aligned weights")
    out = torch.where(mask, out_f.to(w_finetuned.dtype), w_finetuned)
    edit.changed = int((out != w_finetuned).sum())
    edit.projected_norm = float(new_delta[mask].norm()) if edit.masked else 0.0
    if factors is not None and whole_rows:
        edit.new_B = new_B
    return out, edit
