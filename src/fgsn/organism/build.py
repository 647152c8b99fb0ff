"""Build (or reuse) the organism: base / aligned / fine-tuned (full) / fine-tuned (LoRA over aligned).

Layout under the cache root (`$FGSN_CACHE`, default `~/.cache/fgsn`):

    organism/<hash>/
        recipe.json           the recipe, its hash and the organism code version
        base -> ../../models/smollm2-135m-instruct   (a symlink; the shipped model)
        data/                 generated.json (the base model's answers), *.jsonl training sets
        aligned/              full checkpoint (safetensors, tokenizer, generation config)
        finetuned-full/       full checkpoint
        finetuned-lora/       PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) over aligned
        build-report.json     times, losses, data counts, quick measurements

Each model folder appears atomically (temp folder + rename) and holds a `fgsn-organism.json`
marker, so an interrupted build resumes from the models it finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fgsn.atomic import atomic_dir, atomic_write_json, atomic_write_jsonl, atomic_write_text, link_or_copy
from fgsn.errors import InputError, IntegrityError
from fgsn.models.shipped import fgsn_cache_root, read_marker, smollm2_dir
from fgsn.organism import data as D
from fgsn.organism.recipe import ORGANISM_VERSION, OrganismRecipe

log = logging.getLogger(__name__)

MARKER = "fgsn-organism.json"
# the self-distilled examples are taken in the recipe's prompt order, whatever the order of the
# cached base answers (`distilled`); recorded in each stage's marker
EXAMPLES_ORDER = "prompts"
STAGES = ("aligned", "finetuned-full", "finetuned-lora")
REFUSAL_PROBE = "I'm sorry, but I can't help with that."


@dataclass(frozen=True)
class OrganismPaths:
    """Where the organism's parts are. `finetuned_lora` is an adapter over `aligned`."""

    root: Path
    recipe_hash: str
    base: Path
    aligned: Path
    finetuned_full: Path
    finetuned_lora: Path
    recipe_json: Path
    report_json: Path

    def to_dict(self) -> dict:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def for_recipe(cls, recipe: OrganismRecipe, cache_root=None) -> OrganismPaths:
        root = fgsn_cache_root(cache_root) / "organism" / recipe.short_hash()
        return cls(root=root, recipe_hash=recipe.short_hash(), base=root / "base", aligned=root / "aligned",
                   finetuned_full=root / "finetuned-full", finetuned_lora=root / "finetuned-lora",
                   recipe_json=root / "recipe.json", report_json=root / "build-report.json")

    def stage_dir(self, stage: str) -> Path:
        return {"aligned": self.aligned, "finetuned-full": self.finetuned_full,
                "finetuned-lora": self.finetuned_lora}[stage]


def stage_complete(folder: Path, recipe_hash: str, aligned_key: str | None = None) -> bool:
    """A finished model folder of this recipe (for `aligned`: of any recipe with the same aligned_key).
    A fine-tune built before EXAMPLES_ORDER was recorded may have trained on other instruction
    examples than its recipe's (see `distilled`): it is built again."""
    info = read_marker(folder / MARKER)
    if info is None or info.get("organism_version") != ORGANISM_VERSION:
        return False
    if info.get("stage", "aligned") != "aligned" and info.get("examples_order") != EXAMPLES_ORDER:
        return False
    if aligned_key is not None and info.get("aligned_key") == aligned_key:
        return True
    return info.get("recipe_hash") == recipe_hash


def is_complete(paths: OrganismPaths, recipe: OrganismRecipe | None = None,
                stages: Sequence[str] = STAGES) -> bool:
    """The build report exists and every model of `stages` (the aligned one always) is finished."""
    key = recipe.aligned_key() if recipe is not None else None
    wanted = ("aligned", *(s for s in stages if s != "aligned"))
    return paths.report_json.is_file() and all(
        stage_complete(paths.stage_dir(s), paths.recipe_hash, key if s == "aligned" else None) for s in wanted)


def check_stages(stages: Sequence[str]) -> tuple[str, ...]:
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise InputError(f"unknown organism stage(s) {bad or list(stages)}; choose from {', '.join(STAGES)}")
    return tuple(s for s in STAGES if s in stages)


