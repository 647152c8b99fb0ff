"""`fgsn sweep`: the safety / utility / sparsity frontier.

For every score and every parameter budget (share of the edited modules' weights), write the
FGSN-repaired checkpoint, evaluate all of them side by side with the same harness (plus the
aligned and fine-tuned references and, where installed, whole-module baselines such as SafeLoRA
and RESTA), and plot ASR, over-refusal, utility and reference-answer NLL against the share of
parameters modified (`frontier.png`, `sweep.json`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from pydantic import Field, field_validator

from fgsn.config import Options, add_option_flags, options_from_args
from fgsn.evaluate.options import MODEL_WORKERS_HELP

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
    out: str = "runs/sweep"

    @field_validator("baselines", "utility", "reference", mode="before")
    @classmethod
    def _none_list(cls, v):
        return [] if v in ("none", ["none"]) else v

    @field_validator("benign_alarming", mode="before")
    @classmethod
    def _none_str(cls, v):
        return None if v == "none" else v


def _baseline_points(opts: SweepOptions, models_dir: Path) -> dict[str, str]:
    """Whole-module baselines from fgsn.baselines, when that package provides them; a kept
    checkpoint is reused only when it was made with these options."""
    try:
        from fgsn.baselines.methods import option_class, runner
    except ImportError:
        log.warning("fgsn.baselines is not available; the frontier has no baseline points")
        return {}
    from fgsn.artifacts.manifest import is_complete
    from fgsn.config import build_options

    out = {}
    for name in opts.baselines:
        folder = models_dir / name
        own = {"safelora": {"threshold": opts.safelora_threshold}, "resta": {"beta": opts.resta_beta},
               "irr": {"task": opts.task, "device": opts.device},
               "sgdg": {"harmful": opts.harmful, "task": opts.task, "device": opts.device}}.get(name, {})
        bopts = build_options(option_class(name), dict(base=opts.base, aligned=opts.aligned, finetuned=opts.finetuned,
                                                       out=str(folder), overwrite=True, **own), f"{name} options")
        if not is_complete(folder, name, bopts):
            runner(name)(bopts)
        out[name] = str(folder)
    return out


def run_sweep(opts: SweepOptions) -> dict:
    from fgsn.api import evaluate
    from fgsn.artifacts.manifest import is_complete
    from fgsn.edit.options import ProjectOptions
    from fgsn.evaluate import EvalOptions
    from fgsn.pipeline.project import run_project

    out = Path(opts.out)
    models_dir = out / "models"
    models: dict[str, str] = {"aligned": opts.aligned, "finetuned": opts.finetuned}
    points: list[dict] = []
    for score in opts.scores:
        for budget in opts.budgets:
            name = f"{score}_{budget:g}"
            folder = models_dir / name
            popts = ProjectOptions(
                base=opts.base, aligned=opts.aligned, finetuned=opts.finetuned, harmful=opts.harmful,
                task=opts.task, benign=opts.benign, layers=opts.layers, p=opts.p, budget=budget, score=score,
                granularity="neuron" if score == "contrast" else opts.granularity, projector=opts.projector,
                device=opts.device, out=str(folder), overwrite=True)
            if not is_complete(folder, "fgsn", popts):  # a kept checkpoint made with other options is redone
                run_project(popts)
            models[name] = str(folder)
            points.append({"name": name, "score": score, "budget": budget})
    baselines = _baseline_points(opts, models_dir)
    models.update(baselines)
    extra = {"utility_instruction": opts.utility_instruction} if opts.utility_instruction is not None else {}
    eval_opts = EvalOptions(max_new_tokens=opts.max_new_tokens, batch_size=opts.batch_size, dtype=opts.eval_dtype,
                            utility_limit=opts.utility_limit, device=opts.device, cache_dir=opts.cache_dir,
                            model_workers=opts.model_workers, **extra)
    evaluate(models, harmful=opts.eval_harmful, benign_alarming=opts.benign_alarming, utility=opts.utility or None,
             reference=opts.reference or None, options=eval_opts, out=out)
    results = json.loads((out / "results.json").read_text())["models"]
    for pt in points:
        r = results[pt["name"]]
        man = json.loads((Path(models[pt["name"]]) / "fgsn-manifest.json").read_text())
        pt.update({k: r.get(k) for k, _ in METRICS},
                  modified_fraction=man["modified_fraction"], modified_fraction_edited=man["modified_fraction_edited"])
    refs = {k: {m: results[k].get(m) for m, _ in METRICS} for k in ("aligned", "finetuned")}
    base_pts = {}
    for k in baselines:
        man = json.loads((Path(models[k]) / "fgsn-manifest.json").read_text())
        base_pts[k] = {**{m: results[k].get(m) for m, _ in METRICS}, "modified_fraction": man.get("modified_fraction"),
                       "modified_fraction_edited": man.get("modified_fraction_edited")}
    doc = {"points": points, "references": refs, "baselines": base_pts, "options": opts.model_dump(mode="json")}
    from fgsn.atomic import atomic_write_json

    atomic_write_json(out / "sweep.json", doc)
    plot_frontier(doc, out / "frontier.png")
    if not opts.keep_checkpoints:
        for pt in points:
            shutil.rmtree(models[pt["name"]], ignore_errors=True)
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


def _handler(args: argparse.Namespace) -> int:
    run_sweep(options_from_args(SweepOptions, args))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="trace ASR / over-refusal / utility / NLL against the share of parameters "
                                     "modified, for every score, with baselines as points")
    p.add_argument("--config", help="YAML file with any of these options (flags win)")
    add_option_flags(p, SweepOptions)
    p.set_defaults(func=_handler)
