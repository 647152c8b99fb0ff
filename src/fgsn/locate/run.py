"""The locate stage end to end: prompts -> probes -> safety layers -> neuron masks.

Works from the trio's files: the aligned model is probed for the layer search, the fine-tuned
model (a LoRA adapter merged in memory) for the neuron scores; weights for scoring are then read
tensor by tensor from the checkpoints. A probed model is either loaded whole (resident) or read
one decoder layer at a time (`--probe-memory`, fgsn.models.streamed); both give the same statistics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fgsn.artifacts.locate_run import LAYER_SEARCH_PNG, LayerSearch, LocateRun
from fgsn.artifacts.masks import PackedMasks
from fgsn.artifacts.provenance import inputs_json
from fgsn.atomic import atomic_dir
from fgsn.data.prompts import load_prompts
from fgsn.data.promptset import PromptSet, concat
from fgsn.direction import project_parts, safety_direction
from fgsn.errors import InputError
from fgsn.locate.attribution import (
    contrast_sums,
    contrast_sums_streamed,
    gradient_sums,
    gradient_sums_streamed,
)
from fgsn.locate.cache import GRADIENT_MEMO, cached_probe, probe_key
from fgsn.locate.layers import parse_layers, plot_layer_search, search_layers
from fgsn.locate.masks import safety_mask
from fgsn.locate.memory import choose_probe_memory
from fgsn.locate.options import PRESETS, LocateOptions, ProbeOptions  # noqa: F401 (re-exported)
from fgsn.locate.probes import ProbeStats, run_probes, run_probes_streamed
from fgsn.locate.scores import NEEDS_CONTRAST, NEEDS_GRADS, NEEDS_NORMS, ScoreInputs, score_pair
from fgsn.models.finetune import LoraFinetune
from fgsn.models.loading import free_memory, load_model, load_tokenizer, resolve_device, resolve_dtype
from fgsn.models.registry import EditTarget, edit_targets, live_layers, live_module, to_out_in
from fgsn.models.streamed import StreamedModel, resident_bytes
from fgsn.models.trio import Trio, open_trio

log = logging.getLogger(__name__)


def load_sets(opts: LocateOptions) -> dict[str, PromptSet]:
    harmful = concat("harmful", [load_prompts(s) for s in opts.harmful])
    if opts.category and opts.category in {p.category for p in harmful}:
        harmful = harmful.filter(category=opts.category)
    task = concat("task", [load_prompts(s) for s in opts.task])
    benign = concat("benign", [load_prompts(s) for s in opts.benign]) if opts.benign else task.with_name("benign")
    for s in (harmful, task, benign):
        s.require(2, f"{s.name} prompts")
    return {"harmful": harmful, "task": task, "benign": benign}


def _probe(model, tok, trio: Trio, pset: PromptSet, opts: LocateOptions, model_sha: str, *,
           targets: list[EditTarget] | None = None, hidden: bool = True, stop: int | None = None) -> ProbeStats:
    """A cached probe pass over a resident model or a StreamedModel (the same statistics)."""
    targets = targets or []
    streamed = isinstance(model, StreamedModel)
    key = None
    if opts.cache:
        key = probe_key(model=model_sha, prompts=pset.texts, modules=sorted(t.tensor for t in targets), hidden=hidden,
                        stop=stop, chat=opts.use_chat_template, system=opts.system, dtype=str(_dtype(model)),
                        batch=opts.batch_size, max_length=opts.max_length)
    kw = dict(hidden_states=hidden, stop_after_layer=stop, batch_size=opts.batch_size,
              use_chat_template=opts.use_chat_template, system=opts.system, max_length=opts.max_length,
              desc=f"probe {pset.name}")

    def compute() -> ProbeStats:
        if streamed:
            return run_probes_streamed(model, tok, pset.texts, modules={t.tensor: (t.layer, t.spec.path) for t in targets},
                                       **kw)
        return run_probes(model, tok, pset.texts, layers=live_layers(model, trio.arch),
                          modules={t.tensor: live_module(model, trio.arch, t) for t in targets}, **kw)

    return cached_probe(key, compute)


def _dtype(model) -> torch.dtype:
    return model.dtype if isinstance(model, StreamedModel) else next(model.parameters()).dtype


def _probe_mode(trio: Trio, opts: LocateOptions, *, models: int = 1, extra: int = 0, what: str = "the model") -> str:
    """resident or streamed for a pass holding `models` models (+ `extra` bytes) when resident."""
    dev = resolve_device(opts.device)
    need = models * resident_bytes(trio.aligned, resolve_dtype(opts.dtype, dev)) + extra
    spread = opts.device == "auto" and dev == "cuda" and torch.cuda.device_count() > 1  # load_model's device map
    return choose_probe_memory(opts.probe_memory, need, dev, opts.probe_memory_budget, what, all_gpus=spread)


def _open_model(trio: Trio, opts: LocateOptions, which: str, mode: str):
    """(model, tokenizer): a resident transformers model, or a StreamedModel over the same weights."""
    if mode == "resident":
        return _load_live(trio, opts, which)
    if which == "aligned":
        ckpt, adapter = trio.aligned, None
    elif isinstance(trio.finetuned, LoraFinetune):
        ckpt, adapter = trio.aligned, trio.finetuned.adapter
    else:
        ckpt, adapter = trio.finetuned.ckpt, None
    dev = resolve_device(opts.device)
    log.info("streaming the %s model from %s layer by layer%s", which, ckpt.path,
             f" + adapter {adapter.path}" if adapter else "")
    sm = StreamedModel(ckpt.path, device=dev, dtype=resolve_dtype(opts.dtype, dev), adapter=adapter,
                       trust_remote_code=opts.trust_remote_code, checkpoint=ckpt)
    return sm, load_tokenizer(ckpt.path, trust_remote_code=opts.trust_remote_code)


def _load_live(trio: Trio, opts: LocateOptions, which: str):
    path, adapter = trio.source(which)
    log.info("loading the %s model from %s%s", which, path, f" + adapter {adapter}" if adapter else "")
    return load_model(path, device=opts.device, dtype=opts.dtype, adapter=adapter,
                      trust_remote_code=opts.trust_remote_code, allow_pickle=opts.allow_pickle)


def find_layers(trio: Trio, sets: dict[str, PromptSet], opts: LocateOptions) -> tuple[list[int], LayerSearch | None]:
    explicit = parse_layers(opts.layers, trio.num_layers)
    if explicit is not None:
        return explicit, None
    model, tok = _open_model(trio, opts, "aligned", _probe_mode(trio, opts, what="the aligned model"))
    try:
        last = trio.num_layers - 1  # stop before the final norm and the LM head (vocab-sized logits)
        benign = _probe(model, tok, trio, sets["benign"], opts, trio.aligned.sha256, stop=last)
        harmful = _probe(model, tok, trio, sets["harmful"], opts, trio.aligned.sha256, stop=last)
    finally:
        del model
        free_memory()
    search = search_layers(benign, harmful, opts.layer_eps)
    log.info("safety layers %d-%d (%s)", *search.selected, search.rule)
    return search.layers, search


def lora_aware_targets(trio: Trio, layers: list[int], modules: list[str] | None) -> list[EditTarget]:
    """The target modules of `layers`; of a LoRA fine-tune only those its adapter changes."""
    targets = edit_targets(trio.arch, trio.aligned.names, trio.num_layers, modules, layers)
    if isinstance(trio.finetuned, LoraFinetune):
        targets = [t for t in targets if trio.finetuned.changed(t.tensor)]
        if not targets:
            raise InputError(f"adapter {trio.finetuned.path} changes none of the target modules in layers "
                             f"{layers[0]}-{layers[-1]}; check --modules / --layers")
    return targets


@dataclass
class SideStats:
    """Per side (harmful, task), what the chosen score needs, keyed by tensor name."""

    norms: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    grads: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    contrast: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def for_tensor(self, name: str, arch) -> dict:
        return {"norms": {s: v[name].sqrt().float() for s, v in self.norms.items()},
                "grads": {s: to_out_in(v[name], arch).float() for s, v in self.grads.items()},
                "contrast": {s: v[name].sqrt().float() for s, v in self.contrast.items()}}


def score_masks(trio: Trio, targets: list[EditTarget], stats_in: SideStats, opts: LocateOptions
                ) -> tuple[PackedMasks, list[dict]]:
    masks = PackedMasks()
    stats: list[dict] = []
    if opts.score == "offsafety" and trio.base is None:
        raise InputError("--score offsafety needs --base (the safety direction is aligned - base)")
    for i, t in enumerate(tqdm(targets, desc="score", unit="tensor", leave=False)):
        w_ft = to_out_in(trio.finetuned.get(t.tensor), trio.arch).float()
        w_al = to_out_in(trio.aligned.get(t.tensor), trio.arch).float()
        delta = w_ft - w_al
        if not bool(delta.any()):
            stats.append({"name": t.tensor, "layer": t.layer, "module": t.spec.name, "numel": delta.numel(),
                          "masked": 0, "skipped": "no fine-tuning update"})
            continue
        V = safety_direction(w_al, to_out_in(trio.base.get(t.tensor), trio.arch)) if trio.base is not None else None
        parts = trio.arch.part_sizes(t.spec, trio.aligned.config, delta.shape[0])
        project = partial(project_parts, V=V, parts=parts, kind=opts.projector, rank=opts.rank, energy=opts.energy)
        inputs = ScoreInputs(t.tensor, w_ft, delta, project, seed=opts.seed * 100003 + i,
                             **stats_in.for_tensor(t.tensor, trio.arch))
        h, s = score_pair(opts.score, inputs)
        mask = safety_mask(h, s, opts.q, opts.p, opts.granularity, opts.budget)
        masks.put(t.tensor, mask)
        dn = float(delta.pow(2).sum())
        stats.append({"name": t.tensor, "layer": t.layer, "module": t.spec.name, "numel": mask.numel(),
                      "masked": int(mask.sum()),
                      "mask_update_energy": float(delta[mask].pow(2).sum()) / dn if dn else 0.0})
    free_memory()  # the float32 working copies of every scored tensor are gone: give their heap back
    return masks, stats


def collect_stats(trio: Trio, targets: list[EditTarget], sets: dict[str, PromptSet], opts: LocateOptions
                  ) -> SideStats:
    """Run the passes the chosen score needs on the fine-tuned model (and the aligned one for
    `contrast`), resident or layer-streamed (`--probe-memory`); the forward passes stop after the
    last target layer where they can."""
    out = SideStats()
    if opts.score == "random":
        return out
    dt = resolve_dtype(opts.dtype, resolve_device(opts.device))
    # resident gradients: the target weights' .grad, plus a float32 sum when the model is not float32
    grad_bytes = sum(trio.aligned.numel(t.tensor) for t in targets) * (4 + (4 if dt != torch.float32 else 0))
    mode = _probe_mode(trio, opts, models=2 if opts.score in NEEDS_CONTRAST else 1,
                       extra=grad_bytes if opts.score in NEEDS_GRADS else 0, what="the fine-tuned model")
    model, tok = _open_model(trio, opts, "fine-tuned", mode)
    streamed = mode == "streamed"
    sides = {"harmful": sets["harmful"], "task": sets["task"]}
    try:
        if opts.score in NEEDS_NORMS:
            stop = max(t.layer for t in targets)
            for side, pset in sides.items():
                st = _probe(model, tok, trio, pset, opts, trio.finetuned.sha256, targets=targets, hidden=False,
                            stop=stop)
                out.norms[side] = st.sumsq
        if opts.score in NEEDS_GRADS:
            kw = dict(batch_size=opts.batch_size, use_chat_template=opts.use_chat_template, system=opts.system,
                      max_length=opts.max_length)
            answers = {"harmful": [opts.refusal_text] * len(sides["harmful"]),
                       "task": [p.answer for p in sides["task"]]}
            if streamed:
                params = {t.tensor: (t.layer, f"{t.spec.path}.weight") for t in targets}
                grad_fn = gradient_sums_streamed
            else:
                params = {t.tensor: live_module(model, trio.arch, t).weight for t in targets}
                grad_fn = gradient_sums
            for side, pset in sides.items():
                key = probe_key(kind="gradients", model=trio.finetuned.sha256, prompts=pset.texts,
                                answers=answers[side], params=sorted(params), dtype=str(_dtype(model)),
                                **kw) if opts.cache else None
                out.grads[side] = GRADIENT_MEMO.get_or_compute(key, partial(
                    grad_fn, model, tok, pset.texts, answers[side], params, desc=f"gradients {side}", **kw))
        if opts.score in NEEDS_CONTRAST:
            aligned, _ = _open_model(trio, opts, "aligned", mode)
            kw = dict(batch_size=opts.batch_size, use_chat_template=opts.use_chat_template, system=opts.system,
                      max_length=opts.max_length)
            try:
                for side, pset in sides.items():
                    if streamed:
                        out.contrast[side] = contrast_sums_streamed(
                            aligned, model, tok, pset.texts, {t.tensor: (t.layer, t.spec.path) for t in targets},
                            desc=f"contrast {side}", **kw)
                    else:
                        out.contrast[side] = contrast_sums(
                            aligned, model, tok, pset.texts, {t.tensor: live_module(aligned, trio.arch, t) for t in targets},
                            {t.tensor: live_module(model, trio.arch, t) for t in targets}, desc=f"contrast {side}", **kw)
            finally:
                del aligned
    finally:
        del model
        free_memory()
    return out


def locate_masks(trio: Trio, opts: LocateOptions, sets: dict[str, PromptSet] | None = None) -> LocateRun:
    sets = sets or load_sets(opts)
    layers, search = find_layers(trio, sets, opts)
    targets = lora_aware_targets(trio, layers, opts.modules)
    side_stats = collect_stats(trio, targets, sets, opts)
    masks, stats = score_masks(trio, targets, side_stats, opts)
    # the options of this locate (of a ProjectOptions: its locate part), as locate.json records them
    options = {k: v for k, v in opts.model_dump(mode="json").items() if k in LocateOptions.model_fields}
    return LocateRun(layers, search, masks, targets, stats, {k: len(v) for k, v in sets.items()}, options,
                     inputs_json(trio))


def write_locate_run(folder: Path, result: LocateRun) -> None:
    """The files of a locate run into `folder` (inside an atomic output): masks and locate.json
    (`LocateRun.save`), and the layer-search figure."""
    result.save(folder)
    if result.layer_search is not None:
        plot_layer_search(result.layer_search, folder / LAYER_SEARCH_PNG)


def save_locate_run(out: str | Path, result: LocateRun, overwrite: bool = False) -> Path:
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_locate_run(tmp, result)
    return Path(out)


def run_locate(opts: LocateOptions, out: str | Path | None = None) -> LocateRun:
    trio = open_trio(opts.aligned, opts.finetuned, opts.base, allow_pickle=opts.allow_pickle)
    torch.manual_seed(opts.seed)
    result = locate_masks(trio, opts)
    if out is not None:
        save_locate_run(out, result, overwrite=opts.overwrite)
    return result
