"""What several baselines share: the model their safety vector is measured from, and the per-tensor
record of an entry-wise mask, so that IRR, RESTA and Wanda report the same fields the same way."""

from __future__ import annotations

import torch

from fgsn.errors import InputError
from fgsn.models.checkpoint import Checkpoint
from fgsn.models.trio import Trio, check_same_model, open_trio


def open_with_unaligned(opts, method: str) -> tuple[Trio, Checkpoint]:
    """The trio and the model the safety vector (aligned − unaligned) is measured from: the paper's
    unaligned model when `opts.unaligned` is given, else the base model as its stand-in."""
    if (opts.unaligned or opts.base) is None:
        raise InputError(f"{method} needs the model the safety vector is measured from: --base (the default "
                         "stand-in, aligned - base) or --unaligned (the paper's harmfully fine-tuned aligned model)")
    trio = open_trio(opts.aligned, opts.finetuned, opts.base, allow_pickle=opts.allow_pickle)
    if not opts.unaligned:
        return trio, trio.base
    unaligned = Checkpoint(opts.unaligned, allow_pickle=opts.allow_pickle)
    check_same_model(trio.aligned, unaligned, "aligned", "unaligned")
    return trio, unaligned


def mask_record(name: str, target, mask: torch.Tensor, new: torch.Tensor, w_ft: torch.Tensor,
                delta: torch.Tensor) -> dict:
    """One tensor's manifest record: its size, how many entries the mask picks and how many really
    changed, and the share of the update's energy (‖delta‖²) the mask covers."""
    dn = float(delta.pow(2).sum())
    return {"name": name, "layer": target.layer, "module": target.spec.name, "numel": mask.numel(),
            "masked": int(mask.sum()), "changed": int((new != w_ft).sum()),
            "mask_update_energy": float(delta[mask].pow(2).sum()) / dn if dn else 0.0}
