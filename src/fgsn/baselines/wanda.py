"""Wanda safety-neuron pruning: the "Wanda" baseline of the FGSN paper, as Antidote (Huang et al.
2024, "Antidote: Post-fine-tuning Safety Alignment for Large Language Models against Harmful
Fine-tuning") applies it: score every weight with Wanda (Sun et al. 2024, "A Simple and Effective
Pruning Approach for Large Language Models") on harmful prompts and remove the top-scored ones.

    I_ij = |M_ij| * ||X_:,j||_2            X: the module's inputs over all tokens of the harmful prompts
                                          M = W_finetuned (`score` wanda) or dW (`score` wanda-delta)
    mask = top-q of I                      per output row (`group` row: Wanda's comparison group, also
                                          Antidote's) or over the flattened module (`group` module:
                                          fgsn.locate.masks.safety_mask with p = 0)
    W_out = where(mask, W_aligned, W_finetuned)   `target` update: zero the fine-tuning update (default)
    W_out = where(mask, 0, W_finetuned)           `target` weight: prune the weight itself (Antidote)

Unlike FGSN there is no layer restriction (every layer) and no task exclusion (no top-p set is
removed from the mask). The activation statistics come from fgsn.locate's probes on the
fine-tuned model (a LoRA adapter merged in memory), through the same chat template as at
evaluation; scores from fgsn.locate.scores. With `target` update and a LoRA fine-tune, modules the
adapter does not change have no update to remove and are skipped.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

import torch

from fgsn.artifacts.manifest import assemble_manifest
from fgsn.artifacts.masks import PackedMasks
from fgsn.baselines.common import mask_record
from fgsn.baselines.options import WandaOptions
from fgsn.data.prompts import load_prompts
from fgsn.data.promptset import concat
from fgsn.edit.projection import check_finite
from fgsn.edit.rewrite import EditResult, require_out, stream_rewrite, write_output
from fgsn.errors import InputError
from fgsn.locate.layers import parse_layers
from fgsn.locate.masks import safety_mask
from fgsn.locate.probes import ProbeStats, run_probes
from fgsn.locate.scores import ScoreInputs, score
from fgsn.models.finetune import LoraFinetune
from fgsn.models.loading import load_model
from fgsn.models.registry import EditTarget, edit_targets, from_out_in, live_layers, live_module, to_out_in
from fgsn.models.trio import Trio, open_trio

log = logging.getLogger(__name__)


def row_top_fraction(scores: torch.Tensor, q: float) -> torch.Tensor:
    """Top round(q * d_in) entries of every output row (Wanda's per-output comparison group)."""
    k = int(round(q * scores.shape[1]))
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    if k > 0:
        idx = torch.topk(scores, k, dim=1, sorted=False).indices
        mask.scatter_(1, idx, True)
    return mask


def wanda_mask(scores: torch.Tensor, q: float, group: str = "row", granularity: str = "weight") -> torch.Tensor:
    """The entries to remove, (out, in) bool."""
    if group == "row":
        if granularity != "weight":
            raise InputError("Wanda --group row selects weights within each output row; --granularity neuron "
                             "(whole rows) needs --group module")
        return row_top_fraction(scores, q)
    if group == "module":
        return safety_mask(scores, scores, q, 0.0, granularity)  # p = 0: no task exclusion
    raise InputError(f"unknown Wanda group {group!r}; use row or module")


def wanda_targets(trio: Trio, opts: WandaOptions) -> list[EditTarget]:
    lay = parse_layers(opts.layers, trio.num_layers)
    targets = edit_targets(trio.arch, trio.aligned.names, trio.num_layers, opts.modules, lay)
    if opts.target == "update" and isinstance(trio.finetuned, LoraFinetune):
        targets = [t for t in targets if trio.finetuned.changed(t.tensor)]
    if not targets:
        raise InputError("Wanda: no target module (the adapter changes none of --modules in --layers)")
    return targets


def harmful_stats(trio: Trio, targets: list[EditTarget], opts: WandaOptions) -> ProbeStats:
    """Per-input-feature sums of squares of every target module's inputs on the harmful prompts,
    on the fine-tuned model."""
    from fgsn.locate.cache import cached_probe, probe_key

    prompts = concat("harmful", [load_prompts(s) for s in opts.harmful]).require(1, "harmful prompts")
    if isinstance(trio.finetuned, LoraFinetune):
        path, adapter = trio.aligned.path, trio.finetuned.path
    else:
        path, adapter = trio.finetuned.path, None
    model, tok = load_model(path, device=opts.device, dtype=opts.dtype, adapter=adapter,
                            trust_remote_code=opts.trust_remote_code, allow_pickle=opts.allow_pickle)
    try:
        modules = {t.tensor: live_module(model, trio.arch, t) for t in targets}
        stop = max(t.layer for t in targets)
        key = None
        if opts.cache:
            key = probe_key(model=trio.finetuned.sha256, prompts=prompts.texts, modules=sorted(modules), hidden=False,
                            stop=stop, chat=opts.use_chat_template, system=opts.system,
                            dtype=str(next(model.parameters()).dtype), batch=opts.batch_size,
                            max_length=opts.max_length)

        def compute(model=model, tok=tok, modules=modules) -> ProbeStats:
            return run_probes(model, tok, prompts.texts, layers=live_layers(model, trio.arch), modules=modules,
                              hidden_states=False, stop_after_layer=stop, batch_size=opts.batch_size,
                              use_chat_template=opts.use_chat_template, system=opts.system,
                              max_length=opts.max_length, desc="probe harmful")

        stats = cached_probe(key, compute)
    finally:
        del model
        gc.collect()
    return stats


def _no_projection(_y):  # pragma: no cover - only the offsafety score projects
    raise InputError("the Wanda baseline has no projector")


def run_wanda(opts: WandaOptions) -> EditResult:
    out = require_out(opts, "wanda")
    t0 = time.time()
    if opts.group == "row" and opts.granularity != "weight":
        raise InputError("Wanda --group row selects weights within each output row; --granularity neuron "
                         "(whole rows) needs --group module")
    trio = open_trio(opts.aligned, opts.finetuned, opts.base, allow_pickle=opts.allow_pickle)
    torch.manual_seed(opts.seed)
    targets = wanda_targets(trio, opts)
    stats = harmful_stats(trio, targets, opts)
    by_name = {t.tensor: t for t in targets}
    arch = trio.arch
    records: list[dict] = []
    masks = PackedMasks() if opts.save_masks else None

    def transform(name: str, w_ft: torch.Tensor) -> torch.Tensor | None:
        t = by_name.get(name)
        if t is None:
            return None
        w_al = trio.aligned.get(name)
        check_finite(w_al, name, "aligned")
        wf = to_out_in(w_ft, arch).float()
        delta = wf - to_out_in(w_al, arch).float()
        inputs = ScoreInputs(name, wf, delta, _no_projection, norms={"harmful": stats.feature_norms(name)})
        h = score(opts.score, inputs, "harmful")
        mask = wanda_mask(h, opts.q, opts.group, opts.granularity)
        if masks is not None:
            masks.put(name, mask)
        m = from_out_in(mask, arch)
        fill = w_al if opts.target == "update" else torch.zeros((), dtype=w_ft.dtype)
        new = torch.where(m, fill, w_ft)
        records.append(mask_record(name, t, mask, new, w_ft, delta))
        return new

    def write(tmp: Path) -> dict:
        stream_rewrite(trio, tmp, transform, opts.max_shard_gb, desc="wanda")
        if masks is not None:
            (tmp / "fgsn").mkdir(exist_ok=True)
            masks.save(tmp / "fgsn" / "masks.safetensors", meta={"method": "wanda"})
        layers = sorted({r["layer"] for r in records})
        extra = {"wanda": {"q": opts.q, "target": opts.target, "group": opts.group, "granularity": opts.granularity,
                           "score": opts.score, "harmful_prompts": stats.n_prompts, "harmful_tokens": stats.n_tokens}}
        man = assemble_manifest(method="wanda", opts=opts, trio=trio, modules=records, layers=layers,
                                edited_params=sum(r["numel"] for r in records), extra=extra)
        man["prompt_counts"] = {"harmful": stats.n_prompts}
        return man

    return write_output(out, opts, write, t0)