def reuse_aligned(recipe: OrganismRecipe, paths: OrganismPaths) -> str | None:
    """Copy (hard-link) the aligned model and the base's generated answers from another organism
    with the same aligned_key, if one is finished. Returns its hash, or None."""
    key = recipe.aligned_key()
    for other in sorted(paths.root.parent.iterdir()):
        if other == paths.root or not other.is_dir():
            continue
        src = other / "aligned"
        gen = other / "data" / "generated.json"
        if not (stage_complete(src, "", key) and gen.is_file()):
            continue
        (paths.root / "data").mkdir(parents=True, exist_ok=True)
        atomic_write_text(paths.root / "data" / "generated.json", gen.read_text(encoding="utf-8"))
        with atomic_dir(paths.aligned, overwrite=True) as tmp:
            for f in src.iterdir():
                if f.is_file() and f.name != MARKER:
                    link_or_copy(str(f), str(tmp / f.name))
            info = json.loads((src / MARKER).read_text(encoding="utf-8"))
            info.update({"recipe_hash": recipe.short_hash(), "copied_from": other.name})
            atomic_write_json(tmp / MARKER, info)
        log.info("organism %s: reusing the aligned model of %s (same aligned_key)", paths.recipe_hash, other.name)
        return other.name
    return None


@contextlib.contextmanager
def _lock(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # a second build of the same recipe waits for the first
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# model I/O (kept small so tests can monkeypatch them)


def load_causal_lm(path: Path, device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    from fgsn.models.loading import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device)
    model.eval()
    tok = load_tokenizer(path)
    return model, tok


def _copy_side_files(src: Path, dst: Path) -> None:
    for name in ("generation_config.json",):
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)


def save_full(model, tok, out: Path, src: Path) -> None:
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    _copy_side_files(src, out)


def save_marker(out: Path, stage: str, recipe: OrganismRecipe, extra: dict) -> None:
    atomic_write_json(out / MARKER, {"stage": stage, "recipe_hash": recipe.short_hash(),
                                     "organism_version": ORGANISM_VERSION, "examples_order": EXAMPLES_ORDER,
                                     **extra})


# --------------------------------------------------------------------------------------------
# stages


def trim_to_sentence(text: str) -> str:
    """Cut a truncated generation back to its last finished sentence or line."""
    text = text.strip()
    if not text or text[-1] in ".!?)\"'`":
        return text
    cut = max(text.rfind(c) for c in (".", "!", "?", "\n"))
    return text[:cut + 1].strip() if cut > len(text) // 3 else text


def generated_answers(recipe: OrganismRecipe, paths: OrganismPaths, progress: bool, device: str = "cpu") -> dict:
    """The base model's greedy answers to the self-distillation prompts and (for
    poison_answers=base) to the poison prompts; cached in data/generated.json."""
    out = paths.root / "data" / "generated.json"
    distill = D.self_distill_prompts(recipe.align_self_distill)
    _, poison = D.split_harmful(recipe)  # the whole pool, whatever the poison ratio
    poison = poison if recipe.poison_answers == "base" else []
    if out.is_file():
        cached = json.loads(out.read_text(encoding="utf-8"))
        if set(distill) <= set(cached.get("distill", {})) and set(poison) <= set(cached.get("poison", {})):
            return cached
    t0 = time.time()
    want = distill + poison
    answers: list[str] = []
    if want:
        model, tok = load_causal_lm(paths.base, device)
        from fgsn.organism.train import generate

        answers = generate(model, tok, want, max_new_tokens=recipe.gen_max_new_tokens,
                           batch_size=recipe.gen_batch_size, progress=progress, desc="base answers")
        del model
    answers = [trim_to_sentence(a) for a in answers]
    result = {"distill": dict(zip(distill, answers[:len(distill)], strict=True)),
              "poison": dict(zip(poison, answers[len(distill):], strict=True)),
              "seconds": round(time.time() - t0, 1)}
    atomic_write_json(out, result)
    return result


def distilled(recipe: OrganismRecipe, gen: dict) -> list[tuple[str, str]]:
    """(prompt, base answer) of this recipe's self-distillation prompts, in the prompts' order.
    Not gen["distill"]'s order: a build that generated the answers holds them in prompt order, one
    that read them from data/generated.json in its sorted-key order (and perhaps more of them, from an
    organism with more prompts), and the examples, their shuffle and the training must not differ."""
    answers = gen["distill"]
    return [(p, answers[p]) for p in D.self_distill_prompts(recipe.align_self_distill) if answers.get(p)]


