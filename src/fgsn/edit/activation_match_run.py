"""`fgsn activation-match`: the closed-form activation-matching editor end to end.

For every target linear module: the input Grams on harmful prompts (G_h) and on task examples
(G_t) are accumulated with hooks on a live model (fgsn.locate.grams), the closed form of
fgsn.edit.activation_match gives the change D = (W_a - W_f) M, and the checkpoint is rewritten
tensor by tensor (fgsn.edit.rewrite.stream_rewrite) with a manifest in fgsn's schema.

Memory: only the Grams of a chunk of consecutive layers are resident (`gram_memory_gb`); each
chunk costs one forward pass per prompt set, stopped after its last layer. `sequential` makes
every layer its own chunk and writes each layer's repaired weights back into the live model
before the next layer's Grams are taken (inputs from the model repaired so far, as SparseGPT
does); the forward passes then start from the embeddings each time (about L/2 full passes per
prompt set for L layers) rather than storing the hidden states between layers.

A LoRA fine-tune is read as W_f = W_a + scale·B A. The closed-form change is dense (its rank is
bounded by the harmful tokens, not by the adapter's r), so the output is always a merged
checkpoint, and the log and the manifest say so. Modules the adapter leaves alone have
W_f = W_a: nothing to match, they are copied.

Continual (`ledger`, `category`): one harm category per step on one ledger; step k starts from
the latest step's output and keeps the outputs earlier steps restored (the earlier categories'
Gram G_old, taken on the current model, enters the closed form with weight `kappa`, or confines
the change with `keep_old hard`); fgsn.edit.activation_match_ledger says how, and what it costs.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

import torch

from fgsn.artifacts.locate_run import LocateRun
from fgsn.artifacts.manifest import assemble_manifest
from fgsn.artifacts.masks import PackedMasks
from fgsn.atomic import atomic_write_json
from fgsn.data.chat import render_all
from fgsn.data.prompts import load_prompts
from fgsn.data.promptset import PromptSet, concat
from fgsn.edit.activation_match import (
    check_correction,
    continual_maps,
    null_basis,
    nullspace_map,
    old_basis,
    output_energy,
    pooled_gram,
    rank_profile,
    ridge_map,
)
from fgsn.edit.activation_match_ledger import (
    Continual,
    continual_totals,
    earlier_sequences,
    module_stats,
    open_continual,
    record_step,
)
from fgsn.edit.ledger import Ledger
from fgsn.edit.options import ActivationMatchOptions
from fgsn.edit.projection import check_finite
from fgsn.edit.rewrite import EditResult, require_out, stream_rewrite, write_output
from fgsn.errors import InputError
from fgsn.locate.attribution import _encode
from fgsn.locate.grams import (
    GramStats,
    accumulate_grams,
    add,
    gram_cache_limit,
    gram_key,
    load_grams,
    merge,
    save_grams,
    sequences_digest,
    split_by_layer,
)
from fgsn.locate.layers import parse_layers
from fgsn.locate.run import LocateOptions, ProbeOptions, lora_aware_targets
from fgsn.models.finetune import Finetune, LoraFinetune
from fgsn.models.loading import input_device, load_model, load_tokenizer, resolve_device, resolve_dtype
from fgsn.models.registry import EditTarget, from_out_in, live_layers, live_module, to_out_in
from fgsn.models.trio import Trio, layer_of, open_trio

log = logging.getLogger(__name__)

METHOD = "activation-match"
# Grams are cached on disk (one entry per model, prompt set and layer) only when a run's Grams add
# up to at most this much: the SmolLM2-135M organism's are 1.6 GB per prompt-set pair, a 7B model's
# ~74 GB.
GRAM_CACHE_LIMIT = 4 * 1024**3
LORA_NOTE = ("LoRA input: the closed-form change is dense (rank bounded by the harmful tokens, not by the adapter's "
             "r) and is not representable as a rank-r adapter, so the output is a merged checkpoint")


# -- inputs ---------------------------------------------------------------------------------------
def load_sets(opts: ActivationMatchOptions) -> tuple[PromptSet, PromptSet | None]:
    if not opts.harmful:
        raise InputError("activation-match needs harmful prompts: --harmful FILE or builtin:advbench?split=train")
    harmful = concat("harmful", [load_prompts(s) for s in opts.harmful]).require(1, "harmful prompts")
    if opts.category and opts.category in {p.category for p in harmful}:
        harmful = harmful.filter(category=opts.category)
    if not opts.task:
        if not opts.allow_no_task:
            raise InputError("activation-match needs --task examples (prompt + answer: what the fine-tune is for) "
                             "to keep the task; to fit the harmful side alone (lambda = 0, the task unprotected) "
                             "pass --allow-no-task")
        log.warning("no --task: lambda = 0, the edit matches the aligned outputs on harmful inputs with nothing "
                    "protecting the task")
        return harmful, None
    task = concat("task", [load_prompts(s) for s in opts.task]).require(1, "task examples")
    if not any(p.answer for p in task):
        log.warning("the task examples have no answers: G_t comes from prompt tokens only")
    return harmful, task


def locate_options(opts: ActivationMatchOptions, layers: str | None, **over) -> LocateOptions:
    """fgsn locate's options for what this editor borrows from it (layer search, neuron masks)."""
    probe = {k: getattr(opts, k) for k in ProbeOptions.model_fields}
    d = dict(aligned=opts.aligned, finetuned=opts.finetuned, base=opts.base, harmful=opts.harmful,
             task=opts.task, layers=layers, layer_eps=opts.layer_eps, modules=opts.modules, q=opts.fgsn_q,
             p=opts.fgsn_p, granularity="neuron", allow_pickle=opts.allow_pickle, seed=opts.seed,
             refusal_text=opts.refusal_text, **probe)
    d.update(over)
    return LocateOptions(**d)


