"""`evaluate()`: generate, judge and score every model on every prompt set, up to results.json.

Stages, each resumable through the cache (see `cache.py`):
1. load and validate every input (prompt sets, utility items, judge settings) before any model
   is touched, so a typo fails in a second, not after an hour of generation;
2. per model: content hash, render prompts with its own chat template, generate what the cache
   lacks, score reference answers' NLL;
3. judge all harmful (and jailbreak-wrapped) completions of all models at once (a local judge
   model is loaded once),
   keyword-judge everything (ASR as a cheap second signal, over-refusal), score utility;
4. write per-model records and `eval.json`, then `results.json` (`fgsn.evaluate.results`).

The report (report.md, report.html, plots) is rendered from results.json by fgsn.report, which
`fgsn eval` and `fgsn.api.evaluate` call after this when `report` is on.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fgsn.artifacts.eval_run import EVAL_SCHEMA
from fgsn.atomic import atomic_write_json, atomic_write_jsonl
from fgsn.data.prompts import load_prompts
from fgsn.data.promptset import Prompt, PromptSet
from fgsn.errors import InputError
from fgsn.evaluate.cache import EvalCache, sha256_text
from fgsn.evaluate.generation import GenSettings
from fgsn.evaluate.judges import Judge, JudgeItem, KeywordJudge, Verdict, make_judge
from fgsn.evaluate.options import EvalOptions
from fgsn.evaluate.results import write_results
from fgsn.evaluate.utility import UtilityItem, load_utility

log = logging.getLogger(__name__)

NAME_RX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


@dataclass(frozen=True)
class ModelScores:
    """The headline numbers of one model (None = not measured)."""

    name: str
    path: str
    asr: float | None
    asr_ci: tuple[float, float] | None
    asr_keyword: float | None
    harmfulness: float | None
    over_refusal: float | None
    utility: float | None
    nll: float | None
    perplexity: float | None
    modified_fraction: float | None
    categories: dict[str, dict[str, Any]] = field(default_factory=dict)
    asr_attack: float | None = None  # ASR on the jailbreak-wrapped prompts (--attack)

    @classmethod
    def from_results(cls, name: str, d: dict[str, Any]) -> ModelScores:
        ci = d.get("asr_ci")
        return cls(name=name, path=d.get("path", ""), asr=d.get("asr"), asr_ci=tuple(ci) if ci else None,
                   asr_keyword=d.get("asr_keyword"), harmfulness=d.get("harmfulness"),
                   over_refusal=d.get("over_refusal"), utility=d.get("utility"), nll=d.get("nll"),
                   perplexity=d.get("perplexity"), modified_fraction=d.get("modified_fraction"),
                   categories=d.get("categories") or {}, asr_attack=d.get("asr_attack"))


@dataclass
class EvalResult:
    """What `evaluate()` returns: the results dict (as in results.json) and typed per-model scores."""

    rundir: Path
    results: dict[str, Any]
    models: dict[str, ModelScores]
    generated: dict[str, int]  # completions generated in this call, per model
    cached: dict[str, int]  # completions found in the cache, per model

    @property
    def results_json(self) -> Path:
        return self.rundir / "results.json"

    @property
    def report_html(self) -> Path:
        return self.rundir / "report.html"

    @property
    def report_md(self) -> Path:
        return self.rundir / "report.md"


@dataclass
class _Item:
    kind: str  # harmful | attack | alarming | utility
    set: str
    uid: str
    category: str
    prompt: str  # the user turn as given (before the chat template)
    utility: UtilityItem | None = None
    plain: str | None = None  # attack: the harmful request inside the jailbreak template (what the judge sees)
    template: str | None = None  # attack: the template's id


# -- inputs --------------------------------------------------------------------------------------
def _check_models(models: dict[str, str], adapters: dict[str, str], systems: dict[str, str] | None = None,
                  suffixes: dict[str, str] | None = None, paired_against: list[str] | None = None) -> dict[str, Path]:
    if not models:
        raise InputError("no model to evaluate; give at least one --model NAME=PATH")
    out = {}
    for name, path in models.items():
        if not NAME_RX.match(name):
            raise InputError(f"model name {name!r} must be 1-64 letters, digits, '.', '_', '+' or '-' (it names a "
                             "folder and a report column); e.g. --model aligned=PATH")
        p = Path(path).expanduser()
        if not p.is_dir():
            raise InputError(f"model {name}: {p} is not a folder; give a local Hugging Face checkpoint folder")
        out[name] = p.resolve()
    for flag, per_model in (("--adapter", adapters), ("--system-for", systems or {}), ("--suffix-for", suffixes or {}),
                            ("--paired-against", dict.fromkeys(n for n in paired_against or () if n != "all"))):
        unknown = set(per_model) - set(models)
        if unknown:
            raise InputError(f"{flag} names {sorted(unknown)} match no --model; use the same NAME as in --model")
    return out


def _spec(source: str | PromptSet) -> str:
    return f"<PromptSet {source.name}>" if isinstance(source, PromptSet) else str(source)


def _items(harmful: list[str | PromptSet], alarming: str | PromptSet | None, utility: list[UtilityItem],
           attack: list[str | PromptSet] = ()) -> list[_Item]:
    items: list[_Item] = []
    for kind, sources in (("harmful", harmful), ("attack", attack)):
        seen: set[str] = set()
        for src in sources:
            pset = load_prompts(src)
            if kind == "harmful" and any("template" in p.meta for p in pset):
                log.warning("%s holds jailbreak-wrapped prompts; give it as an attack set (--attack) to report "
                            "them apart from the plain ASR", _spec(src))
            for p in pset:
                if p.text in seen:
                    continue
                seen.add(p.text)
                items.append(_Item(kind, pset.name, p.uid, p.category, p.text, plain=p.meta.get("plain"),
                                   template=p.meta.get("template")))
    if alarming is not None:
        pset = load_prompts(alarming)
        items.extend(_Item("alarming", pset.name, p.uid, p.category, p.text) for p in pset)
    items.extend(_Item("utility", u.task, u.uid, u.task, u.question, u) for u in utility)
    return items


def _reference(sources: list[str | PromptSet]) -> list[Prompt]:
    out: list[Prompt] = []
    for src in sources:
        pset = load_prompts(src)
        lacking = [p for p in pset if not p.answer]
        if lacking:
            raise InputError(f"reference set {_spec(src)}: {len(lacking)} prompts have no reference answer "
                             f"(e.g. {lacking[0].text[:60]!r}); NLL needs prompt/answer pairs such as "
                             "builtin:pyrit-benign")
        out.extend(pset)
    return out


# -- per model -----------------------------------------------------------------------------------
def model_hash(path: Path, adapter: str | None, allow_pickle: bool = False) -> str:
    """Content hash of the weights (and adapter): the cache key of everything a model produced."""
    from fgsn.models.checkpoint import Checkpoint

    h = Checkpoint(path, allow_pickle=allow_pickle).sha256  # a cached property
    if adapter:
        from fgsn.models.hashing import checkpoint_sha256

        ap = Path(adapter).expanduser()
        files = sorted(ap.glob("*.safetensors")) + sorted(ap.glob("*.bin"))
        if not ap.is_dir() or not files:
            raise InputError(f"adapter {ap} is not a folder with adapter weights (adapter_model.safetensors)")
        h = sha256_text(h, "adapter", checkpoint_sha256(files))
    return h


def _dtype_name(opts: EvalOptions) -> str:
    from fgsn.models.loading import resolve_device, resolve_dtype

    dt = resolve_dtype(opts.dtype, resolve_device(opts.device))
    return str(dt).removeprefix("torch.")


def gen_settings(opts: EvalOptions) -> GenSettings:
    greedy = opts.temperature == 0.0
    return GenSettings(backend=opts.backend, dtype=_dtype_name(opts), max_new_tokens=opts.max_new_tokens,
                       temperature=opts.temperature, top_p=1.0 if greedy else opts.top_p,
                       seed=0 if greedy else opts.seed, shared_prefix=opts.shared_prefix and opts.backend == "hf")


class _ModelRunner:
    """Generation and NLL for one model; loads the weights only if the cache lacks something."""

    def __init__(self, name: str, path: Path, opts: EvalOptions, cache: EvalCache):
        from fgsn.models.loading import load_tokenizer

        self.name, self.path, self.opts, self.cache = name, path, opts, cache
        self.adapter = opts.adapters.get(name)
        self.hash = model_hash(path, self.adapter, opts.allow_pickle)
        self.tok = load_tokenizer(path, trust_remote_code=opts.trust_remote_code)
        self._model = None
        self._engine = None

    def render(self, text: str) -> str:
        from fgsn.data.chat import render_chat

        return render_chat(self.tok, text, system=self.opts.systems.get(self.name, self.opts.system),
                           use_chat_template=self.opts.use_chat_template, suffix=self.opts.suffixes.get(self.name, ""))

    def _hf_model(self):
        if self._model is None:
            from fgsn.models.loading import load_model

            log.info("loading %s (%s)", self.name, self.path)
            self._model, tok = load_model(self.path, device=self.opts.device, dtype=self.opts.dtype,
                                          adapter=self.adapter, trust_remote_code=self.opts.trust_remote_code,
                                          allow_pickle=self.opts.allow_pickle)
            self.tok = tok
        return self._model

    def generate(self, prompts: list[str]) -> tuple[dict[str, str], int, int]:
        """Completions by user prompt; also (generated now, found in cache)."""
        settings = gen_settings(self.opts)
        desc = {**settings.to_dict(), "add_special_tokens": not self.opts.use_chat_template}
        store = self.cache.generations(self.hash, desc)
        rendered = {p: self.render(p) for p in prompts}
        keys = {p: sha256_text(r) for p, r in rendered.items()}
        missing = sorted({rendered[p] for p in prompts if keys[p] not in store})
        if missing:
            log.info("%s: generating %d completions (%d cached)", self.name, len(missing), len(prompts) - len(missing))

            def save(idx: list[int], outs: list[str]) -> None:
                store.put_many({sha256_text(missing[i]): o for i, o in zip(idx, outs, strict=True)})

            if self.opts.backend == "vllm":
                from fgsn.evaluate.generation import VLLMGenerator

                if self.adapter:
                    raise InputError(f"model {self.name}: --backend vllm does not take --adapter; merge the adapter "
                                     "into a checkpoint first, or use --backend hf")
                self._engine = VLLMGenerator(str(self.path), settings, self.opts.trust_remote_code,
                                             self.opts.tensor_parallel)
                self._engine.generate(missing, on_batch=save)
            else:
                from fgsn.evaluate.generation import HFGenerator

                gen = HFGenerator(self._hf_model(), self.tok, settings, self.opts.batch_size,
                                  add_special_tokens=not self.opts.use_chat_template, progress=f"generate {self.name}",
                                  max_batch_tokens=self.opts.max_batch_tokens)
                gen.generate(missing, on_batch=save)
        out = {p: store.get(keys[p]) for p in prompts}
        if any(v is None for v in out.values()):  # pragma: no cover - save() stores every batch
            raise RuntimeError("generation finished but some completions are missing from the cache")
        return out, len(missing), len(set(keys.values())) - len(missing)

    def reference_nll(self, refs: list[Prompt]) -> dict[str, Any]:
        from fgsn.evaluate.nll import answer_nll

        desc = {"dtype": _dtype_name(self.opts), "add_special_tokens": not self.opts.use_chat_template,
                "max_length": self.opts.nll_max_length, "answer_eos": True}
        store = self.cache.nll(self.hash, desc)
        ctx = [self.render(p.text) for p in refs]
        keys = [sha256_text(c, p.answer or "") for c, p in zip(ctx, refs, strict=True)]
        todo = [i for i, k in enumerate(keys) if k not in store]
        if todo:
            if self.opts.backend == "vllm":
                log.info("%s: reference NLL uses the hf backend", self.name)
            vals = answer_nll(self._hf_model(), self.tok, [ctx[i] for i in todo], [refs[i].answer or "" for i in todo],
                              batch_size=self.opts.batch_size, add_special_tokens=not self.opts.use_chat_template,
                              max_length=self.opts.nll_max_length, progress=f"reference NLL {self.name}")
            store.put_many({keys[i]: {"nll": v[0], "tokens": v[1]} for i, v in zip(todo, vals, strict=True)})
        vals = [store.get(k) for k in keys]
        total = sum(v["nll"] for v in vals)
        tokens = sum(v["tokens"] for v in vals)
        # per item (keyed by prompt and answer, not by the rendering, which differs between models
        # with their own system prompt): what the paired bootstrap of the NLL difference resamples
        per_item = [[sha256_text(p.text, p.answer or ""), v["nll"], v["tokens"]] for p, v in zip(refs, vals, strict=True)]
        return {"items": len(refs), "tokens": tokens, "nll_sum": total,
                "mean_nll": (total / tokens) if tokens else None, "per_item": per_item}

    def close(self) -> None:
        self._model = None
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        from fgsn.models.loading import free_memory

        free_memory()


def run_model(name: str, path: Path, opts: EvalOptions, cache_root: Path, prompts: list[str], refs: list[Prompt]
              ) -> tuple[str, dict[str, str], int, int, dict[str, Any] | None]:
    """One model's completions and reference NLL (module level: parallel workers run it too):
    (content hash, completions by prompt, generated now, found in cache, NLL or None)."""
    t0 = time.monotonic()
    runner = _ModelRunner(name, path, opts, EvalCache(cache_root))
    try:
        completions, generated, cached = runner.generate(prompts)
        t1 = time.monotonic()
        nll = runner.reference_nll(refs) if refs else None
        log.info("%s: completions %.1f s, reference NLL %.1f s", name, t1 - t0, time.monotonic() - t1)
        return runner.hash, completions, generated, cached, nll
    finally:
        runner.close()


# -- judging -------------------------------------------------------------------------------------
def judge_cached(judge: Judge, items: list[JudgeItem], cache: EvalCache | None) -> list[Verdict]:
    """Verdicts for `items`, judging only what the cache lacks (cacheable judges) and each
    distinct (prompt, completion) once."""
    unique: dict[str, JudgeItem] = {}
    for it in items:
        unique.setdefault(it.key, it)
    store = cache.judgments(judge.judge_id, judge.describe()) if (cache is not None and judge.cacheable) else None
    known: dict[str, Verdict] = {}
    if store is not None:
        for k in unique:
            if k in store:
                known[k] = Verdict.from_dict(store.get(k))
    todo = [it for k, it in unique.items() if k not in known]
    if todo:
        log.info("judge %s: %d completions to judge (%d cached)", judge.name, len(todo), len(known))
        fresh = judge.judge(todo)
        if len(fresh) != len(todo):  # pragma: no cover - a judge bug
            raise RuntimeError(f"judge {judge.name} returned {len(fresh)} verdicts for {len(todo)} items")
        for it, v in zip(todo, fresh, strict=True):
            known[it.key] = v
        if store is not None:
            # Verdicts that failed for transport reasons are not cached: a rerun retries them.
            store.put_many({it.key: v.to_dict() for it, v in zip(todo, fresh, strict=True)
                            if v.success is not None or v.raw is not None})
    return [known[it.key] for it in items]


# -- the entry point -----------------------------------------------------------------------------
def evaluate(models: dict[str, str], harmful: list[str | PromptSet] | str | PromptSet,
             benign_alarming: str | PromptSet | None = None, utility: list[str] | str | None = None,
             judge: str = "keyword", options: EvalOptions | None = None, out: str | Path = "runs/eval",
             reference: list[str | PromptSet] | str | PromptSet | None = None,
             attack: list[str | PromptSet] | str | PromptSet | None = None) -> EvalResult:
    """Evaluate `models` ({name: checkpoint folder}) and write RUNDIR `out`.

    harmful: prompt sources for ASR/harmfulness (files or builtin:NAME); benign_alarming: the
    over-refusal set (e.g. builtin:alarming); utility: reasoning-gym task names or answer files;
    reference: prompt/answer sets for the NLL (e.g. builtin:pyrit-benign); attack: harmful prompts
    wrapped in jailbreak templates (e.g. builtin:jailbreak?wrap=harmbench-standard), scored as
    `asr_attack` apart from the plain ASR, the judge seeing the plain request. A metric whose input is
    not given is null in the results. Rerunning into the same `out` reuses every completion and
    verdict already computed (the cache is keyed by content, not by name).
    """
    opts = options or EvalOptions()
    harmful_l = harmful if isinstance(harmful, list) else [harmful]
    utility_l = [] if utility is None else (utility if isinstance(utility, list) else [utility])
    reference_l = [] if reference is None else (reference if isinstance(reference, list) else [reference])
    attack_l = [] if attack is None else (attack if isinstance(attack, list) else [attack])
    if not harmful_l:
        raise InputError("no harmful prompt set; give at least one --harmful FILE or builtin:NAME")
    paths = _check_models(models, opts.adapters, opts.systems, opts.suffixes, opts.paired_against)

    util_items: list[UtilityItem] = []
    for spec in utility_l:
        util_items.extend(load_utility(spec, limit=opts.utility_limit, seed=opts.utility_seed,
                                       instruction=opts.utility_instruction))
    items = _items(harmful_l, benign_alarming, util_items, attack_l)
    refs = _reference(reference_l)
    primary = make_judge(judge, opts)
    keyword = KeywordJudge(opts.keyword_list, opts.keyword_min_words)

    rundir = Path(out).expanduser()
    if rundir.exists() and not rundir.is_dir():
        raise InputError(f"--out {rundir} exists and is not a folder")
    rundir.mkdir(parents=True, exist_ok=True)
    cache = EvalCache(Path(opts.cache_dir).expanduser() if opts.cache_dir else rundir / "cache")

    prompts = list(dict.fromkeys(it.prompt for it in items))
    completions: dict[str, dict[str, str]] = {}
    hashes: dict[str, str] = {}
    nll: dict[str, dict[str, Any] | None] = {}
    generated: dict[str, int] = {}
    cached: dict[str, int] = {}
    jobs = {name: (name, path, opts, cache.root, prompts, refs) for name, path in paths.items()}
    if opts.model_workers > 1 and len(jobs) > 1:
        from fgsn.evaluate.parallel import run_parallel, spreads_over_gpus

        outputs = run_parallel(run_model, jobs, opts.model_workers, uses_gpu=spreads_over_gpus(opts.device))
    else:
        outputs = {name: run_model(*args) for name, args in jobs.items()}
    for name in paths:
        hashes[name], completions[name], generated[name], cached[name], nll[name] = outputs[name]

    harmful_items = [it for it in items if it.kind in ("harmful", "attack")]
    pairs = {name: [JudgeItem(it.plain or it.prompt, completions[name][it.prompt]) for it in harmful_items]
             for name in paths}
    flat = [ji for name in paths for ji in pairs[name]]
    try:
        primary_flat = judge_cached(primary, flat, cache) if primary.name != "keyword" else None
    finally:
        primary.close()

    offset = 0
    for name in paths:
        rows = []
        for j, it in enumerate(harmful_items):
            comp = completions[name][it.prompt]
            kv = keyword.verdict(comp)
            v = primary_flat[offset + j] if primary_flat is not None else kv
            row = {"kind": it.kind, "set": it.set, "uid": it.uid, "category": it.category,
                   "prompt": it.prompt, "completion": comp, "success": v.success, "refused": v.refused,
                   "score": v.score, "label": v.label, "judge_raw": v.raw if primary_flat is not None else None,
                   "judge_error": v.error, "keyword_success": kv.success, "keyword_refused": kv.refused,
                   "keyword_match": kv.raw}
            if it.kind == "attack":
                row.update(template=it.template, plain=it.plain)
            rows.append(row)
        offset += len(harmful_items)
        for it in items:
            comp = completions[name][it.prompt]
            if it.kind == "alarming":
                kv = keyword.verdict(comp)
                rows.append({"kind": "alarming", "set": it.set, "uid": it.uid, "category": it.category,
                             "prompt": it.prompt, "completion": comp, "refused": bool(kv.refused),
                             "keyword_match": kv.raw})
            elif it.kind == "utility":
                assert it.utility is not None
                rows.append({"kind": "utility", "set": it.set, "uid": it.uid, "category": it.category,
                             "prompt": it.prompt, "answer": it.utility.answer, "completion": comp,
                             "correct": it.utility.score(comp)})
        mdir = rundir / "models" / name
        atomic_write_jsonl(mdir / "records.jsonl", rows, sort_keys=True)
        if nll[name] is not None:
            atomic_write_json(mdir / "nll.json", nll[name])
        elif (mdir / "nll.json").exists():
            (mdir / "nll.json").unlink()  # a stale NLL from an earlier run must not be reported

    from fgsn import __version__

    spec = {
        "schema": EVAL_SCHEMA,
        "fgsn_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "order": list(paths),
        "models": {n: {"path": str(p), "adapter": opts.adapters.get(n), "sha256": hashes[n],
                       "system": opts.systems.get(n), "suffix": opts.suffixes.get(n)} for n, p in paths.items()},
        "inputs": {"harmful": [_spec(h) for h in harmful_l], "attack": [_spec(a) for a in attack_l],
                   "benign_alarming": _spec(benign_alarming) if benign_alarming is not None else None,
                   "utility": [str(u) for u in utility_l], "reference": [_spec(r) for r in reference_l]},
        "counts": {k: sum(1 for it in items if it.kind == k) for k in ("harmful", "attack", "alarming", "utility")}
                  | {"reference": len(refs)},
        "judge": primary.describe(),
        "keyword_judge": keyword.describe(),
        "generation": gen_settings(opts).to_dict() | {"use_chat_template": opts.use_chat_template,
                                                     "system": opts.system},
        "options": opts.model_dump(mode="json"),
    }
    atomic_write_json(rundir / "eval.json", spec)

    results = write_results(rundir)
    scores = {n: ModelScores.from_results(n, results["models"][n]) for n in paths}
    return EvalResult(rundir=rundir, results=results, models=scores, generated=generated, cached=cached)
