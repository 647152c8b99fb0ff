"""RESTA (Bhardwaj, Anh and Poria, "Language Models are Homer Simpson! Safety Re-Alignment of
Fine-tuned Language Models through Task Arithmetic", ACL 2024; declare-lab/resta).

Restoring Safety through Task Arithmetic: add a safety vector to every weight of the fine-tuned
model,

    delta_s   = theta_aligned - theta_unaligned                         (the safety vector)
    theta_out = theta_aligned + DARE(theta_finetuned - theta_aligned) + beta * delta_s

where DARE (Yu et al. 2024, "drop and rescale"), the paper's optional "drift enhancement", drops
each entry of the fine-tuning delta with probability `dare` and rescales the kept ones by
1 / (1 - dare), so that E[DARE(d)] = d. Without DARE (`dare` = 0) this is
theta_out = theta_finetuned + beta * delta_s.

theta_unaligned: the paper's is the aligned model after a short harmful fine-tune; pass it as
`unaligned`. By default fgsn uses `base` (the pre-alignment model), which makes delta_s the same
alignment delta V = W_aligned - W_base that FGSN and SafeLoRA project on, so that the three
methods share one safety direction in a comparison.

Scope (`scope`): `all` (the paper: every floating-point tensor, embeddings and norms included)
or `linear` (only the registry's linear modules in the decoder layers). DARE masks are drawn per
tensor from a generator seeded by (`seed`, tensor name): deterministic and independent of the
order in which tensors are visited. For a LoRA fine-tune, DARE acts on the merged update
scale * B A (entry-wise), so the output is always a merged checkpoint.

Entries the method does not change (delta_s = 0 and, without DARE, everywhere) keep the
fine-tuned value bit for bit; changed entries are computed in float32 and cast to the stored dtype.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import torch

from fgsn.artifacts.manifest import assemble_manifest
from fgsn.baselines.common import open_with_unaligned
from fgsn.baselines.options import RestaOptions
from fgsn.edit.projection import check_finite
from fgsn.edit.rewrite import EditResult, require_out, stream_rewrite, write_output
from fgsn.errors import InputError
from fgsn.models.registry import edit_targets
from fgsn.models.trio import layer_of

log = logging.getLogger(__name__)


def dare(delta: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each entry with probability p, rescale the kept ones by 1/(1-p): E[dare(d)] = d."""
    if not 0.0 <= p < 1.0:
        raise InputError(f"DARE drop rate {p} must lie in [0, 1)")
    if p == 0.0:
        return delta
    keep = torch.rand(delta.shape, generator=generator) >= p
    return torch.where(keep, delta / (1.0 - p), torch.zeros((), dtype=delta.dtype))


def resta_tensor(w_ft: torch.Tensor, w_al: torch.Tensor, w_un: torch.Tensor, beta: float, p: float,
                 generator: torch.Generator | None, delta: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, int]:
    """The RESTA output for one tensor (stored dtype) and the number of entries it sets out to
    modify. `delta` (float32) overrides w_ft - w_al (exact LoRA updates)."""
    wa = w_al.float()
    d = delta if delta is not None else w_ft.float() - wa
    sv = beta * (wa - w_un.float())
    modified = sv != 0
    if p > 0.0:
        d = dare(d, p, generator)
        modified |= (w_ft.float() - wa) != 0
    out = torch.where(modified, (wa + d + sv).to(w_ft.dtype), w_ft)
    return out, int(modified.sum())


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed that depends on the run seed and the tensor name only (not on the order
    in which tensors are visited)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def run_resta(opts: RestaOptions) -> EditResult:
    out = require_out(opts, "resta")
    t0 = time.time()
    trio, unaligned = open_with_unaligned(opts, "RESTA")
    layer = layer_of(trio)
    if opts.scope == "linear":
        scope = {t.tensor for t in edit_targets(trio.arch, trio.aligned.names, trio.num_layers)}
    else:
        scope = {n for n in trio.aligned.names if trio.aligned.dtype(n).is_floating_point}
    records: list[dict] = []

    def transform(name: str, w_ft: torch.Tensor) -> torch.Tensor | None:
        if name not in scope:
            return None
        w_al = trio.aligned.get(name)
        w_un = unaligned.get(name)
        check_finite(w_al, name, "aligned")
        check_finite(w_un, name, "unaligned")
        factors = trio.finetuned.factors(name)
        delta = None
        if factors is not None:
            delta = factors.delta()
            if trio.arch.transposed:
                delta = delta.T
        g = torch.Generator().manual_seed(tensor_seed(opts.seed, name)) if opts.dare > 0 else None
        new, masked = resta_tensor(w_ft, w_al, w_un, opts.beta, opts.dare, g, delta)
        rec = {"name": name, "layer": layer(name), "module": name.rsplit(".", 2)[-2] if "." in name else name,
               "numel": w_ft.numel(), "masked": masked, "changed": int((new != w_ft).sum()),
               "safety_vector_norm": float((w_al.float() - w_un.float()).norm())}
        if not torch.isfinite(new).all():
            raise InputError(f"{name}: RESTA output has NaN/Inf (beta {opts.beta}); use a smaller --beta")
        records.append(rec)
        return new

    def write(tmp: Path) -> dict:
        stream_rewrite(trio, tmp, transform, opts.max_shard_gb, desc="resta")
        layers = sorted({r["layer"] for r in records if r["layer"] is not None and r["masked"]})
        extra_inputs = {}
        if opts.unaligned:
            extra_inputs["unaligned"] = {"path": str(unaligned.path), "sha256": unaligned.sha256}
        extra = {"resta": {"beta": opts.beta, "dare": opts.dare, "scope": opts.scope,
                           "safety_vector_from": "unaligned" if opts.unaligned else "base"}}
        return assemble_manifest(method="resta", opts=opts, trio=trio, modules=records, layers=layers,
                                 edited_params=sum(r["numel"] for r in records), extra_inputs=extra_inputs,
                                 extra=extra)

    return write_output(out, opts, write, t0)