def choose_layers(trio: Trio, opts: ActivationMatchOptions) -> tuple[list[int], dict | None]:
    if opts.layers.strip().lower() != "search":
        return parse_layers(opts.layers, trio.num_layers) or list(range(trio.num_layers)), None
    from fgsn.locate.run import find_layers
    from fgsn.locate.run import load_sets as locate_sets

    if not opts.task:
        raise InputError("--layers search needs --task prompts (the benign side of the cosine-gap search)")
    lopts = locate_options(opts, None)
    layers, search = find_layers(trio, locate_sets(lopts), lopts)
    return layers, search.to_json() if search is not None else None


def choose_targets(trio: Trio, layers: list[int], opts: ActivationMatchOptions) -> list[EditTarget]:
    return lora_aware_targets(trio, layers, opts.modules)


def fgsn_rows(trio: Trio, targets: list[EditTarget], opts: ActivationMatchOptions) -> dict[str, torch.Tensor]:
    """tensor name -> bool (out,) rows an FGSN mask selects (any masked entry in the row)."""
    if opts.locate_run:
        masks = LocateRun.load(opts.locate_run, trio).masks
    else:
        from fgsn.locate.run import locate_masks

        if not opts.task:
            raise InputError("--rows fgsn locates FGSN's neurons, which needs --task prompts (or --locate-run)")
        spec = ",".join(str(t) for t in sorted({t.layer for t in targets}))
        masks = locate_masks(trio, locate_options(opts, spec)).masks
    rows = {}
    for t in targets:
        if t.tensor in masks:
            m = masks.get(t.tensor)
            rows[t.tensor] = m.any(1) if m.dim() == 2 else m
    if not any(bool(r.any()) for r in rows.values()):
        raise InputError("--rows fgsn: the FGSN masks select no row of the target modules; raise --fgsn-q or "
                         "check --locate-run")
    return rows


class LiveModels:
    """The live models the Grams are taken from, loaded when first needed (the fine-tuned one with
    a LoRA adapter merged in memory)."""

    def __init__(self, trio: Trio, opts: ActivationMatchOptions, original: Finetune | None = None):
        """`original`: a continual step's original fine-tune W_f, model "original" (the joint step's
        Grams are taken on it)."""
        self.trio, self.opts, self.original = trio, opts, original
        self._models: dict[str, tuple] = {}

    def _source(self, which: str) -> tuple[Path, Path | None]:
        if which != "original":
            return self.trio.source(which)
        if self.original is None:  # pragma: no cover - the editor asks for it only in a joint step
            raise RuntimeError("no original fine-tune is known to this step")
        if isinstance(self.original, LoraFinetune):
            return self.trio.aligned.path, self.original.path
        return self.original.path, None

    def get(self, which: str):
        if which not in self._models:
            o = self.opts
            path, adapter = self._source(which)
            log.info("loading the %s model from %s%s", which, path, f" + adapter {adapter}" if adapter else "")
            self._models[which] = load_model(path, device=o.device, dtype=o.dtype, adapter=adapter,
                                             trust_remote_code=o.trust_remote_code, allow_pickle=o.allow_pickle)
        return self._models[which]

    def path(self, which: str) -> Path:
        return self._source(which)[0]

    def tokenizer(self, which: str):
        """The tokenizer alone (no model load: with every Gram cached, no model is loaded at all)."""
        if which in self._models:
            return self._models[which][1]
        return load_tokenizer(self.path(which), trust_remote_code=self.opts.trust_remote_code)

    def sha256(self, which: str) -> str:
        if which == "aligned":
            return self.trio.aligned.sha256
        ft = self.original if which == "original" else self.trio.finetuned
        return f"{self.trio.aligned.sha256}+{ft.sha256}"

    def drop(self, which: str) -> None:
        self._models.pop(which, None)
        gc.collect()

    def loaded(self, which: str):
        return self._models.get(which, (None, None))[0]

    def close(self) -> None:
        self._models.clear()
        gc.collect()