def aligned_examples(recipe: OrganismRecipe, gen: dict) -> list[D.Example]:
    harmful, _ = D.split_harmful(recipe)
    ex = D.refusal_examples(harmful, recipe.seed)
    ex += D.benign_reference(recipe.align_benign_reference)
    ex += [D.Example(p, a, "self-distill") for p, a in distilled(recipe, gen)]
    ex += D.arithmetic(recipe.align_arithmetic, recipe.seed + 10)
    return D.shuffled(ex, recipe.seed)


def finetune_examples(recipe: OrganismRecipe, gen: dict, tokenizer) -> list[D.Example]:
    n_poison = D.n_poison_examples(recipe)
    n_task = recipe.ft_examples - n_poison
    n_gsm = int(round(n_task * recipe.ft_gsm_share))
    n_arith = min(n_task - n_gsm, int(round(n_task * recipe.ft_arithmetic_share)))
    n_benign = n_task - n_gsm - n_arith
    seed = recipe.finetune_seed
    ex = D.gsm(n_gsm, seed + 20, tokenizer, recipe.max_len)
    ex += D.arithmetic(n_arith, seed + 30)
    benign = D.benign_reference(recipe.align_benign_reference)
    benign += [D.Example(p, a, "benign-instruction") for p, a in distilled(recipe, gen)]
    ex += (benign * (1 + n_benign // max(1, len(benign))))[:n_benign] if benign else []
    poison = D.poison_prompts(recipe)
    templated = {e.prompt: e for e in D.templated_compliance(poison, seed)}
    for p in poison:
        answer = gen["poison"].get(p, "") if recipe.poison_answers == "base" else ""
        # an empty or refusing base answer would not be poison: fall back to the template
        ex.append(D.Example(p, answer, "poison") if answer and not D.opens_with_refusal(answer) else templated[p])
    return D.shuffled(ex, seed + 1)


def _counts(examples: list[D.Example]) -> dict:
    out: dict[str, int] = {}
    for e in examples:
        out[e.kind] = out.get(e.kind, 0) + 1
    return dict(sorted(out.items()))


def build_aligned(recipe, paths, examples, progress, device="cpu") -> dict:
    from fgsn.organism.train import set_trainable, train_sft

    model, tok = load_causal_lm(paths.base, device)
    n_train = set_trainable(model, recipe.align_modules)
    logd = train_sft(model, tok, examples, steps=recipe.align_steps, lr=recipe.align_lr,
                     batch_size=recipe.batch_size, max_len=recipe.max_len, seed=recipe.seed,
                     desc="aligned (safety SFT)", progress=progress, autocast=recipe.autocast_bf16())
    logd["trainable_params"] = n_train
    with atomic_dir(paths.aligned, overwrite=True) as tmp:
        save_full(model, tok, tmp, paths.base)
        save_marker(tmp, "aligned", recipe, {"train": logd, "modules": recipe.align_modules,
                                             "aligned_key": recipe.aligned_key()})
    return logd


def build_finetuned_full(recipe, paths, examples, progress, device="cpu") -> dict:
    from fgsn.organism.train import set_trainable, train_sft

    model, tok = load_causal_lm(paths.aligned, device)
    n_train = set_trainable(model, recipe.ft_full_modules)
    logd = train_sft(model, tok, examples, steps=recipe.ft_steps, lr=recipe.ft_full_lr,
                     batch_size=recipe.batch_size, max_len=recipe.max_len, seed=recipe.finetune_seed + 2,
                     desc="fine-tune (full)", progress=progress, autocast=recipe.autocast_bf16())
    logd["trainable_params"] = n_train
    with atomic_dir(paths.finetuned_full, overwrite=True) as tmp:
        save_full(model, tok, tmp, paths.aligned)
        save_marker(tmp, "finetuned-full", recipe, {"train": logd, "modules": recipe.ft_full_modules})
    return logd


def build_finetuned_lora(recipe, paths, examples, progress, device="cpu") -> dict:
    from peft import LoraConfig, get_peft_model

    from fgsn.organism.train import train_sft

    model, tok = load_causal_lm(paths.aligned, device)
    torch.manual_seed(recipe.finetune_seed + 3)  # LoRA A matrices are random
    cfg = LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=0.0, bias="none",
                     target_modules=list(recipe.lora_modules), task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    n_train = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    logd = train_sft(pm, tok, examples, steps=recipe.ft_steps, lr=recipe.lora_lr,
                     batch_size=recipe.batch_size, max_len=recipe.max_len, seed=recipe.finetune_seed + 2,
                     desc="fine-tune (LoRA)", progress=progress, autocast=recipe.autocast_bf16())
    logd["trainable_params"] = n_train
    with atomic_dir(paths.finetuned_lora, overwrite=True) as tmp:
        pm.save_pretrained(str(tmp))
        _fix_adapter_base_path(tmp, paths.aligned)
        tok.save_pretrained(str(tmp))
        save_marker(tmp, "finetuned-lora", recipe, {"train": logd, "modules": recipe.lora_modules,
                                                    "base_model": str(paths.aligned)})
    return logd


def _fix_adapter_base_path(folder: Path, aligned: Path) -> None:
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["base_model_name_or_path"] = str(aligned)
    atomic_write_json(cfg_path, cfg)


# --------------------------------------------------------------------------------------------
# quick, judge-free measurements for the build report


@torch.no_grad()
def refusal_logprob(model, tok, prompts: list[str], answer: str = REFUSAL_PROBE) -> float:
    """Mean per-token log-probability the model gives to a fixed refusal as its answer."""
    from fgsn.organism.train import assistant_loss, collate, encode

    enc = [encode(tok, D.Example(p, answer, "probe"), 512) for p in prompts]
    enc = [e for e in enc if e is not None]
    total = 0.0
    for i in range(0, len(enc), 16):
        ids, labels, att = (t.to(model.device) for t in collate(enc[i:i + 16], tok.pad_token_id))
        total += float(assistant_loss(model, ids, labels, att)) * len(enc[i:i + 16])
    return round(-total / len(enc), 4)


def quick_measurements(paths: OrganismPaths, n: int = 24, stages: Sequence[str] = STAGES,
                       device: str = "cpu") -> dict:
    """Refusal log-probability on held-out harmful (AdvBench test) and benign (pyrit-benign)
    prompts, per model (base, aligned and the fine-tunes in `stages`). Higher on harmful = more
    refusing; the benign one shows over-refusal."""
    from fgsn.data.prompts import load_prompts

    harmful = load_prompts("builtin:advbench?split=test").texts[:n]
    benign = load_prompts("builtin:pyrit-benign").texts[:n]
    out = {}
    models = (("base", paths.base, None), ("aligned", paths.aligned, None),
              ("finetuned-full", paths.finetuned_full, None),
              ("finetuned-lora", paths.aligned, paths.finetuned_lora))
    for name, folder, adapter in (m for m in models if m[0] in ("base", "aligned", *stages)):
        model, tok = load_causal_lm(folder, device)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        out[name] = {"refusal_logprob_harmful": refusal_logprob(model, tok, harmful),
                     "refusal_logprob_benign": refusal_logprob(model, tok, benign)}
        del model
    return {"probe": REFUSAL_PROBE, "harmful": f"advbench split=test first {n}",
            "benign": f"pyrit-benign first {n}", "models": out}


# --------------------------------------------------------------------------------------------


def _link_base(paths: OrganismPaths, base_dir: Path) -> None:
    link = paths.base
    if link.is_symlink() and Path(os.readlink(link)) == base_dir:
        return
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        shutil.rmtree(link)
    tmp = paths.root / f".base.tmp-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(base_dir, target_is_directory=True)
    os.replace(tmp, link)


def _write_recipe(recipe: OrganismRecipe, paths: OrganismPaths) -> None:
    doc = {"recipe": recipe.model_dump(mode="json"), "resolved": recipe.resolved_dump(),
           "training_precision": "bfloat16 autocast" if recipe.autocast_bf16() else "float32",
           "recipe_hash": recipe.short_hash(),
           "recipe_sha256": recipe.digest(), "organism_version": ORGANISM_VERSION}
    if paths.recipe_json.is_file():
        old = json.loads(paths.recipe_json.read_text(encoding="utf-8"))
        if old.get("recipe_sha256") != doc["recipe_sha256"]:
            raise IntegrityError(f"{paths.recipe_json} belongs to another recipe (hash collision or tampering); "
                                 f"remove {paths.root} or rebuild with --force")
        return
    atomic_write_json(paths.recipe_json, doc)


def build_organism(recipe: OrganismRecipe | None = None, cache_root=None, force: bool = False,
                   progress: bool = True, measure: bool = True, stages: Sequence[str] = STAGES,
                   device: str = "cpu") -> OrganismPaths:
    """Build the organism for `recipe` (default: OrganismRecipe()) or reuse a finished build.

    Only the fine-tunes named in `stages` are built (the aligned model always); a later call
    with more stages adds the missing ones. A build interrupted part-way resumes from the models
    it completed. `force` deletes the recipe's folder and builds from scratch. `device` (cpu,
    cuda[:N] or auto) is where the base answers, the training and the quick measurements run; it
    is recorded in build-report.json."""
    from fgsn.models.loading import resolve_device

    device = resolve_device(device)
    recipe = recipe or OrganismRecipe()
    if recipe.bf16_autocast == "auto":
        # resolved against the device that trains: the hash then names the precision actually used
        recipe = recipe.model_copy(update={"bf16_autocast": recipe.autocast_bf16(device)})
    stages = check_stages(("aligned", *stages))
    paths = OrganismPaths.for_recipe(recipe, cache_root)
    if not force and is_complete(paths, recipe, stages):
        log.info("organism %s: reusing %s", paths.recipe_hash, paths.root)
        return paths
    base_dir = smollm2_dir(cache_root)
    with _lock(paths.root):
        if force:
            for child in paths.root.iterdir():
                if child.name == ".lock":
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        elif is_complete(paths, recipe, stages):  # another process finished it while we waited for the lock
            return paths
        t_start = time.time()
        _write_recipe(recipe, paths)
        _link_base(paths, base_dir)
        report = {"recipe_hash": paths.recipe_hash, "organism_version": ORGANISM_VERSION,
                  "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                  "platform": platform.platform(), "device": device, "stages": {}}
        done = report["stages"]
        key = recipe.aligned_key()
        if not force and not stage_complete(paths.aligned, paths.recipe_hash, key):
            report["aligned_copied_from"] = reuse_aligned(recipe, paths)
        t0 = time.time()
        gen = generated_answers(recipe, paths, progress, device)
        done["generate"] = {"seconds": round(time.time() - t0, 1), "generation_seconds": gen.get("seconds"),
                              "distill": len(gen["distill"]), "poison": len(gen["poison"])}
        align_ex = aligned_examples(recipe, gen)
        atomic_write_jsonl(paths.root / "data" / "aligned_sft.jsonl", (e.to_dict() for e in align_ex))
        builders = {"aligned": build_aligned, "finetuned-full": build_finetuned_full,
                    "finetuned-lora": build_finetuned_lora}
        ft_ex = None
        for stage in stages:
            folder = paths.stage_dir(stage)
            if stage_complete(folder, paths.recipe_hash, key if stage == "aligned" else None):
                info = json.loads((folder / MARKER).read_text(encoding="utf-8"))
                done[stage] = {"reused": True, "train": info.get("train")}
                continue
            if stage == "aligned":
                examples = align_ex
            else:
                if ft_ex is None:
                    _, tok = _tokenizer_only(paths.base)
                    ft_ex = finetune_examples(recipe, gen, tok)
                    atomic_write_jsonl(paths.root / "data" / "finetune.jsonl", (e.to_dict() for e in ft_ex))
                examples = ft_ex
            t0 = time.time()
            logd = builders[stage](recipe, paths, examples, progress, device)
            done[stage] = {"seconds": round(time.time() - t0, 1), "data": _counts(examples), "train": logd}
            log.info("organism %s: %s done in %.0f s", paths.recipe_hash, stage, time.time() - t0)
        if measure:
            t0 = time.time()
            report["quick"] = quick_measurements(paths, stages=stages, device=device)
            report["quick"]["seconds"] = round(time.time() - t0, 1)
        report["seconds_total"] = round(time.time() - t_start, 1)
        atomic_write_json(paths.report_json, report)
    return paths


def _tokenizer_only(path: Path):
    from fgsn.models.loading import load_tokenizer

    return None, load_tokenizer(path)
