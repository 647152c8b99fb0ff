"""`fgsn sweep`: the safety / utility / sparsity frontier.

For every score and every parameter budget (share of the edited modules' weights), write the
FGSN-repaired checkpoint, evaluate all of them side by side with the same harness (plus the
aligned and fine-tuned references and, where installed, whole-module baselines such as SafeLoRA
and RESTA), and plot ASR, over-refusal, utility and reference-answer NLL against the share of
parameters modified (`frontier.png`, `sweep.json`).

It is a comparison (fgsn.pipeline.compare.Comparison) whose variants are the (score, budget)
points, so it resumes as `fgsn compare` does: a kept checkpoint (--keep-checkpoints) made with the
options of this sweep is reused, one made with other options is recomputed. Layout of --out: as
`fgsn compare`'s (models/NAME, edits/, eval/, cache/, results.json, report.md, report.html,
plots/), plus sweep.json and frontier.png.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pydantic import Field, field_validator

from fgsn.config import Options
from fgsn.evaluate.options import MODEL_WORKERS_HELP
from fgsn.pipeline.compare import Comparison
from fgsn.pipeline.options import CompareOptions
from fgsn.pipeline.registry import Method, parse_methods

log = logging.getLogger(__name__)

METRICS = (("asr", "attack success rate"), ("over_refusal", "over-refusal"), ("utility", "task utility"),
           ("nll", "reference-answer NLL"))


class SweepOptions(Options):
    base: str
    aligned: str
    finetuned: str
    harmful: list[str]
    task: list[str]
    benign: list[str] | None = None
    layers: str | None = None
    p: float = Field(0.1, ge=0, le=1)
    granularity: str = "weight"
    projector: str = "safelora"
    scores: list[str] = Field(default_factory=lambda: ["wanda", "wanda-delta", "offsafety", "snip", "random"])
    budgets: list[float] = Field(default_factory=lambda: [0.005, 0.01, 0.02, 0.05, 0.1, 0.2])
    baselines: list[str] = Field(default_factory=lambda: ["safelora", "resta"])
    safelora_threshold: float = Field(0.5, ge=-1, le=1, description="SafeLoRA: project modules with cos <= this")
    resta_beta: float = Field(0.5, ge=0, description="RESTA: weight of the safety vector aligned - base")
    eval_harmful: list[str] = Field(default_factory=lambda: ["builtin:harmbench?limit=50",
                                                             "builtin:strongreject?limit=50"])
    benign_alarming: str | None = "builtin:alarming?limit=40"
    utility: list[str] = Field(default_factory=lambda: ["basic_arithmetic"])
    reference: list[str] = Field(default_factory=list)
    max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(16, ge=1)
    utility_limit: int = Field(20, ge=1)
    utility_instruction: str | None = Field(None, description="appended to utility prompts (default: fgsn eval's)")
    eval_dtype: str | None = Field(None, description="dtype of the evaluation (auto, fast, bfloat16...); the "
                                                     "edits always read and write the checkpoints' own dtype")
    device: str = "auto"
    model_workers: int = Field(1, ge=1, description=MODEL_WORKERS_HELP)
    cache_dir: str | None = Field(None, description="completion cache (share one with an earlier eval or demo "
                                                   "run to reuse its completions of the same models)")
    keep_checkpoints: bool = False
    isolate: bool = Field(False, description="run each edit in its own process (its wall time and peak memory "
                                             "measured apart, at a process start each)")
    out: str = "runs/sweep"

    @field_validator("baselines", "utility", "reference", mode="before")
    @classmethod
    def _none_list(cls, v):
        return [] if v in ("none", ["none"]) else v

    @field_validator("benign_alarming", mode="before")
    @classmethod
    def _none_str(cls, v):
        return None if v == "none" else v


def sweep_methods(opts: SweepOptions) -> list[Method]:
    """The variants of the sweep: one FGSN projection per (score, budget), then the baselines."""
    points = [Method(f"{score}_{budget:g}", "fgsn",
                     {"score": score, "budget": budget,
                      "granularity": "neuron" if score == "contrast" else opts.granularity})
              for score in opts.scores for budget in opts.budgets]
    return points + (parse_methods(opts.baselines) if opts.baselines else [])


def sweep_comparison(opts: SweepOptions) -> Comparison:
    """The comparison a sweep runs: the FGSN options and the baselines' from the sweep's, and its
    evaluation settings (the probes keep their own batch size; --batch-size is the generation's)."""
    methods = sweep_methods(opts)
    extra = {"utility_instruction": opts.utility_instruction} if opts.utility_instruction is not None else {}
    copts = CompareOptions(
        base=opts.base, aligned=opts.aligned, finetuned=opts.finetuned, harmful=opts.harmful, task=opts.task,
        benign=opts.benign, layers=opts.layers, p=opts.p, projector=opts.projector, granularity=opts.granularity,
        device=opts.device, methods=[m.name for m in methods], with_references=True,
        eval_harmful=opts.eval_harmful, benign_alarming=opts.benign_alarming, utility=opts.utility,
        reference=opts.reference, isolate=opts.isolate, out=opts.out,
        eval={"max_new_tokens": opts.max_new_tokens, "utility_limit": opts.utility_limit, "dtype": opts.eval_dtype,
              "batch_size": opts.batch_size, "model_workers": opts.model_workers, "cache_dir": opts.cache_dir,
              **extra},
        safelora={"threshold": opts.safelora_threshold}, resta={"beta": opts.resta_beta})
    return Comparison(copts, methods)


def run_sweep(opts: SweepOptions) -> dict:
    from fgsn.artifacts.manifest import read_manifest

    out = Path(opts.out)
    cmp = sweep_comparison(opts)
    cmp.check()
    cmp.edit()
    cmp.evaluate()
    results = cmp.results()
    cmp.report(results, title="fgsn sweep report")
    models = results["models"]
    n_points = len(opts.scores) * len(opts.budgets)  # sweep_methods: the points first, then the baselines
    points: list[dict] = []
    baselines = {}
    for i, m in enumerate(cmp.methods):
        r = models[m.name]
        man = read_manifest(r.get("path") or "") or {}
        figures = {**{k: r.get(k) for k, _ in METRICS}, "modified_fraction": man.get("modified_fraction"),
                   "modified_fraction_edited": man.get("modified_fraction_edited")}
        if i < n_points:
            points.append({"name": m.name, "score": m.overrides["score"], "budget": m.overrides["budget"], **figures})
        else:
            baselines[m.name] = figures
    refs = {k: {m: models[k].get(m) for m, _ in METRICS} for k in ("aligned", "finetuned")}
    doc = {"points": points, "references": refs, "baselines": baselines, "options": opts.model_dump(mode="json")}
    from fgsn.atomic import atomic_write_json

    atomic_write_json(out / "sweep.json", doc)
    plot_frontier(doc, out / "frontier.png")
    if not opts.keep_checkpoints:
        for pt in points:
            shutil.rmtree(out / "models" / pt["name"], ignore_errors=True)
    print(format_sweep_table(doc))
    print(f"\nfrontier: {out / 'frontier.png'}   data: {out / 'sweep.json'}   report: {out / 'report.html'}")
    return doc


def format_sweep_table(doc: dict) -> str:
    def f(x, pct=False):
        return "-" if x is None else (f"{100 * x:.1f}%" if pct else f"{x:.3f}")

    lines = ["| model | modified (of edited modules) | ASR | over-refusal | utility | NLL |", "|---|---|---|---|---|---|"]
    for name, r in doc["references"].items():
        lines.append(f"| {name} | - | {f(r['asr'])} | {f(r['over_refusal'])} | {f(r['utility'])} | {f(r['nll'])} |")
    for name, r in doc["baselines"].items():
        lines.append(f"| {name} | {f(r.get('modified_fraction_edited'), True)} | {f(r['asr'])} | "
                     f"{f(r['over_refusal'])} | {f(r['utility'])} | {f(r['nll'])} |")
    for r in doc["points"]:
        lines.append(f"| {r['name']} | {f(r['modified_fraction_edited'], True)} | {f(r['asr'])} | "
                     f"{f(r['over_refusal'])} | {f(r['utility'])} | {f(r['nll'])} |")
    return "\n".join(lines)


def plot_frontier(doc: dict, path: Path) -> None:
    """frontier.png, drawn on a canvas of its own (pyplot and the caller's backend left alone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 7.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True)
    scores = list(dict.fromkeys(p["score"] for p in doc["points"]))
    for ax, (metric, label) in zip(axes.flat, METRICS, strict=True):
        for score in scores:
            pts = sorted((p for p in doc["points"] if p["score"] == score and p[metric] is not None),
                         key=lambda p: p["modified_fraction_edited"])
            if pts:
                ax.plot([100 * p["modified_fraction_edited"] for p in pts], [p[metric] for p in pts], marker="o",
                        label=score)
        for name, r in doc["baselines"].items():
            if r.get(metric) is not None and r.get("modified_fraction_edited") is not None:
                ax.scatter([100 * r["modified_fraction_edited"]], [r[metric]], marker="*", s=140, zorder=5,
                           label=name)
        for name, style in (("aligned", "--"), ("finetuned", ":")):
            v = doc["references"].get(name, {}).get(metric)
            if v is not None:
                ax.axhline(v, color="gray", linestyle=style, label=name)
        ax.set_title(label)
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("parameters modified, % of the edited modules (log)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
