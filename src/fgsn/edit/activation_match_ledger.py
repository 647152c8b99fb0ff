"""Continual activation matching: how `fgsn activation-match --ledger DIR --category NAME` reads and
writes the continual ledger (fgsn.edit.ledger). The maths is `continual_maps` in
fgsn.edit.activation_match; the run is fgsn.edit.activation_match_run.

Step k (0-based) repairs one new harm category on W_{k-1}, the output of the latest step (the
ledger checks its sha256), and keeps the outputs earlier steps restored on their categories'
harmful inputs. Step 0 has no earlier category and is today's edit, byte for byte.

How the earlier categories reach step k: each step stores in the ledger the harmful prompts and
the answers that followed them (LEDGER/prompts/NNN-CAT.jsonl) with the settings that encoded them
and a digest of the token ids. Step k re-encodes them (the digest must match: same tokenizer) and
takes their Gram G_old on W_{k-1}, the model that restored those outputs, with the same hooks,
layer chunks and per-layer disk cache as G_h and G_t. The cost is one more forward pass per layer
chunk over all earlier categories' tokens (pooled: G_old is their per-token mean) and one more
(in x in) float64 Gram resident per distinct module input (the chunk planner counts it). Storing
each category's Grams instead would take ~0.8 GB per category for the SmolLM2-135M organism and
~37 GB for a 7B model, and they would describe an older model than W_{k-1}.

The task term's reference is the original fine-tune W_f (not W_{k-1}), so the task drift does
not accumulate over steps: its path is recorded at step 0 (`paths` of the ledger) and checked by
sha256 when a later step opens it (`--original-finetuned` when it has moved).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from fgsn.artifacts.masks import PackedMasks
from fgsn.edit.ledger import Ledger
from fgsn.errors import InputError, LedgerError
from fgsn.locate.attribution import _encode
from fgsn.locate.grams import sequences_digest
from fgsn.models.checkpoint import Checkpoint
from fgsn.models.finetune import Finetune
from fgsn.models.trio import Trio, open_finetuned

log = logging.getLogger(__name__)

EDITOR = "activation-match"


@dataclass
class Continual:
    """What a continual step knows of the ledger before it edits."""

    ledger: Ledger
    category: str
    step: int                     # this step's index (0: the first category)
    earlier: list[dict]           # the earlier steps, as recorded
    original: Finetune | None     # W_f, the fine-tune step 0 started from (when the task term needs it)
    rows_before: PackedMasks      # per tensor, the output rows (out,) an earlier step changed


def needs_original(opts, has_task: bool) -> bool:
    """The ridge form's task term (λ > 0) refers to W_f; the joint step is an edit of W_f."""
    return opts.old_target == "joint" or (has_task and opts.form == "ridge" and opts.lam > 0)


def open_continual(opts, trio: Trio, ledger: Ledger, has_task: bool) -> Continual:
    """Check that this run continues `ledger` (called with its lock held) and gather what the step
    needs from it."""
    category = opts.category
    ledger.check_new_step(EDITOR, category, trio.base.sha256 if trio.base is not None else None,
                          trio.aligned.sha256, trio.finetuned.sha256)
    original = None
    if ledger.steps and needs_original(opts, has_task):
        original = _open_original(opts, trio, ledger)
    rows = PackedMasks()
    for step in ledger.steps:
        rows.union_update(PackedMasks.load(ledger.path / step["mask_file"]))
    return Continual(ledger, category, len(ledger.steps), list(ledger.steps), original, rows)


def _open_original(opts, trio: Trio, ledger: Ledger) -> Finetune:
    want = ledger.doc["models"]["finetuned_original"]
    path = opts.original_finetuned or (ledger.doc.get("paths") or {}).get("finetuned_original")
    fix = "pass --original-finetuned PATH (the fine-tuned model the ledger's first step started from)"
    if path is None or not Path(path).exists():
        raise InputError(f"ledger {ledger.path}: the original fine-tuned model (the task term's reference) is not at "
                         f"{path}; {fix}")
    ft = open_finetuned(path, trio.aligned, trio.arch, allow_pickle=opts.allow_pickle)
    if ft.sha256 != want:
        raise InputError(f"{path} (sha256 {ft.sha256[:12]}...) is not the fine-tuned model ledger {ledger.path} "
                         f"started from (sha256 {want[:12]}...); {fix}")
    return ft


def encoding(opts) -> dict:
    """The settings that turn a recorded prompt and answer into token ids."""
    return {"use_chat_template": opts.use_chat_template, "system": opts.system, "max_length": opts.max_length}


