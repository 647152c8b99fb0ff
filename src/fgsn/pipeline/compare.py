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
FGSN ablations are presets (variants in fgsn.pipeline.registry), not new code paths.

Resume: a method whose checkpoint exists, is complete (atomic folders only appear complete) and
was made with the same options is not re-run; evaluation reuses every cached completion and
verdict. --overwrite re-runs every edit.

The loop itself is `Comparison` (check, edit, evaluate, results, report), which `fgsn demo`,
`fgsn sweep` and `fgsn bench` drive as well; `fgsn repair` runs its trials through `run_edit`.

Edit cost: each edit runs in a fresh subprocess (`--isolate`, the default) that reports its own
wall time and peak RSS (VmHWM, the process's own high-water mark; fgsn.memory) and CUDA peak; with
--no-isolate the edit runs in this process and the peak RSS is the process's high-water mark so
far (an upper bound that can hide a later method's smaller peak), marked `isolated: false`.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fgsn.artifacts.manifest import is_complete as manifest_is_complete
from fgsn.artifacts.provenance import selected_on
from fgsn.atomic import atomic_write_json, sha256_file
from fgsn.disk import require_checkpoints
from fgsn.errors import ConfigError, FgsnError, InputError
from fgsn.evaluate.options import EvalOptions
from fgsn.pipeline.options import NOT_FOR_COMPARE, CompareOptions
from fgsn.pipeline.registry import HARMFUL, TASK, Method, option_class, parse_methods
from fgsn.pipeline.worker import measured_run

log = logging.getLogger(__name__)

COST_KEYS = ("wall_s", "peak_rss_mb", "edit_rss_mb", "start_rss_mb", "cuda_peak_mb", "isolated", "resumed")


# -- per-method options ---------------------------------------------------------------------------
def method_options(opts: CompareOptions, m: Method, rundir: Path, num_layers: int) -> dict[str, Any]:
    """The full options of one method's run, as a plain dict (what its manifest records): what
    compare shares with the method (the registry's `from_compare`), the variant's overrides, then
    --method-options for its name on top; written to RUNDIR/models/NAME."""
    own = dict(opts.method_options.get(m.name, {}))
    own.pop("out", None)  # every method writes under RUNDIR/models/NAME
    spec = m.spec
    if spec.from_compare is None:
        raise InputError(f"{m.name} writes no checkpoint")
    return {**spec.from_compare(opts, m.overrides, str(rundir / "models" / m.name), num_layers), **own}


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
    proc = subprocess.Popen([sys.executable, "-m", "fgsn.pipeline.worker", str(job)], stderr=subprocess.PIPE,
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


def input_files_sha256(options: dict[str, Any]) -> str:
    """A sha256 over the contents of the files the options name (prompt and task files; model
    folders and builtin: sources are not files): the same options over an edited prompt file are
    another edit."""
    h = hashlib.sha256()
    for key in sorted(options):
        values = options[key] if isinstance(options[key], list) else [options[key]]
        for v in values:
            if isinstance(v, str) and v and not v.startswith("builtin:") and Path(v).is_file():
                h.update(f"{key}\0{v}\0".encode())
                h.update(bytes.fromhex(sha256_file(v)))
    return h.hexdigest()


def run_edit(name: str, kind: str, options: dict[str, Any], edits_dir: Path, overwrite: bool = False,
             isolate: bool = True) -> dict:
    """Run one edit into options["out"] unless a complete output made with the same options and
    the same input file contents is there (then it is reused, `resumed: true`); returns its
    measured cost (edits_dir/NAME.json, which records the inputs' sha256)."""
    edits_dir.mkdir(parents=True, exist_ok=True)
    out = Path(options["out"])
    stats_path = edits_dir / f"{name}.json"
    digest = input_files_sha256(options)
    prev = json.loads(stats_path.read_text(encoding="utf-8")) if stats_path.is_file() else {}
    if not overwrite and is_complete(out, kind, options):
        if prev.get("inputs_sha256") == digest:
            log.warning("%s: complete output in %s; not re-run", name, out)
            return {**prev, "resumed": True}
        log.warning("%s: the output in %s was made from other input files (or their record is missing); re-run",
                    name, out)
    log.warning("running %s (%s) -> %s", name, kind, out)
    cost = run_isolated(name, kind, options, stats_path) if isolate else measured_run(kind, options, isolated=False)
    cost["resumed"] = False
    cost["inputs_sha256"] = digest
    atomic_write_json(stats_path, cost)
    return cost


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


# -- the loop ---------------------------------------------------------------------------------------
class Comparison:
    """Edit several variants of one base / aligned / fine-tuned trio, evaluate them together with
    one harness, tabulate and report: the loop under `fgsn compare`, `fgsn demo`, `fgsn sweep` and
    `fgsn bench`. Each step can be called on its own, so that a caller does its own work between
    them (the demo's continual run between the edits and the evaluation):

        check()     what can be checked before hours of work: models, prompts, each method's needs
        edit()      every weight-editing variant into RUNDIR/models/NAME (options-checked resume)
        evaluate()  every variant, the references and any extra models in one evaluate() call (RUNDIR/eval)
        results()   one results dict in the evaluation schema, with each edit's cost
        report()    RUNDIR/results.json, report.md, report.html, plots/

    `methods`: the variants (default: `opts.methods` from the registry); a caller may make its own,
    e.g. the sweep's Method("wanda_0.05", "fgsn", {"score": "wanda", "budget": 0.05})."""

    def __init__(self, opts: CompareOptions, methods: list[Method] | None = None):
        self.opts = opts
        self.methods = parse_methods(opts.methods) if methods is None else list(methods)
        self.trio = None
        self.overlap = 0
        self.costs: dict[str, dict] = {}
        self.evals: dict[str, dict] = {}

    @property
    def rundir(self) -> Path:
        if not self.opts.out:
            raise InputError("fgsn compare needs --out RUNDIR")
        return Path(self.opts.out).expanduser()

    def check(self, extra_checkpoints: int = 0):
        """Everything that can be checked before hours of work: models, prompts, method needs, free
        disk for the edits still to run (and `extra_checkpoints` a caller writes beside them: the
        demo's continual steps and repair); returns the opened trio (and counts the evaluation
        prompts that are also locate prompts)."""
        from fgsn.data.prompts import load_prompts
        from fgsn.data.promptset import concat
        from fgsn.models.trio import open_trio

        opts, methods = self.opts, self.methods
        for k in NOT_FOR_COMPARE:
            fields = CompareOptions.model_fields if k in CompareOptions.model_fields else EvalOptions.model_fields
            if opts.value(k) not in (fields[k].default, None, {}, []):
                raise ConfigError(f"option {k!r} has no meaning in fgsn compare (each method writes its own "
                                  f"checkpoint under RUNDIR/models, with the evaluation settings compare gives it); "
                                  f"remove it")
        rundir = self.rundir
        stray = sorted(set(opts.method_options) - {m.name for m in methods if m.edits_weights})
        if stray:
            raise ConfigError(f"--method-options names {stray}, which are not weight-editing methods of --methods")
        needs = {m.kind: m.spec.needs for m in methods}
        needs_harmful = sorted(k for k, n in needs.items() if HARMFUL in n)
        if needs_harmful and not opts.harmful:
            raise InputError(f"{', '.join(needs_harmful)} need locate prompts: --harmful FILE (separate from "
                             "--eval-harmful)")
        needs_task = sorted(k for k, n in needs.items() if TASK in n)
        if needs_task and not opts.task:
            raise InputError(f"{', '.join(needs_task)} need --task prompts (what the fine-tune is for; revert and "
                             "sgdg validate their rollback on them, irr recalibrates on them)")
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
                log.warning("%d evaluation prompts are also locate prompts (--harmful); the comparison is fairer "
                            "with disjoint sets (e.g. ?split=train for locate, ?split=test for evaluation)", overlap)
        if rundir.exists() and not rundir.is_dir():
            raise InputError(f"--out {rundir} exists and is not a folder")
        rundir.mkdir(parents=True, exist_ok=True)
        pending = [m.name for m in methods if m.edits_weights
                   and not is_complete(rundir / "models" / m.name, m.kind,
                                       method_options(opts, m, rundir, trio.num_layers))]
        require_checkpoints(rundir, len(pending) + extra_checkpoints, opts.aligned, "the edits of this run")
        self.trio, self.overlap = trio, overlap
        return trio

    def edit(self) -> dict[str, dict]:
        """Run every weight-editing variant (a complete output made with the same options is reused);
        returns {name: its measured cost}."""
        if self.trio is None:
            self.check()
        for m in self.methods:
            if m.edits_weights:
                self.costs[m.name] = run_edit(m.name, m.kind,
                                              method_options(self.opts, m, self.rundir, self.trio.num_layers),
                                              self.rundir / "edits", self.opts.overwrite, self.opts.isolate)
        return self.costs

    def _finetuned_entry(self) -> tuple[str, str | None]:
        """(model path, adapter) that evaluates the fine-tuned model."""
        from fgsn.models.trio import is_adapter

        if is_adapter(self.opts.finetuned):
            return self.opts.aligned, self.opts.finetuned
        return self.opts.finetuned, None

    def eval_options(self, **update) -> EvalOptions:
        """The eval section (its shared settings defaulting to the edits'), the cache under RUNDIR
        unless given, no report of its own (the comparison writes one), then `update`."""
        ev = self.opts.eval_options()
        return EvalOptions(**{**ev.model_dump(), "cache_dir": ev.cache_dir or str(self.rundir / "cache"),
                              "report": False, **update})

    def evaluate(self, extra_models: dict[str, str] | None = None) -> dict[str, dict]:
        """Evaluate every variant in one evaluate() call: edited checkpoints as they are, an
        inference-time method (Self-Reminder) as the fine-tuned model with its own system prompt and
        user-turn suffix (the judge sees the prompts as given); `extra_models` ({name: checkpoint})
        are evaluated first, alongside, with the options' eval section. Returns {eval folder name: results}."""
        from fgsn.evaluate import evaluate

        opts = self.opts
        system = opts.eval_options().system
        ft_path, ft_adapter = self._finetuned_entry()
        models: dict[str, str] = dict(extra_models or {})
        adapters: dict[str, str] = {}
        systems: dict[str, str] = {}
        suffixes: dict[str, str] = {}
        if opts.with_references:
            models["aligned"] = opts.aligned
            models["finetuned"] = ft_path
            if ft_adapter:
                adapters["finetuned"] = ft_adapter
        for m in self.methods:
            if m.edits_weights:
                models[m.name] = str(self.rundir / "models" / m.name)
                continue
            setting = m.spec.setting(opts)
            models[m.name] = ft_path
            if ft_adapter:
                adapters[m.name] = ft_adapter
            systems[m.name] = setting.system_prompt(system)
            suffixes[m.name] = setting.suffix
        res = evaluate(models, list(opts.eval_harmful), benign_alarming=opts.benign_alarming,
                       utility=list(opts.utility) or None, judge=opts.judge,
                       options=self.eval_options(adapters=adapters, systems=systems, suffixes=suffixes),
                       out=self.rundir / "eval", reference=list(opts.reference) or None,
                       attack=list(opts.eval_attack) or None)
        self.evals = {"eval": res.results}
        return self.evals

    def results(self, extra: dict | None = None, order: list[str] | None = None,
                kinds: dict[str, str] | None = None) -> dict[str, Any]:
        """One results dict in the evaluation schema: the entries of every eval folder, in `order`
        (default: references, then the variants); each entry gains `kind` (a variant's method, else
        `kinds[name]`, else "reference"), `preset` and the edit cost (`edit_wall_s`,
        `edit_peak_rss_mb`, ..., null where not measured)."""
        opts, methods, evals, costs = self.opts, self.methods, self.evals, self.costs
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
            entry["selected_on"] = selected_on(entry["path"]) if entry.get("path") else None
            cost = costs.get(n) or {}
            for k in COST_KEYS:
                entry[f"edit_{k}"] = cost.get(k)
            if m and not m.edits_weights:
                entry.update(method=m.kind, modified_fraction=0.0, modified_fraction_edited=0.0,
                             inference=m.spec.setting(opts).describe())
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
                              "edit_cost": "per-edit subprocess: wall time, peak RSS of its own address space (VmHWM), CUDA peak"
                              if opts.isolate else "in-process: wall time; peak RSS is the process high-water mark",
                              "eval_locate_overlap": self.overlap, **(extra or {})}
        return results

    def report(self, results: dict[str, Any], title: str = "fgsn compare report",
               extra_tables: list | None = None) -> None:
        """results.json, plots/, report.md and report.html of a comparison: the evaluation report
        plus the edit-cost table and `extra_tables`."""
        from fgsn.report import write_report

        atomic_write_json(self.rundir / "results.json", results)
        write_report(self.rundir, results, title=title, extra_tables=[cost_table(results), *(extra_tables or [])])

    def run(self, title: str = "fgsn compare report") -> dict[str, Any]:
        """check (unless done), edit, evaluate, tabulate and report; returns the results dict."""
        if self.trio is None:
            self.check()
        self.edit()
        self.evaluate()
        results = self.results()
        self.report(results, title=title)
        return results


def run_compare(opts: CompareOptions) -> dict[str, Any]:
    """Run, evaluate and tabulate every method of `opts.methods`; returns the results dict."""
    cmp = Comparison(opts)
    cmp.check()
    atomic_write_json(cmp.rundir / "compare.json", {"options": opts.model_dump(mode="json"),
                                                    "methods": [m.name for m in cmp.methods]})
    return cmp.run()