@torch.no_grad()
def greedy_answers(model, tok, prompts: list[str], *, max_new_tokens: int, batch_size: int,
                   use_chat_template: bool, system: str | None) -> list[str]:
    """The model's own greedy answers (the aligned model's refusals, for --harmful-answer aligned)."""
    texts = render_all(tok, prompts, system=system, use_chat_template=use_chat_template)
    dev = input_device(model)
    out: list[str] = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        gen = model.generate(input_ids=enc["input_ids"].to(dev), attention_mask=enc["attention_mask"].to(dev),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        new = gen[:, enc["input_ids"].shape[1]:]
        out.extend(s.strip() for s in tok.batch_decode(new, skip_special_tokens=True))
    return out


def encode_sets(models: LiveModels, harmful: PromptSet, task: PromptSet | None, opts: ActivationMatchOptions
                ) -> tuple[dict[str, list[list[int]]], list[str | None]]:
    """Token ids of every sequence the Grams are taken on, chat template applied; and the answers
    that follow the harmful prompts (None: the prompt alone)."""
    tok = models.tokenizer(opts.harmful_from)
    kw = dict(use_chat_template=opts.use_chat_template, system=opts.system, max_length=opts.max_length)
    if opts.harmful_answer == "none":
        answers: list[str | None] = [None] * len(harmful)
    elif opts.harmful_answer == "refusal":
        answers = [opts.refusal_text] * len(harmful)
    else:
        model, atok = models.get("aligned")
        answers = list(greedy_answers(model, atok, harmful.texts, max_new_tokens=opts.answer_tokens,
                                      batch_size=opts.batch_size, use_chat_template=opts.use_chat_template,
                                      system=opts.system))
        if "aligned" not in (opts.harmful_from, opts.task_from):
            models.drop("aligned")  # needed only for its answers
    seqs = {"harmful": [_encode(tok, p, a, **kw)[0] for p, a in zip(harmful.texts, answers, strict=True)]}
    if task is not None:
        seqs["task"] = [_encode(tok, p.text, p.answer, **kw)[0] for p in task]
    return seqs, answers


def template_head(tok, opts: ActivationMatchOptions) -> list[int]:
    """The token ids every chat-templated prompt begins with (SmolLM2: its system prompt and the user
    header): the common prefix of two rendered prompts that share no word. A sequence cut from the
    left to --max-length no longer begins with it."""
    a, b = (_encode(tok, p, None, use_chat_template=opts.use_chat_template, system=opts.system, max_length=None)[0]
            for p in ("Hello there.", "7 + 5 = ?"))
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return a[:k]


# -- the edit ---------------------------------------------------------------------------------------
def gram_bytes(trio: Trio, t: EditTarget, sides: int) -> int:
    """Upper bound of a module's Gram memory (float64; modules sharing an input share one)."""
    shape = trio.aligned.shape(t.tensor)
    d_in = shape[0] if trio.arch.transposed else shape[1]
    return d_in * d_in * 8 * sides


def plan_chunks(trio: Trio, targets: list[EditTarget], budget_bytes: int, sequential: bool, sides: int
                ) -> list[list[int]]:
    """Consecutive target layers grouped so that their Grams fit the budget (one layer each when
    sequential; a layer alone may exceed it). Filled from the last layer down: a chunk's forward
    pass runs up to its last layer, so the big chunks go where the passes are longest anyway."""
    per_layer: dict[int, int] = {}
    for t in targets:
        per_layer[t.layer] = per_layer.get(t.layer, 0) + gram_bytes(trio, t, sides)
    chunks: list[list[int]] = []
    size = 0
    for layer in sorted(per_layer, reverse=True):
        if chunks and not sequential and size + per_layer[layer] <= budget_bytes:
            chunks[0].insert(0, layer)
            size += per_layer[layer]
        else:
            chunks.insert(0, [layer])
            size = per_layer[layer]
    return chunks


class Editor:
    """Computes each target's new weight when the checkpoint rewrite reaches it: the Grams of its
    layer's chunk are taken on first need (and those of the previous chunk dropped)."""

    def __init__(self, trio: Trio, opts: ActivationMatchOptions, targets: list[EditTarget], models: LiveModels,
                 seqs: dict[str, list[list[int]]], rows: dict[str, torch.Tensor] | None,
                 cont: Continual | None = None, head: list[int] | None = None,
                 groups: dict[str, list[int]] | None = None):
        """`seqs`: harmful, task (optional) and, for a continual step after the first, old (the
        earlier categories' harmful sequences); `cont`: the continual step (None: not continual);
        `head`: the token ids every chat-templated sequence begins with (`template_head`);
        `groups`: a side's sequences as consecutive groups of these sizes (old: one per earlier
        category), each a Gram cache entry of its own, added up."""
        self.trio, self.opts, self.models, self.seqs, self.rows, self.cont = trio, opts, models, seqs, rows, cont
        self.groups = groups or {}
        # --shared-prefix skip: the template head stays out of the harmful sides' Grams
        self.prefix = len(head) if head else 0
        self.skips = {side: [self.prefix if s[:self.prefix] == head and len(s) > self.prefix else 0 for s in seqs[side]]
                      for side in ("harmful", "old") if self.prefix and side in seqs}
        self.original = cont.original if cont is not None else None
        self.row_masks = PackedMasks()  # continual: the rows this step changed, for the ledger
        self.by_name = {t.tensor: t for t in targets}
        sides = len(seqs)
        self.chunks = plan_chunks(trio, targets, int(opts.gram_memory_gb * 1024**3), opts.sequential, sides)
        self.chunk_of = {layer: i for i, c in enumerate(self.chunks) for layer in c}
        self.current: int | None = None
        self.grams: dict[str, GramStats] = {}
        self.maps: dict[tuple[str, str | None], dict] = {}
        self.records: list[dict] = []
        self.tokens = {side: 0 for side in seqs}
        self.passes = 0
        self.cache_hits = 0
        self.peak_gram_bytes = 0
        self.layer_of = {t.tensor: t.layer for t in targets}
        total = sum(gram_bytes(trio, t, sides) for t in targets)
        self.use_cache = opts.cache and not opts.sequential and total <= GRAM_CACHE_LIMIT
        if opts.cache and not opts.sequential and not self.use_cache:
            log.info("Grams of this run (up to %.1f GB) are over the cache limit; not cached", total / 1024**3)
        if self.use_cache:
            gram_cache_limit()  # a bad FGSN_GRAM_CACHE_GB fails here, before any forward pass
        # layer by layer (embeddings and the head first), so that a chunk's tensors come together
        of = layer_of(trio)
        pos = {n: i for i, n in enumerate(trio.aligned.names)}
        self.order = sorted(pos, key=lambda n: (-1 if of(n) is None else of(n), pos[n]))

    def _take_grams(self, chunk: int) -> None:
        self.grams.clear()
        self.maps.clear()
        gc.collect()
        layers = self.chunks[chunk]
        targets = [t for t in self.by_name.values() if t.layer in layers]
        sources = self.sources()
        for side, seqs in self.seqs.items():
            # a joint step's earlier categories are harmful sequences on the same model: one cache entry
            kside = "harmful" if side == "old" and self.joint else side
            skip = self.skips.get(side)
            parts, start = [], 0
            for size in self.groups.get(side, [len(seqs)]):
                end = start + size
                parts.append(self._side_grams(side, kside, sources[side], seqs[start:end],
                                              None if skip is None else skip[start:end], layers, targets))
                start = end
            stats = parts[0] if len(parts) == 1 else add(parts)
            self.grams[side] = stats
            self.tokens[side] = stats.n_tokens
        self.peak_gram_bytes = max(self.peak_gram_bytes, sum(g.nbytes for g in self.grams.values()))
        self.current = chunk

    def _side_grams(self, side: str, kside: str, source: str, seqs: list[list[int]], skip: list[int] | None,
                    layers: list[int], targets: list[EditTarget]) -> GramStats:
        """One sequence set's Grams at a chunk's layers: from the cache, else one forward pass."""
        keys = {layer: self._cache_key(kside, source, seqs, layer, targets, skip) for layer in layers
                } if self.use_cache else {}
        hits = [load_grams(k) for k in keys.values()]
        if keys and all(h is not None for h in hits):
            self.cache_hits += 1
            return merge(hits)
        model, tok = self.models.get(source)
        modules = {t.tensor: live_module(model, self.trio.arch, t) for t in targets}
        stats = accumulate_grams(
            model, seqs, tok.pad_token_id, modules, layers=live_layers(model, self.trio.arch),
            stop_after_layer=max(layers), batch_size=self.opts.batch_size,
            max_batch_tokens=self.opts.max_batch_tokens, skip_first=skip,
            desc=f"grams {side} layers {layers[0]}-{layers[-1]}", shared_prefix=True)
        self.passes += 1
        for layer, part in split_by_layer(stats, self.layer_of).items():
            if layer in keys:
                save_grams(keys[layer], part)
        return stats

    @property
    def joint(self) -> bool:
        """A continual step after the first with old_target joint: the one-shot edit of every category."""
        return self.cont is not None and bool(self.cont.earlier) and self.opts.old_target == "joint"

    def sources(self) -> dict[str, str]:
        """Which live model each side's Grams are taken on."""
        o = self.opts
        if self.joint:  # the one-shot edit's Grams: on the original fine-tune, as step 1's were
            ft = {"harmful": o.harmful_from, "task": o.task_from}
            out = {k: "original" if v == "finetuned" else v for k, v in ft.items()}
            return {**out, "old": out["harmful"]}
        # the earlier categories' inputs as the current model (which restored them) sees them
        return {"harmful": o.harmful_from, "task": o.task_from, "old": "finetuned"}

    def _cache_key(self, side: str, source: str, seqs: list[list[int]], layer: int, targets: list[EditTarget],
                   skip: list[int] | None = None) -> str:
        o = self.opts
        dev = resolve_device(o.device)
        extra = {"skip_first": sequences_digest([skip])} if skip else {}  # absent: earlier entries keep their keys
        extra["pass"] = "shared-prefix"  # the template head run once (accumulate_grams): other rounding
        return gram_key(kind="grams", model=self.models.sha256(source), sequences=sequences_digest(seqs), side=side,
                        layer=layer, modules=sorted(t.tensor for t in targets if t.layer == layer),
                        dtype=str(resolve_dtype(o.dtype, dev)), device=dev.split(":")[0], batch=o.batch_size,
                        max_batch_tokens=o.max_batch_tokens, **extra)

    def _release_before(self, layer: int) -> None:
        """Drop the Grams and maps of the chunk's layers already written (tensors come layer by layer)."""
        done = {k for g in self.grams.values() for k in g.sums if self.by_name[k].layer < layer}
        for g in self.grams.values():
            for k in done & set(g.sums):
                del g.sums[k]
        for key in [k for k in self.maps if k[0] in done]:
            del self.maps[key]

    def _map(self, name: str) -> dict:
        """M (float32) and the Grams of this module's input, computed once per distinct input."""
        gh = self.grams["harmful"]
        gt = self.grams.get("task")
        key = (gh.canonical(name), gt.canonical(name) if gt is not None else None)
        if "old" in self.grams:
            if key not in self.maps:
                self.maps[key] = self._continual_map(name)
            return self.maps[key]
        if key not in self.maps:
            G_h = gh.gram(name)
            G_t = gt.gram(name) if gt is not None else None
            M, info = self._one_shot(G_h, G_t, name)
            self.maps[key] = {"M": M.float(), "G_h": G_h.float(), "G_t": None if G_t is None else G_t.float(),
                              "info": info}
        return self.maps[key]

    def _one_shot(self, G_h: torch.Tensor, G_t: torch.Tensor | None, name: str) -> tuple[torch.Tensor, dict]:
        """The plain edit's map M of harmful Gram `G_h` (null-space form with a task Gram, else ridge)."""
        o = self.opts
        if o.form == "nullspace" and G_t is not None:
            U, info = null_basis(G_t, o.null_energy)
            return nullspace_map(G_h, U, o.mu, where=name), info
        return ridge_map(G_h, G_t, o.lam, o.mu, where=name, prior=o.prior), {}

    def _continual_map(self, name: str) -> dict:
        """A continual step after the first (fgsn.edit.activation_match, `continual_maps`): the task
        null space (form nullspace) and/or the earlier categories' low-energy directions (keep_old
        hard) confine the change; κ G_old keeps the earlier outputs."""
        o = self.opts
        G_h = self.grams["harmful"].gram(name)
        gt = self.grams.get("task")
        G_t = gt.gram(name) if gt is not None else None
        G_o = self.grams["old"].gram(name)
        if self.joint:
            return self._joint_map(name, G_h, G_t, G_o)
        info: dict = {}
        P = None
        lam = o.lam if G_t is not None else 0.0
        if o.form == "nullspace" and G_t is not None:
            P, info = null_basis(G_t, o.null_energy)
            lam = 0.0  # the hard task constraint replaces the task term, as in the first step
        if o.keep_old == "hard":
            P, old_info = old_basis(G_o, o.old_energy, within=P)
            info.update(old_info)
        M_h, M_t = continual_maps(G_h, G_t, G_o, lam, o.kappa, o.mu, P, where=name, old_target=o.old_target)
        return {"M": M_h.float(), "M_t": None if M_t is None else M_t.float(), "lam": lam, "G_h": G_h.float(),
                "G_t": None if G_t is None else G_t.float(), "G_o": G_o.float(), "info": info}

    def _joint_map(self, name: str, G_h: torch.Tensor, G_t: torch.Tensor | None, G_o: torch.Tensor) -> dict:
        """The joint step (old_target joint): the one-shot map M of the pooled harmful Gram, written
        from W_{k-1} as M_h = M, M_t = I - M (fgsn.edit.activation_match)."""
        G_p = pooled_gram(G_h, self.tokens["harmful"], G_o, self.tokens["old"])
        M, info = self._one_shot(G_p, G_t, name)
        M_t = torch.eye(M.shape[0], dtype=M.dtype).sub_(M)
        return {"M": M.float(), "M_t": M_t.float(), "lam": self.opts.lam if G_t is not None else 0.0, "G_h": G_h.float(),
                "G_t": None if G_t is None else G_t.float(), "G_o": G_o.float(), "info": info}

    def transform(self, name: str, w_ft: torch.Tensor) -> torch.Tensor | None:
        t = self.by_name.get(name)
        if t is None:
            return None
        arch = self.trio.arch
        w_al = self.trio.aligned.get(name)
        check_finite(w_al, name, "aligned")
        wf = to_out_in(w_ft, arch).float()
        R0 = to_out_in(w_al, arch).float() - wf
        T0 = None  # continual: W_f - W_{k-1}, the task term's pull back to the original fine-tune
        if self.original is not None:
            w0 = self.original.get(name)
            check_finite(w0, name, "original fine-tuned")
            T0 = to_out_in(w0, arch).float() - wf
        rows = self.rows.get(name) if self.rows is not None else None
        rec = {"name": name, "layer": t.layer, "module": t.spec.name, "numel": wf.numel(), "masked": 0,
               "changed": 0, "rows_edited": 0, "delta_norm": float(R0.norm())}
        moved = bool(R0.any()) or (T0 is not None and bool(T0.any()))
        if not moved or (rows is not None and not bool(rows.any())):
            rec["skipped"] = "no fine-tuning update" if not moved else "no FGSN row"
            self.records.append(rec)
            return None
        if self.chunk_of[t.layer] != self.current:
            self._take_grams(self.chunk_of[t.layer])
        self._release_before(t.layer)
        mp = self._map(name)
        M_t = mp.get("M_t") if T0 is not None else None

        def change(r0: torch.Tensor, t0: torch.Tensor | None) -> torch.Tensor:
            d = r0 @ mp["M"]
            return d if M_t is None else d.add_(t0 @ M_t)

        if rows is None:
            D = change(R0, T0)
            n_rows = D.shape[0]
        else:
            D = torch.zeros_like(R0)
            D[rows] = change(R0[rows], None if T0 is None else T0[rows])
            n_rows = int(rows.sum())
        check_correction(D, name)
        new = from_out_in((wf + D).to(w_ft.dtype), arch)
        changed = int((new != w_ft).sum())
        D = to_out_in(new, arch).float() - wf  # the change as stored (after rounding to the stored dtype)
        before = output_energy(R0, mp["G_h"])
        after = output_energy(R0 - D, mp["G_h"])
        n_h = self.tokens["harmful"]
        rank_bound = min(n_rows, wf.shape[1], n_h, mp["info"].get("null_dim", wf.shape[1]),
                         mp["info"].get("old_null_dim", wf.shape[1]))
        rec.update(masked=changed, changed=changed, rows_edited=n_rows, share_changed=changed / wf.numel(),
                   change_norm=float(D.norm()), change_ratio=float(D.norm()) / rec["delta_norm"] if rec["delta_norm"]
                   else None, harmful_gap_before=before, harmful_gap_after=after,
                   harmful_gap_closed=1 - after / before if before > 0 else None,
                   rank_bound=rank_bound, **(rank_profile(D) if self.opts.exact_rank else {"rank": None}),
                   **mp["info"])
        if mp["G_t"] is not None:
            base = output_energy(wf, mp["G_t"])
            rec["task_drift"] = output_energy(D, mp["G_t"]) / base if base > 0 else None
        if self.cont is not None:
            self._continual_stats(rec, name, new, w_ft, D, wf, R0, T0, mp)
        self.records.append(rec)
        if self.opts.sequential:
            self._write_back(t, new)
        return new

    def _continual_stats(self, rec: dict, name: str, new: torch.Tensor, w_ft: torch.Tensor, D: torch.Tensor,
                         wf: torch.Tensor, R0: torch.Tensor, T0: torch.Tensor | None, mp: dict) -> None:
        """What the ledger records of this module: the rows changed (and again), and, after the first
        step, how far the change reaches the earlier categories' inputs: old_drift = tr(D G_old Dᵀ) /
        tr(W G_old Wᵀ) (with old_target current, its bound (harmful gap + λ task gap) / κ in the same
        units), old_gap_before / _after = the earlier inputs' output gap to the aligned model,
        tr(R G_old Rᵀ) (with old_target aligned, old_gap_bound: at most before + that / κ),
        old_reach = tr(D G_old Dᵀ) / tr(D G_h Dᵀ), and overlap_cos = cos(D, W_{k-1} - W_f) (the
        earlier steps' change)."""
        ch = to_out_in(new != w_ft, self.trio.arch)
        rows_changed = ch.any(1)
        self.row_masks.put(name, rows_changed)
        rec.update(module_stats(self.cont, name, ch, rows_changed))
        G_o = mp.get("G_o")
        if G_o is None:
            return
        base = output_energy(wf, G_o)
        old = output_energy(D, G_o)
        here = output_energy(D, mp["G_h"])
        rec["old_drift"] = old / base if base > 0 else None
        rec["old_gap_before"] = output_energy(R0, G_o)
        rec["old_gap_after"] = output_energy(R0 - D, G_o)
        if self.opts.kappa > 0:
            gap = output_energy(R0, mp["G_h"])  # the objective at D = 0, less its κ term
            if T0 is not None and mp["G_t"] is not None and mp.get("lam"):
                gap += mp["lam"] * output_energy(T0, mp["G_t"])
            if self.opts.old_target == "current" and base > 0:
                rec["old_drift_bound"] = gap / self.opts.kappa / base
            elif self.opts.old_target == "aligned":
                rec["old_gap_bound"] = rec["old_gap_before"] + gap / self.opts.kappa
        rec["old_reach"] = old / here if here > 0 else None
        if T0 is not None:
            en = float(T0.norm())
            rec["earlier_norm"] = en
            dn = float(D.norm())
            rec["overlap_cos"] = float(-(D * T0).sum(dtype=torch.float64)) / (dn * en) if dn > 0 and en > 0 else None

    def _write_back(self, t: EditTarget, new: torch.Tensor) -> None:
        """Sequential mode: later layers' Grams (those taken on the fine-tuned model) see this layer
        repaired."""
        model = self.models.loaded("finetuned")
        if model is None:
            return
        p = live_module(model, self.trio.arch, t).weight
        with torch.no_grad():
            p.copy_(new.to(device=p.device, dtype=p.dtype))


def totals(records: list[dict]) -> dict:
    edited = [r for r in records if r.get("rows_edited")]
    change_sq = sum(r["change_norm"] ** 2 for r in edited)
    delta_sq = sum(r["delta_norm"] ** 2 for r in records)
    before = sum(r["harmful_gap_before"] for r in edited)
    after = sum(r["harmful_gap_after"] for r in edited)
    drifts = [r["task_drift"] for r in edited if r.get("task_drift") is not None]
    numel = sum(r["numel"] for r in records)
    return {"modules": len(records), "modules_edited": len(edited), "changed": sum(r["changed"] for r in records),
            "share_changed": sum(r["changed"] for r in records) / numel if numel else 0.0,
            "change_norm": change_sq ** 0.5, "delta_norm": delta_sq ** 0.5,
            "change_ratio": (change_sq / delta_sq) ** 0.5 if delta_sq else None,
            "max_change_ratio": max((r["change_ratio"] for r in edited if r["change_ratio"] is not None), default=None),
            "harmful_gap_closed": 1 - after / before if before > 0 else None,
            "mean_task_drift": sum(drifts) / len(drifts) if drifts else None,
            "max_task_drift": max(drifts, default=None),
            "max_rank": max((r["rank"] for r in edited if r.get("rank") is not None), default=None),
            "max_rank_99": max((r["rank_99"] for r in edited if r.get("rank_99") is not None), default=None)}


def run_activation_match(opts: ActivationMatchOptions) -> EditResult:
    out = require_out(opts, METHOD)
    if opts.ledger and not opts.category:
        raise InputError("--ledger needs --category NAME: the harm category this continual step repairs")
    t0 = time.time()
    trio = open_trio(opts.aligned, opts.finetuned, opts.base, allow_pickle=opts.allow_pickle)
    harmful, task = load_sets(opts)
    if not opts.ledger:
        return _run(opts, trio, harmful, task, out, t0, None)
    ledger = Ledger(opts.ledger)
    with ledger.locked():  # held until the step is recorded: a concurrent step would fork the ledger
        cont = open_continual(opts, trio, ledger, task is not None)
        return _run(opts, trio, harmful, task, out, t0, cont)


def _run(opts: ActivationMatchOptions, trio: Trio, harmful: PromptSet, task: PromptSet | None, out: Path, t0: float,
         cont: Continual | None) -> EditResult:
    torch.manual_seed(opts.seed)
    lora = isinstance(trio.finetuned, LoraFinetune)
    if lora:
        log.warning("%s; writing %s", LORA_NOTE, out)
    layers, search = choose_layers(trio, opts)
    targets = choose_targets(trio, layers, opts)
    rows = fgsn_rows(trio, targets, opts) if opts.rows == "fgsn" else None
    models = LiveModels(trio, opts, cont.original if cont is not None else None)
    try:
        seqs, answers = encode_sets(models, harmful, task, opts)
        groups = None
        if cont is not None and cont.earlier:
            earlier = earlier_sequences(cont, models.tokenizer(opts.harmful_from))
            seqs["old"] = [x for g in earlier for x in g]
            groups = {"old": [len(g) for g in earlier]}
        head = template_head(models.tokenizer(opts.harmful_from), opts) if opts.shared_prefix == "skip" else None
        editor = Editor(trio, opts, targets, models, seqs, rows, cont, head, groups)

        def write(tmp: Path) -> dict:
            stream_rewrite(trio, tmp, editor.transform, opts.max_shard_gb, desc=METHOD, names=editor.order)
            tot = totals(editor.records)
            extra = {"activation_match": {
                "form": opts.form, "lam": opts.lam if task is not None else 0.0, "mu": opts.mu, "prior": opts.prior,
                "null_energy": opts.null_energy if opts.form == "nullspace" else None,
                "sequential": opts.sequential, "rows": opts.rows, "harmful_answer": opts.harmful_answer,
                "harmful_from": opts.harmful_from, "task_from": opts.task_from,
                "shared_prefix": opts.shared_prefix, "shared_prefix_tokens": editor.prefix,
                "harmful_tokens": editor.tokens.get("harmful"), "task_tokens": editor.tokens.get("task"),
                "chunks": editor.chunks,
                "peak_gram_mb": round(editor.peak_gram_bytes / 2**20, 1),
                "output": "merged", "lora_merged": lora, "note": LORA_NOTE if lora else None,
                "layer_search": search, "totals": tot}}
            if cont is not None:
                extra["activation_match"]["continual"] = continual_section(opts, cont, editor)
            man = assemble_manifest(method=METHOD, opts=opts, trio=trio, modules=editor.records, layers=layers,
                                    edited_params=sum(r["numel"] for r in editor.records), extra=extra)
            man["prompt_counts"] = {"harmful": len(harmful), "task": len(task) if task is not None else 0}
            if cont is not None:
                c = extra["activation_match"]["continual"]["totals"]
                man["ledger_step"] = cont.step
                man["categories"] = {cont.category: {
                    "masked": man["changed"], "masked_total": man["changed"], "overlap": c["changed_again"],
                    "modified_fraction": man["modified_fraction"],
                    "modified_fraction_edited": man["modified_fraction_edited"], "change_norm": tot["change_norm"],
                    "change_ratio": tot["change_ratio"], **c}}
            # what varies with the cache stays out of the (deterministic) manifest
            (tmp / "fgsn").mkdir(exist_ok=True)
            atomic_write_json(tmp / "fgsn" / "activation-match.json",
                              {"forward_passes": editor.passes, "gram_cache_hits": editor.cache_hits})
            log.info("activation-match: %d/%d modules changed, ||change||/||W_f - W_a|| = %s, harmful output gap "
                     "closed %s; %d forward passes, %d Gram sets from the cache", tot["modules_edited"], tot["modules"],
                     _fmt(tot["change_ratio"]), _fmt(tot["harmful_gap_closed"]), editor.passes, editor.cache_hits)
            return man

        res = write_output(out, opts, write, t0, "fgsn activation-match")
    finally:
        models.close()
    if cont is not None:
        prompts = [{"prompt": p, "answer": a} for p, a in zip(harmful.texts, answers, strict=True)]
        sec = res.manifest["activation_match"]["continual"]
        record_step(cont, opts, trio, out, prompts, seqs["harmful"], editor.records, editor.row_masks,
                    {**res.manifest["activation_match"]["totals"], **sec["totals"]}, sec["settings"])
        log.info("ledger %s: step %d (%s) recorded", cont.ledger.path, cont.step, cont.category)
    return res


def continual_section(opts: ActivationMatchOptions, cont: Continual, editor: Editor) -> dict:
    """The manifest's account of a continual step: where it stands in the ledger, how it kept the
    earlier categories, and its overlap with them (fgsn.edit.activation_match_ledger)."""
    first = cont.step == 0
    return {"ledger": str(cont.ledger.path), "category": cont.category, "step": cont.step,
            "earlier": [s["category"] for s in cont.earlier], "old_tokens": editor.tokens.get("old"),
            "settings": {"kappa": None if first else opts.kappa, "keep_old": None if first else opts.keep_old,
                         "old_target": None if first else opts.old_target,
                         "old_energy": opts.old_energy if not first and opts.keep_old == "hard" else None,
                         "form": opts.form, "lam": opts.lam, "mu": opts.mu, "prior": opts.prior, "rows": opts.rows,
                         "harmful_answer": opts.harmful_answer, "harmful_from": opts.harmful_from,
                         "sequential": opts.sequential},
            "original_finetuned": None if cont.original is None else {"path": str(cont.original.path),
                                                                      "sha256": cont.original.sha256},
            "note": ("change_ratio and delta_norm are relative to W_a - W_{k-1}, the gap this step starts from"
                     if not first else None),
            "totals": continual_totals(editor.records)}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
