"""`fgsn compare`: every method on the same inputs, scored by the same harness, in one table.

    RUNDIR/models/NAME/          the checkpoint of each weight-editing method (+ fgsn-manifest.json)
    RUNDIR/edits/NAME.json       the cost of its edit (wall time, memory; see worker.py)
    RUNDIR/eval/                 `fgsn.evaluate.evaluate` of every checkpoint (+ references)
    RUNDIR/cache/                completions and verdicts (content-keyed, shared by both)
    RUNDIR/results.json          the evaluation schema (fgsn-results/1): one entry per method
                                 under `models`, named as in --methods, plus the edit cost
    RUNDIR/report.md, report.html, plots/

Fairness: one set of evaluation prompts, one judge, one decoding setting for all; the locate
prompts (--harmful, --task, --benign) are separate from the evaluation prompts (--eval-harmful,
--benign-alarming, --utility, --reference), and an overlap between them is reported. Every
weight-editing method sees the same base/aligned/fine-tuned trio and the same target modules;
FGSN ablations are presets (methods.py), not new code paths.

Resume: a method whose checkpoint exists, is complete (atomic folders only appear complete) and
was made with the same options is not re-run; evaluation reuses every cached completion and
verdict. --overwrite re-runs every edit.

Edit cost: each edit runs in a fresh subprocess (`--isolate`, the default) that reports its own
wall time and peak RSS (getrusage ru_maxrss, a per-process high-water mark) and CUDA peak; with
--no-isolate the edit runs in this process and the peak RSS is the process's high-water mark so
far (an upper bound that can hide a later method's smaller peak), marked `isolated: false`.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from fgsn.artifacts.manifest import is_complete as manifest_is_complete
from fgsn.atomic import atomic_write_json
from fgsn.baselines.methods import ACTIVATION_MATCH, ALL_LAYERS, Method, option_class, parse_methods
from fgsn.baselines.self_reminder import SUFFIX, SYSTEM, SelfReminder
from fgsn.baselines.worker import measured_run
from fgsn.edit.options import CompensateOptions, ProjectOptions
from fgsn.errors import ConfigError, FgsnError, InputError
from fgsn.evaluate.options import EvalOptions
from fgsn.locate.options import ProbeOptions

log = logging.getLogger(__name__)

DEFAULT_EVAL_HARMFUL = ("builtin:harmbench?split=test&limit=100", "builtin:strongreject?split=test&limit=100")
# Fields that make no sense for a comparison: each method writes its own folder, and compare sets the
# evaluation's per-model settings itself (the fine-tuned adapter, Self-Reminder's system prompt and
# suffix), so no flag is offered for them and a YAML value is an error.
NOT_FOR_COMPARE = ("ledger", "locate_run", "output_format", "category", "adapters", "systems", "suffixes")


class CompareOptions(ProjectOptions, EvalOptions):
    """Inputs and options of `fgsn compare`: every option of `fgsn project` (used by the FGSN
    methods, and shared with the baselines where the meaning is the same: models, target modules,
    seed, device, prompts' chat template) and of `fgsn eval`, plus the baselines' own."""

    methods: list[str]
    with_references: bool = False
    eval_harmful: list[str] = Field(default_factory=lambda: list(DEFAULT_EVAL_HARMFUL))
    eval_attack: list[str] = Field(default_factory=list)
    benign_alarming: str | None = "builtin:alarming"
    utility: list[str] = Field(default_factory=list)
    reference: list[str] = Field(default_factory=list)
    judge: str = "keyword"
    isolate: bool = True
    # SafeLoRA
    safelora_select: Literal["threshold", "number"] = "threshold"
    safelora_threshold: float = Field(0.5, ge=-1, le=1)
    safelora_k: int = Field(10, ge=1)
    # RESTA
    resta_beta: float = Field(0.5, ge=0)
    resta_dare: float = Field(0.0, ge=0, lt=1)
    resta_unaligned: str | None = None
    resta_scope: Literal["all", "linear"] = "all"
    # Wanda
    wanda_q: float = Field(0.1, ge=0, le=1)
    wanda_target: Literal["update", "weight"] = "update"
    wanda_group: Literal["row", "module"] = "row"
    wanda_granularity: Literal["weight", "neuron"] = "weight"
    wanda_score: Literal["wanda", "wanda-delta"] = "wanda"
    # activation matching (defaults: the editor's own; presets in methods.AM_PRESETS override them)
    activation_match_form: Literal["ridge", "nullspace"] = "ridge"
    activation_match_lam: float = Field(1.0, ge=0)
    activation_match_mu: float = Field(1e-3, ge=0)
    activation_match_null_energy: float = Field(0.01, gt=0, lt=1)
    activation_match_sequential: bool = False
    activation_match_harmful_answer: Literal["none", "refusal", "aligned"] = "none"
    # Self-Reminder
    self_reminder_system: str = SYSTEM
    self_reminder_suffix: str = SUFFIX
    # any method's own options, by method name (IRR, SGDG and revert run at their defaults otherwise)
    method_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per method name, options of that method that override what compare "
                                          "passes it, e.g. {sgdg: {rounds: 5}} in YAML or '{\"sgdg\": {\"rounds\": "
                                          "5}}' as a flag", json_schema_extra={"json": True, "metavar": "JSON"})

    @field_validator("methods", "eval_harmful", "eval_attack", "utility", "reference", mode="before")
    @classmethod
    def _listify_compare(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("method_options", mode="before")
    @classmethod
    def _json_mapping(cls, v):
        if isinstance(v, str):
            try:
                return json.loads(v)
            except json.JSONDecodeError as e:
                raise ValueError(f"not a JSON mapping of method name to options ({e})") from e
        return v


HELPS = {
    "methods": "comma list of methods: fgsn, fgsn-frontier, fgsn-layers-only, fgsn-neurons-only, fgsn-svd, fgsn-safelora, "
               "fgsn-neuron, fgsn-weight, fgsn-no-task, activation-match, activation-match-nullspace, "
               "activation-match-seq, revert, safelora, resta, wanda, irr, sgdg, self-reminder",
    "with_references": "also evaluate the aligned and fine-tuned models (entries `aligned`, `finetuned`)",
    "eval_harmful": "harmful prompts for ASR (separate from the locate --harmful)",
    "eval_attack": "harmful prompts wrapped in jailbreak templates, scored apart as asr_attack "
                   "(e.g. builtin:jailbreak?wrap=harmbench-standard&split=test)",
    "benign_alarming": "harmless prompts that sound alarming, for over-refusal",
    "utility": "utility tasks or prompt/answer files (see fgsn eval --utility)",
    "reference": "prompt/answer sets whose answers' NLL is measured",
    "judge": "primary ASR judge: keyword, openai or local",
    "layers": "FGSN safety layers as A-B (default: the cosine-gap search); the baselines use every layer",
    "modules": "target modules of FGSN, SafeLoRA and Wanda (default: every linear module)",
    "isolate": "run each edit in its own process, so that its peak memory is its own",
    "overwrite": "re-run every edit even when its output is complete",
    "out": "run folder RUNDIR",
    "safelora_select": "SafeLoRA: project modules with cos <= threshold, or the k lowest-cos modules (number)",
    "safelora_threshold": "SafeLoRA: cosine threshold",
    "safelora_k": "SafeLoRA: number of modules projected in `number` mode",
    "resta_beta": "RESTA: weight of the safety vector",
    "resta_dare": "RESTA: DARE drop rate of the fine-tuning delta (0: no DARE)",
    "resta_unaligned": "RESTA: model the safety vector is measured from (default: --base)",
    "resta_scope": "RESTA: all tensors (paper) or only the linear modules of the decoder layers",
    "wanda_q": "Wanda: share of weights removed",
    "wanda_target": "Wanda: remove the fine-tuning update (update) or zero the weights (weight)",
    "wanda_group": "Wanda: top-q within each output row (Wanda's comparison group) or over the module",
    "wanda_granularity": "Wanda: weight, or neuron (whole rows; needs --wanda-group module)",
    "wanda_score": "Wanda: |W| (wanda) or |dW| (wanda-delta) times input norms",
    "activation_match_form": "activation-match: ridge or nullspace (see fgsn activation-match --help)",
    "activation_match_lam": "activation-match: lambda, weight of keeping the task outputs (ridge form)",
    "activation_match_mu": "activation-match: damping mu, a multiple of mean diag(G_h)",
    "activation_match_null_energy": "activation-match: share of the task input energy the null-space edit may touch",
    "activation_match_sequential": "activation-match: Grams from the model repaired so far, layer after layer",
    "activation_match_harmful_answer": "activation-match: none, refusal or aligned: what follows harmful prompts in G_h",
    "self_reminder_system": "Self-Reminder: system prompt",
    "self_reminder_suffix": "Self-Reminder: text appended to every user turn",
}


# -- per-method options ---------------------------------------------------------------------------
def method_options(opts: CompareOptions, m: Method, rundir: Path, num_layers: int) -> dict[str, Any]:
    """The full options of one method's run, as a plain dict (what its manifest records): what
    compare shares with the method, then --method-options for its name on top."""
    own = dict(opts.method_options.get(m.name, {}))
    own.pop("out", None)  # every method writes under RUNDIR/models/NAME
    return {**_shared_options(opts, m, rundir, num_layers), **own}


def _shared_options(opts: CompareOptions, m: Method, rundir: Path, num_layers: int) -> dict[str, Any]:
    out = str(rundir / "models" / m.name)
    common = {"aligned": opts.aligned, "finetuned": opts.finetuned, "base": opts.base,
              "allow_pickle": opts.allow_pickle, "seed": opts.seed, "max_shard_gb": opts.max_shard_gb,
              "out": out, "overwrite": True}
    if m.kind == "fgsn":
        d = {k: getattr(opts, k) for k in ProjectOptions.model_fields if k not in NOT_FOR_COMPARE}
        d.update(m.overrides, out=out, overwrite=True)
        if d.get("layers") == ALL_LAYERS:
            d["layers"] = f"0-{num_layers - 1}"
        return d
    if m.kind == ACTIVATION_MATCH:
        d = {**common, "harmful": opts.harmful, "task": opts.task, "modules": opts.modules,
             "form": opts.activation_match_form, "lam": opts.activation_match_lam, "mu": opts.activation_match_mu,
             "null_energy": opts.activation_match_null_energy, "sequential": opts.activation_match_sequential,
             "harmful_answer": opts.activation_match_harmful_answer, "refusal_text": opts.refusal_text,
             "device": opts.device, "dtype": opts.dtype, "batch_size": opts.batch_size, "max_length": opts.max_length,
             "use_chat_template": opts.use_chat_template, "system": opts.system,
             "trust_remote_code": opts.trust_remote_code, "cache": opts.cache}
        d.update(m.overrides)
        return d
    if m.kind == "safelora":
        return {**common, "select": opts.safelora_select, "threshold": opts.safelora_threshold,
                "k": opts.safelora_k, "modules": opts.modules}
    if m.kind == "resta":
        return {**common, "unaligned": opts.resta_unaligned, "beta": opts.resta_beta, "dare": opts.resta_dare,
                "scope": opts.resta_scope}
    probe = {k: getattr(opts, k) for k in ProbeOptions.model_fields}
    if m.kind == "irr":  # IRR and SGDG keep their published defaults unless --method-options says otherwise
        return {**common, **probe, "task": opts.task, "modules": opts.modules}
    if m.kind in ("sgdg", "revert"):
        d = {**common, **probe, "harmful": opts.harmful, "task": opts.task, "modules": opts.modules}
        if m.kind == "revert":  # shared meaning with fgsn's: the refusal loss and the compensation
            d.update({k: getattr(opts, k) for k in ("refusal_text", *CompensateOptions.model_fields)})
        return d
    if m.kind == "wanda":
        return {**common, "harmful": opts.harmful, "q": opts.wanda_q, "target": opts.wanda_target,
                "group": opts.wanda_group, "granularity": opts.wanda_granularity, "score": opts.wanda_score,
                "modules": opts.modules, "device": opts.device, "dtype": opts.dtype, "batch_size": opts.batch_size,
                "max_length": opts.max_length, "use_chat_template": opts.use_chat_template, "system": opts.system,
                "trust_remote_code": opts.trust_remote_code, "cache": opts.cache}
    raise InputError(f"{m.name} writes no checkpoint")


def is_complete(out: Path, kind: str, options: dict[str, Any]) -> bool:
    """The checkpoint exists (atomic: then it is whole) and was made by this method with these options."""
    from fgsn.config import build_options

    return manifest_is_complete(out, kind, build_options(option_class(kind), options, f"{kind} options"))


# -- running the edits ----------------------------------------------------------------------------
def _child_env() -> dict[str, str]:
    import fgsn

    env = dict(os.environ)
    src = str(Path(fgsn.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_isolated(name: str, kind: str, options: dict[str, Any], stats_path: Path) -> dict:
    """Run one edit in a fresh Python process; stream its stderr; return its measured cost."""
    job = stats_path.parent / f".{name}.job.json"
    atomic_write_json(job, {"kind": kind, "options": options, "stats": str(stats_path),
                            "log_level": logging.getLogger().getEffectiveLevel()})
    tail: collections.deque[str] = collections.deque(maxlen=30)
    proc = subprocess.Popen([sys.executable, "-m", "fgsn.baselines.worker", str(job)], stderr=subprocess.PIPE,
                            text=True, env=_child_env())
    assert proc.stderr is not None
    for line in proc.stderr:
        tail.append(line.rstrip("\n"))
        sys.stderr.write(line)
    rc = proc.wait()
    job.unlink(missing_ok=True)
    if rc != 0:
        errors = [ln for ln in tail if ln.startswith("error: ")]
        msg = errors[-1][len("error: "):] if errors else "\n".join(list(tail)[-8:])
        raise FgsnError(f"method {name} ({kind}) failed (exit {rc}): {msg}")
    return json.loads(stats_path.read_text(encoding="utf-8"))


def run_edit(name: str, kind: str, options: dict[str, Any], edits_dir: Path, overwrite: bool = False,
             isolate: bool = True) -> dict:
    """Run one edit into options["out"] unless a complete output made with the same options is
    there (then it is reused, `resumed: true`); returns its measured cost (edits_dir/NAME.json)."""
    edits_dir.mkdir(parents=True, exist_ok=True)
    out = Path(options["out"])
    stats_path = edits_dir / f"{name}.json"
    if not overwrite and is_complete(out, kind, options):
        log.warning("%s: complete output in %s; not re-run", name, out)
        prev = json.loads(stats_path.read_text(encoding="utf-8")) if stats_path.is_file() else {}
        return {**prev, "resumed": True}
    log.warning("running %s (%s) -> %s", name, kind, out)
    cost = run_isolated(name, kind, options, stats_path) if isolate else measured_run(kind, options, isolated=False)
    cost["resumed"] = False
    atomic_write_json(stats_path, cost)
    return cost


def run_edits(opts: CompareOptions, methods: list[Method], rundir: Path, num_layers: int) -> dict[str, dict]:
    return {m.name: run_edit(m.name, m.kind, method_options(opts, m, rundir, num_layers), rundir / "edits",
                             opts.overwrite, opts.isolate)
            for m in methods if m.edits_weights}


# -- evaluation -------------------------------------------------------------------------------------
def eval_options(opts: CompareOptions, rundir: Path, **update) -> EvalOptions:
    d = {k: getattr(opts, k) for k in EvalOptions.model_fields}
    d["cache_dir"] = opts.cache_dir or str(rundir / "cache")
    d["report"] = False
    d.update(update)
    return EvalOptions(**d)


def _finetuned_entry(opts: CompareOptions) -> tuple[str, str | None]:
    """(model path, adapter) that evaluates the fine-tuned model."""
    from fgsn.models.trio import is_adapter

    if is_adapter(opts.finetuned):
        return opts.aligned, opts.finetuned
    return opts.finetuned, None


def run_evals(opts: CompareOptions, methods: list[Method], rundir: Path, extra_models: dict[str, str] | None = None,
              **eval_update: Any) -> dict[str, dict]:
    """Evaluate every method in one evaluate() call: edited checkpoints as they are, Self-Reminder
    as the fine-tuned model with its own system prompt and user-turn suffix (the judge sees the
    prompts as given); `extra_models` ({name: checkpoint}) are evaluated first, alongside;
    `eval_update` overrides evaluation options (e.g. dtype). Returns {eval folder name: results}."""
    from fgsn.evaluate import evaluate

    ft_path, ft_adapter = _finetuned_entry(opts)
    models: dict[str, str] = dict(extra_models or {})
    adapters: dict[str, str] = {}
    systems: dict[str, str] = {}
    suffixes: dict[str, str] = {}
    if opts.with_references:
        models["aligned"] = opts.aligned
        models["finetuned"] = ft_path
        if ft_adapter:
            adapters["finetuned"] = ft_adapter
    for m in methods:
        if m.edits_weights:
            models[m.name] = str(rundir / "models" / m.name)
        elif m.kind == "self-reminder":
            sr = SelfReminder(opts.self_reminder_system, opts.self_reminder_suffix)
            models[m.name] = ft_path
            if ft_adapter:
                adapters[m.name] = ft_adapter
            systems[m.name] = sr.system_prompt(opts.system)
            suffixes[m.name] = sr.suffix
    res = evaluate(models, list(opts.eval_harmful), benign_alarming=opts.benign_alarming,
                   utility=list(opts.utility) or None, judge=opts.judge,
                   options=eval_options(opts, rundir, adapters=adapters, systems=systems, suffixes=suffixes,
                                        **eval_update),
                   out=rundir / "eval", reference=list(opts.reference) or None, attack=list(opts.eval_attack) or None)
    return {"eval": res.results}


# -- the table ------------------------------------------------------------------------------------
COST_KEYS = ("wall_s", "peak_rss_mb", "edit_rss_mb", "start_rss_mb", "cuda_peak_mb", "isolated", "resumed")


def assemble_results(opts: CompareOptions, methods: list[Method], evals: dict[str, dict],
                     costs: dict[str, dict], extra: dict | None = None, order: list[str] | None = None,
                     kinds: dict[str, str] | None = None) -> dict[str, Any]:
    """One results dict in the evaluation schema: the entries of every eval folder, in `order`
    (default: references, then --methods); each entry gains `kind` (a method's kind, else
    `kinds[name]`, else "reference"), `preset` and the edit cost (`edit_wall_s`,
    `edit_peak_rss_mb`, ..., null where not measured)."""
    if not evals:
        raise InputError("nothing was evaluated")
    first = evals.get("eval") or next(iter(evals.values()))
    if order is None:
        order = (["aligned", "finetuned"] if opts.with_references else []) + [m.name for m in methods]
    pool: dict[str, dict] = {}
    where: dict[str, str] = {}
    for folder, res in evals.items():
        for n, entry in res["models"].items():
            pool[n] = entry
            where[n] = folder
    missing = [n for n in order if n not in pool]
    if missing:
        raise InputError(f"no evaluation results for {missing}")
    by_name = {m.name: m for m in methods}
    models: dict[str, dict] = {}
    for n in order:
        entry = dict(pool[n])
        m = by_name.get(n)
        entry["kind"] = m.kind if m else (kinds or {}).get(n, "reference")
        entry["preset"] = n if m and m.kind == "fgsn" else None
        entry["eval_folder"] = where[n]
        cost = costs.get(n) or {}
        for k in COST_KEYS:
            entry[f"edit_{k}"] = cost.get(k)
        if m and m.kind == "self-reminder":
            sr = SelfReminder(opts.self_reminder_system, opts.self_reminder_suffix)
            entry.update(method="self-reminder", modified_fraction=0.0, modified_fraction_edited=0.0,
                         inference=sr.describe())
        models[n] = entry
    results = {k: v for k, v in first.items() if k != "models"}
    results["order"] = order
    results["models"] = models
    # paired statistics exist only within an eval folder (the same prompts); keep those of the
    # models tabulated here
    results["paired"] = {key: entry for res in evals.values() for key, entry in (res.get("paired") or {}).items()
                         if entry.get("model") in models and entry.get("reference") in models}
    results["compare"] = {"methods": {m.name: m.kind for m in methods},
                          "presets": {m.name: m.overrides for m in methods if m.kind == "fgsn"},
                          "eval_folders": sorted(evals),
                          "edit_cost": "per-edit subprocess: wall time, getrusage ru_maxrss, CUDA peak"
                          if opts.isolate else "in-process: wall time; peak RSS is the process high-water mark",
                          **(extra or {})}
    return results


def cost_table(results: dict[str, Any]):
    from fgsn.report.tables import Table, modified, num

    rows = []
    for n in results["order"]:
        e = results["models"][n]
        rows.append([n, str(e.get("kind")), modified(e.get("modified_fraction")), num(e.get("edit_wall_s"), 1),
                     num(e.get("edit_peak_rss_mb"), 0), num(e.get("edit_edit_rss_mb"), 0),
                     num(e.get("edit_cuda_peak_mb"), 0),
                     {True: "yes", False: "no", None: "—"}[e.get("edit_resumed")]])
    return Table("Edit cost", ["method", "kind", "params modified", "edit wall (s)", "peak RSS (MB)",
                               "edit RSS (MB)", "GPU peak (MB)", "resumed"], rows,
                 "Measured for the edit alone (inference-time defences and reference models have none). "
                 "peak RSS: the edit process's high-water mark; edit RSS: peak minus memory before the edit.")


def write_report(rundir: Path, results: dict[str, Any], title: str = "fgsn compare report",
                 extra_tables: list | None = None) -> None:
    """results.json, plots/, report.md and report.html of a comparison: the evaluation report plus
    the edit-cost table and `extra_tables`."""
    from fgsn.report import write_report as render

    atomic_write_json(rundir / "results.json", results)
    render(rundir, results, title=title, extra_tables=[cost_table(results), *(extra_tables or [])])


# -- checks and the entry point --------------------------------------------------------------------
def check_inputs(opts: CompareOptions, methods: list[Method]):
    """Everything that can be checked before hours of work: models, prompts, method needs."""
    from fgsn.data.prompts import load_prompts
    from fgsn.data.promptset import concat
    from fgsn.models.trio import open_trio

    for k in NOT_FOR_COMPARE:
        default = CompareOptions.model_fields[k].default
        if getattr(opts, k) not in (default, None, {}, []):
            raise ConfigError(f"option {k!r} has no meaning in fgsn compare (each method writes its own "
                              f"checkpoint under RUNDIR/models, with the evaluation settings compare gives it); "
                              f"remove it")
    if not opts.out:
        raise InputError("fgsn compare needs --out RUNDIR")
    stray = sorted(set(opts.method_options) - {m.name for m in methods if m.edits_weights})
    if stray:
        raise ConfigError(f"--method-options names {stray}, which are not weight-editing methods of --methods")
    kinds = {m.kind for m in methods}
    needs_harmful = sorted(kinds & {"fgsn", "wanda", ACTIVATION_MATCH, "revert", "sgdg"})
    if needs_harmful and not opts.harmful:
        raise InputError(f"{', '.join(needs_harmful)} need locate prompts: --harmful FILE (separate from "
                         "--eval-harmful)")
    needs_task = sorted(kinds & {"fgsn", ACTIVATION_MATCH, "revert", "sgdg", "irr"})
    if needs_task and not opts.task:
        raise InputError(f"{', '.join(needs_task)} need --task prompts (what the fine-tune is for; revert and sgdg "
                         "validate their rollback on them, irr recalibrates on them)")
    if not opts.eval_harmful:
        raise InputError("no evaluation prompts: give --eval-harmful SOURCE")
    trio = open_trio(opts.aligned, opts.finetuned, opts.base, allow_pickle=opts.allow_pickle)
    eval_sets = [load_prompts(s) for s in [*opts.eval_harmful, *opts.eval_attack]]
    if opts.benign_alarming:
        load_prompts(opts.benign_alarming)
    overlap = 0
    if opts.harmful:
        locate = set(concat("locate", [load_prompts(s) for s in opts.harmful]).texts)
        # a jailbreak-wrapped prompt overlaps when its plain request is a locate prompt
        overlap = sum(1 for s in eval_sets for p in s if p.meta.get("plain", p.text) in locate)
        if overlap:
            log.warning("%d evaluation prompts are also locate prompts (--harmful); the comparison is fairer with "
                        "disjoint sets (e.g. ?split=train for locate, ?split=test for evaluation)", overlap)
    return trio, overlap


def run_compare(opts: CompareOptions) -> dict[str, Any]:
    """Run, evaluate and tabulate every method of `opts.methods`; returns the results dict."""
    methods = parse_methods(opts.methods)
    trio, overlap = check_inputs(opts, methods)
    rundir = Path(opts.out).expanduser()
    if rundir.exists() and not rundir.is_dir():
        raise InputError(f"--out {rundir} exists and is not a folder")
    rundir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(rundir / "compare.json", {"options": opts.model_dump(mode="json"),
                                                "methods": [m.name for m in methods]})
    costs = run_edits(opts, methods, rundir, trio.num_layers)
    evals = run_evals(opts, methods, rundir)
    results = assemble_results(opts, methods, evals, costs, {"eval_locate_overlap": overlap})
    write_report(rundir, results)
    return results
