"""IRR (Wu et al., "Separate the Wheat from the Chaff: A Post-Hoc Approach to Safety Re-Alignment
for Fine-Tuned Language Models", ACL Findings 2025; code pikepokenew/IRR).

Identify, Remove, Recalibrate, per linear module, with the fine-tuning update
delta = W_finetuned - W_aligned and the safety vector tau = W_aligned - W_unaligned:

    U      = {ij : delta_ij * tau_ij < 0}          entries whose update opposes the safety vector
    W_out  = W_aligned on U, W_finetuned elsewhere  (delta_ij <- 0 on U: all of U, the README's
                                                    default --sparsity 0)
    then the kept entries of every row are recalibrated with the OBS / SparseGPT update on H from
    `compensate_samples` (10) task examples (fgsn.edit.compensate; the reference's sparsegpt.py
    column sweep by default, `compensate_solver exact` for the per-row optimum).

W_unaligned: the paper's is the aligned model made unaligned again by a harmful fine-tune; pass it
as `unaligned`. By default the base model stands in (tau = V = W_aligned - W_base, the direction
FGSN, SafeLoRA and RESTA use). Differences from the reference code, all deliberate: every linear
module by default (the reference edits q_proj and v_proj only: `--modules q_proj,v_proj` does the
same); entries where tau = 0 count as not opposing (the reference's sign comparison would remove
them; with no safety direction there is nothing to restore); the reference's Fisher ranking
matters only for --sparsity > 0 and is not implemented. A LoRA fine-tune is written merged (the
removal is entry-wise).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from fgsn.artifacts.manifest import assemble_manifest
from fgsn.baselines.common import mask_record, open_with_unaligned
from fgsn.baselines.options import IRROptions
from fgsn.data.prompts import load_prompts
from fgsn.data.promptset import PromptSet, concat
from fgsn.edit.compensate import compensate_checkpoint
from fgsn.edit.projection import check_finite
from fgsn.edit.revert import MERGED_NOTE, revert_targets
from fgsn.edit.rewrite import EditResult, require_out, stream_rewrite, write_output
from fgsn.errors import InputError
from fgsn.models.finetune import LoraFinetune

log = logging.getLogger(__name__)


def irr_mask(delta: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """The unsafe set: entries whose fine-tuning update has the opposite sign of the safety vector."""
    return (delta.float() * tau.float()) < 0


def run_irr(opts: IRROptions) -> EditResult:
    out = require_out(opts, "irr")
    t0 = time.time()
    trio, unaligned = open_with_unaligned(opts, "IRR")
    task = PromptSet("task", [])
    if opts.compensate != "none":
        if not opts.task:
            raise InputError("IRR recalibrates the kept entries on task examples: give --task FILE, or "
                             "--compensate none for the removal alone")
        task = concat("task", [load_prompts(s) for s in opts.task]).require(1, "task examples")
    targets = revert_targets(trio, opts.modules, opts.layers)
    by_name = {t.tensor: t for t in targets}
    records: list[dict] = []
    if isinstance(trio.finetuned, LoraFinetune):
        log.warning("irr: %s", MERGED_NOTE)

    def transform(name: str, w_ft: torch.Tensor) -> torch.Tensor | None:
        t = by_name.get(name)
        if t is None:
            return None
        w_al, w_un = trio.aligned.get(name), unaligned.get(name)
        check_finite(w_al, name, "aligned")
        check_finite(w_un, name, "unaligned")
        wa = w_al.float()
        delta = w_ft.float() - wa
        mask = irr_mask(delta, wa - w_un.float())
        new = torch.where(mask, w_al, w_ft)
        records.append(mask_record(name, t, mask, new, w_ft, delta))
        return new

    def write(tmp: Path) -> dict:
        stream_rewrite(trio, tmp, transform, opts.max_shard_gb, desc="irr")
        comp = None
        if opts.compensate != "none":
            comp = compensate_checkpoint(tmp, trio, targets, task, opts, opts, int(opts.max_shard_gb * 1024**3))
            kept = {r["name"]: r["kept_changed"] for r in comp}
            for r in records:
                r["changed"] += kept.get(r["name"], 0)
        extra_inputs = {}
        if opts.unaligned:
            extra_inputs["unaligned"] = {"path": str(unaligned.path), "sha256": unaligned.sha256}
        extra = {"irr": {"safety_vector_from": "unaligned" if opts.unaligned else "base",
                         "compensate": opts.compensate, "compensate_samples": opts.compensate_samples,
                         "compensate_solver": opts.compensate_solver, "compensation": comp,
                         "output": MERGED_NOTE if isinstance(trio.finetuned, LoraFinetune) else "merged checkpoint"}}
        return assemble_manifest(method="irr", opts=opts, trio=trio, modules=records,
                                 layers=sorted({r["layer"] for r in records if r["masked"]}),
                                 edited_params=sum(r["numel"] for r in records), extra_inputs=extra_inputs, extra=extra)

    return write_output(out, opts, write, t0)
