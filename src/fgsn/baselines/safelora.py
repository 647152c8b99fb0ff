"""SafeLoRA (Hsu et al., "Safe LoRA: the Silver Lining of Reducing Safety Risks when Finetuning
Large Language Models", NeurIPS 2024; reference code IBM/SafeLoRA).

Per linear module, with the alignment matrix V = W_aligned - W_base and the fine-tuning update
dW = W_finetuned - W_aligned (for a LoRA adapter dW = scale * B A):

    C      = V V^T / ||V||_F                         (never materialised: fgsn.direction)
    cos    = <C dW, dW>_F / (||C dW||_F ||dW||_F)      (flattened cosine, as in the reference code)
    W_out  = W_aligned + C dW     if the module is selected
             W_finetuned          otherwise (bit for bit)

Selection (`select`):
- `threshold` (the reference code's default): every module with cos <= `threshold` (default 0.5);
- `number`: the `k` modules with the lowest cos (the reference's `num_proj_layers`, default 10;
  ties broken by checkpoint order, so exactly k modules are projected).

A module whose update is zero is skipped (its cosine is undefined). A module whose V is zero has
C = 0, hence cos = 0, and is projected to C dW = 0 (its update is removed), as in the reference.
Fused modules (e.g. Phi-3 qkv) get one V and one C per logical part; the cosine is over the whole
tensor. The whole update of a selected module is projected: the mask is the full module.

Beyond the reference code: full fine-tunes too (dW from the two checkpoints; the reference only
handles PEFT LoRA), streaming from safetensors (two passes: cosines first, then the rewrite, so
that `number` mode ranks all modules before editing), and for a LoRA input an `adapter` output
(lora_B <- C lora_B, lora_A unchanged), which is what the reference code writes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from fgsn.artifacts.manifest import assemble_manifest
from fgsn.artifacts.masks import PackedMasks
from fgsn.baselines.options import SafeLoRAOptions
from fgsn.direction import part_projectors, safety_direction
from fgsn.edit.projection import ProjectionSettings, check_finite
from fgsn.edit.revert import revert_targets
from fgsn.edit.rewrite import EditResult, require_out, side_files, write_output
from fgsn.edit.stream import stream_edit, write_adapter
from fgsn.errors import InputError
from fgsn.models.finetune import LoraFinetune
from fgsn.models.registry import EditTarget, to_out_in
from fgsn.models.safetensors_io import PlannedTensor
from fgsn.models.trio import Trio, open_trio
from fgsn.models.writer import CheckpointWriter, copy_side_files

log = logging.getLogger(__name__)


def candidate_targets(trio: Trio, modules: list[str] | None, layers: str | None) -> list[EditTarget]:
    """The linear modules SafeLoRA considers (those a LoRA adapter changes, for an adapter)."""
    return revert_targets(trio, modules, layers, who="SafeLoRA")


def module_cosine(trio: Trio, t: EditTarget) -> dict:
    """cos(C dW, dW) of one module, and the norms behind it."""
    arch = trio.arch
    w_al = trio.aligned.get(t.tensor)
    w_base = trio.base.get(t.tensor)
    check_finite(w_al, t.tensor, "aligned")
    check_finite(w_base, t.tensor, "base")
    wa = to_out_in(w_al, arch).float()
    V = safety_direction(wa, to_out_in(w_base, arch))
    factors = trio.finetuned.factors(t.tensor)
    if factors is not None:
        delta = factors.delta()
    else:
        w_ft = trio.finetuned.get(t.tensor)
        check_finite(w_ft, t.tensor, "fine-tuned")
        delta = to_out_in(w_ft, arch).float() - wa
    parts = arch.part_sizes(t.spec, trio.aligned.config, delta.shape[0])
    cdw = torch.empty_like(delta)
    zero_v = []
    for part, r0, r1, proj in part_projectors("safelora", V, parts):
        if factors is not None:
            cdw[r0:r1] = proj.apply(factors.B[r0:r1]) @ factors.A
        else:
            cdw[r0:r1] = proj.apply(delta[r0:r1])
        if proj.is_zero:
            zero_v.append(part)
    dn = float(delta.double().norm())
    cn = float(cdw.double().norm())
    rec = {"name": t.tensor, "layer": t.layer, "module": t.spec.name, "numel": delta.numel(),
           "delta_norm": dn, "projected_norm": cn, "zero_direction": zero_v}
    if dn == 0.0:
        rec["cos"] = None
        rec["skipped"] = "no fine-tuning update"
    else:
        # torch.nn.functional.cosine_similarity semantics: 0 when C dW = 0
        rec["cos"] = float((cdw.double() * delta.double()).sum()) / max(cn * dn, 1e-300) if cn > 0 else 0.0
    return rec


def select_modules(records: list[dict], select: str, threshold: float, k: int) -> list[str]:
    """Names of the modules to project (see module doc)."""
    ranked = [r for r in records if r["cos"] is not None]
    if select == "threshold":
        return [r["name"] for r in ranked if r["cos"] <= threshold]
    if select == "number":
        order = sorted(range(len(ranked)), key=lambda i: (ranked[i]["cos"], i))
        return [ranked[i]["name"] for i in order[:k]]
    raise InputError(f"unknown SafeLoRA selection {select!r}; use threshold or number")


def run_safelora(opts: SafeLoRAOptions) -> EditResult:
    out = require_out(opts, "safelora")
    t0 = time.time()
    trio = open_trio(opts.aligned, opts.finetuned, opts.base, allow_pickle=opts.allow_pickle)
    if opts.output_format == "adapter" and not isinstance(trio.finetuned, LoraFinetune):
        raise InputError("SafeLoRA --output-format adapter needs a LoRA adapter as --finetuned; a full fine-tune "
                         "gives a full checkpoint (--output-format merged)")
    targets = candidate_targets(trio, opts.modules, opts.layers)
    records = [module_cosine(trio, t) for t in targets]
    chosen = set(select_modules(records, opts.select, opts.threshold, opts.k))
    masks = PackedMasks()
    for t in targets:
        if t.tensor in chosen:
            masks.put(t.tensor, torch.ones(_out_in_shape(trio, t.tensor), dtype=torch.bool))
    by_name = {t.tensor: t for t in targets}
    settings = ProjectionSettings("safelora")
    log.info("SafeLoRA: projecting %d of %d modules (%s)", len(chosen), len(targets), opts.select)

    def write(tmp: Path) -> dict:
        if opts.output_format == "adapter":
            # the core's adapter writer (lora_B' = C B / scale)
            edits = stream_edit(trio, masks, by_name, settings, None)
            write_adapter(tmp, trio, edits)
        else:
            names = trio.aligned.names
            plan = [PlannedTensor(n, trio.aligned.dtype(n), trio.aligned.shape(n)) for n in names]
            writer = CheckpointWriter(tmp, plan, int(opts.max_shard_gb * 1024**3))
            edits = stream_edit(trio, masks, by_name, settings, writer)
            writer.close()
            copy_side_files(side_files(trio), tmp)
        modules = []
        for r in records:
            e = edits.get(r["name"])
            projected = r["name"] in chosen
            modules.append({**r, "selected": projected, "masked": r["numel"] if projected else 0,
                            "changed": e.changed if e is not None else 0})
        layers = sorted({m["layer"] for m in modules if m["selected"]})
        cosines = [r["cos"] for r in records if r["cos"] is not None]
        extra = {"safelora": {"select": opts.select, "threshold": opts.threshold if opts.select == "threshold" else None,
                              "k": opts.k if opts.select == "number" else None, "projected_modules": len(chosen),
                              "candidate_modules": len(targets),
                              "mean_cos": sum(cosines) / len(cosines) if cosines else None}}
        return assemble_manifest(method="safelora", opts=opts, trio=trio, modules=modules, layers=layers,
                                 edited_params=sum(r["numel"] for r in records), extra=extra)

    return write_output(out, opts, write, t0)


def _out_in_shape(trio: Trio, name: str) -> tuple[int, int]:
    shape = trio.aligned.shape(name)
    return (shape[1], shape[0]) if trio.arch.transposed else (shape[0], shape[1])