def earlier_sequences(cont: Continual, tok) -> list[list[list[int]]]:
    """The token ids of every earlier category's harmful sequences, as each step encoded them: one
    list per category (each its own Gram cache entry, the one its step took as harmful)."""
    out: list[list[list[int]]] = []
    for step in cont.earlier:
        seqs = [_encode(tok, r["prompt"], r.get("answer"), **step["encoding"])[0] for r in cont.ledger.prompts(step)]
        if sequences_digest(seqs) != step["sequences_sha256"]:
            raise LedgerError(f"ledger {cont.ledger.path}, step {step['step']} ({step['category']}): its prompts "
                              "encode to other token ids with this model's tokenizer than when it was recorded; "
                              "continue the ledger with the tokenizer it was made with, or start a new --ledger")
        out.append(seqs)
    return out


def module_stats(cont: Continual, name: str, changed: torch.Tensor, rows_changed: torch.Tensor) -> dict:
    """Per module: the rows this step changed, how many an earlier step had changed, and the entries
    changed in those rows (`changed`: bool (out, in), `rows_changed`: bool (out,))."""
    before = cont.rows_before
    if name in before:
        if before.shape(name) != tuple(rows_changed.shape):
            raise LedgerError(f"ledger {cont.ledger.path}: earlier rows of {name} have shape "
                              f"{list(before.shape(name))}, this model's {list(rows_changed.shape)}; use a new --ledger")
        prev = before.get(name)
    else:
        prev = torch.zeros_like(rows_changed)
    return {"rows_changed": int(rows_changed.sum()), "rows_again": int((rows_changed & prev).sum()),
            "changed_again": int(changed[prev].sum())}


def continual_totals(records: list[dict]) -> dict:
    """The step's overlap with earlier steps, over every module it considered."""
    edited = [r for r in records if r.get("rows_edited")]
    drifts = [r["old_drift"] for r in edited if r.get("old_drift") is not None]
    old_before = sum(r.get("old_gap_before", 0.0) for r in edited)
    old_after = sum(r.get("old_gap_after", 0.0) for r in edited)
    with_cos = [r for r in edited if r.get("overlap_cos") is not None]
    dot = sum(r["overlap_cos"] * r["change_norm"] * r["earlier_norm"] for r in with_cos)
    nd = sum(r["change_norm"] ** 2 for r in with_cos) ** 0.5
    ne = sum(r["earlier_norm"] ** 2 for r in with_cos) ** 0.5
    return {"rows_changed": sum(r.get("rows_changed", 0) for r in records),
            "rows_again": sum(r.get("rows_again", 0) for r in records),
            "changed_again": sum(r.get("changed_again", 0) for r in records),
            "mean_old_drift": sum(drifts) / len(drifts) if drifts else None,
            "max_old_drift": max(drifts, default=None),
            # > 1: the earlier categories' module-level gap to the aligned outputs grew
            "old_gap_ratio": old_after / old_before if old_before > 0 else None,
            "overlap_cos": dot / (nd * ne) if with_cos and nd > 0 and ne > 0 else None}


def record_step(cont: Continual, opts, trio: Trio, out: Path, prompts: list[dict], harmful_seqs: list[list[int]],
                records: list[dict], rows: PackedMasks, totals: dict, info: dict) -> dict:
    """Append this step to the ledger once its output is complete; returns the step as recorded."""
    edited = [r for r in records if r.get("rows_edited")]
    per_module = [{k: r.get(k) for k in ("name", "rows_changed", "rows_again", "change_norm", "old_drift",
                                         "overlap_cos")} for r in edited]
    stats = {"editor": EDITOR, "encoding": encoding(opts), "sequences_sha256": sequences_digest(harmful_seqs),
             "prompt_count": len(prompts), "masked": totals["changed"], "overlap": totals["changed_again"],
             # the module-level harmful output gap (sum over edited modules of tr(R0 G_h R0ᵀ)) this step
             # started from: a category that earlier steps already covered starts from a smaller one
             "harmful_gap_start": sum(r["harmful_gap_before"] for r in edited),
             **{k: totals[k] for k in ("changed", "share_changed", "modules_edited", "change_norm", "change_ratio",
                                       "harmful_gap_closed", "mean_task_drift", "rows_changed", "rows_again",
                                       "changed_again", "mean_old_drift", "max_old_drift", "old_gap_ratio",
                                       "overlap_cos")},
             "settings": info, "modules": per_module}
    models = {"base": trio.base.sha256 if trio.base is not None else None, "aligned": trio.aligned.sha256,
              "finetuned": trio.finetuned.sha256}
    paths = {"finetuned_original": str(Path(trio.finetuned.path).resolve())} if cont.step == 0 else None
    return cont.ledger.record(cont.category, rows, stats, models, str(out), Checkpoint(out).sha256, editor=EDITOR,
                              prompts=prompts, paths=paths)
