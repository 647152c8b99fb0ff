"""`fgsn demo`: the whole story on the SmolLM2 model organism, on a laptop CPU.

1. build (or reuse) the organism: base SmolLM2-135M-Instruct -> aligned (safety SFT) ->
   fine-tuned (benign maths/instructions, optionally a poisoned share);
2. repair the fine-tuned model with FGSN (locating on AdvBench train prompts and the fine-tune's
   task data) and with the baselines of `fgsn compare` (SafeLoRA, RESTA, Wanda; Self-Reminder at
   inference), each edit measured in its own process; then `fgsn repair`; then activation
   matching continually over three harm dimensions, one after another, on one ledger (each
   step the joint edit of the dimensions so far; `--continual-editor fgsn`: the paper's FGSN);
3. evaluate every model on prompts never located on (HarmBench, StrongREJECT), the
   harmless-but-alarming set, held-out task problems (accuracy) and held-out worked answers
   (NLL); write results.json, report.md, report.html and print the table.

Layout of --out: data/ (the prompt files written here), models/NAME (checkpoints + manifests),
models/ledger, edits/NAME.json (edit cost), eval/ (records), cache/ (completions), results.json,
report.md, report.html, plots/. A rerun reuses finished edits and cached completions.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from fgsn.atomic import read_jsonl
from fgsn.config import Options
from fgsn.pipeline.compare import Comparison
from fgsn.pipeline.options import CompareOptions
from fgsn.pipeline.registry import parse_methods
from fgsn.pipeline.repair import planned_trials

log = logging.getLogger(__name__)

# AdvBench (PyRIT labels) dimensions with the most training prompts, added one after another.
CONTINUAL = ["Physical", "Financial and Business", "Autonomy"]
BASELINES = ["safelora", "resta", "wanda", "self-reminder"]
FGSN_OVERRIDES = ("score", "q", "p", "budget", "granularity", "projector", "layers")


# what the demo's repair searches on besides AdvBench train (the evaluation's prompts are left out)
REPAIR_HARMFUL = ["builtin:harmbench-standard", "builtin:strongreject?sample=150", "builtin:harmbench-val-standard"]


class DemoOptions(Options):
    out: str = "runs/demo"
    reduced: bool = Field(False, description="the small, fast organism recipe (for tests)")
    organism_config: str | None = Field(None, description="YAML recipe for the organism")
    finetuned: Literal["full", "lora"] = "full"
    locate_limit: int = Field(64, ge=2, description="AdvBench train prompts to locate on")
    task_limit: int = Field(64, ge=2, description="fine-tuning task prompts to locate on")
    max_length: int = Field(256, ge=8, description="probe prompts are cut to this many tokens")
    continual: list[str] = Field(default_factory=lambda: list(CONTINUAL),
                                 description="AdvBench harm dimensions repaired one after another on one ledger")
    continual_editor: Literal["fgsn", "activation-match"] = Field(
        "activation-match", description="editor of the continual run: activation-match (the repair's editor, ridge "
                                        "form at --continual-lam, earlier dimensions kept as --continual-old-target "
                                        "says) or fgsn (the paper's projection, on the safety layers)")
    continual_lam: float = Field(1.0, ge=0, description="with --continual-editor activation-match: its lambda")
    continual_old_target: Literal["joint", "aligned", "current"] = Field(
        "joint", description="with --continual-editor activation-match: `fgsn activation-match --old-target` of each "
                             "step (joint: every step is the one-shot edit of the dimensions so far)")
    baselines: list[str] = Field(default_factory=lambda: list(BASELINES),
                                 description="methods of `fgsn compare` run next to fgsn (none: no baselines)")
    # FGSN settings (see `fgsn project --help`); unset: project's defaults
    score: str | None = None
    q: float | None = None
    p: float | None = None
    budget: float | None = None
    granularity: str | None = None
    projector: str | None = None
    layers: str | None = None
    # evaluation
    eval_limit: int = Field(30, ge=1, description="prompts per held-out harmful set")
    alarming_limit: int = Field(30, ge=1)
    utility_limit: int = Field(10, ge=1, description="held-out arithmetic problems (accuracy)")
    reference_limit: int = Field(8, ge=1, description="held-out worked answers per task kind (NLL)")
    max_new_tokens: int = Field(24, ge=1, description="enough for the keyword judge here: cutting a 32-token run's "
                                                       "1100 completions to 24 changes no verdict "
                                                       "(benchmarks/judge_tokens.py)")
    batch_size: int = Field(32, ge=1, description="prompts per forward pass when locating")
    eval_batch_size: int = Field(64, ge=1, description="prompts per generation batch")
    eval_workers: int | None = Field(None, ge=1, description="models evaluated at once (default: one per GPU; "
                                                             "on CPU 2: 1.3x for this small model)")
    locate_dtype: str = Field("fast", description="dtype of the probes of FGSN and Wanda (statistics are summed in "
                                                  "float64 either way; the projection is float32): fast = bfloat16 "
                                                  "where native: 1.7x faster here, masks 92% the float32 ones")
    eval_dtype: str = Field("fast", description="dtype of the evaluation: fast = bfloat16 where the hardware "
                                                "has it natively, else float32")
    repair: bool = Field(True, description="also run `fgsn repair` with its defaults (its own search on AdvBench "
                                           "train and the task data, never the evaluation prompts): model `repair`")
    repair_families: list[str] | None = Field(None, description="edit families of the repair search (default: "
                                                                "fgsn repair's)")
    repair_limit: int = Field(260, ge=6, description="AdvBench train prompts the repair splits into fit / search / "
                                                     "check (260: all of them; those of the safety SFT: fit only)")
    repair_harmful: list[str] = Field(default_factory=lambda: list(REPAIR_HARMFUL), description=(
        "more harmful prompts for the repair's splits: the evaluation sets' distributions, never their prompts "
        "(left out by text). AdvBench alone cannot score a repair here: the fine-tune hardly erodes the refusals "
        "of AdvBench-style prompts"))
    device: str = Field("auto", description="where the organism is trained and the probes and the evaluation run: "
                                            "auto (a CUDA GPU when there is one, else cpu), cpu, cuda or cuda:N")


# the repair's held-out task examples: per kind (arithmetic, word problems), drawn with other seeds
HELDOUT_VALIDATION = 40
VALIDATION_SALT = 100


def eval_harmful_sets(opts: DemoOptions) -> list[str]:
    """The held-out harmful sets the demo evaluates on (HarmBench standard behaviours: the contextual
    ones carry page-long contexts, too slow on a CPU)."""
    return [f"builtin:harmbench-standard?sample={opts.eval_limit}", f"builtin:strongreject?sample={opts.eval_limit}"]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    from fgsn.atomic import atomic_write_jsonl

    atomic_write_jsonl(path, rows)
    return path


def task_files(organism, recipe, out: Path, opts: DemoOptions) -> dict[str, Path]:
    """The prompt files of the run: `task` (the first `task_limit` of the fine-tune's own examples,
    poison removed: what locate protects), `task_all` (all of them: what `fgsn repair` splits into
    fit / search / check), `utility` (held-out arithmetic, answer = the number), `reference`
    (held-out arithmetic and word problems with worked answers, for the NLL) and, when the fine-tune
    has maths, `task_heldout` (another held-out draw of those, none of them trained on or
    evaluated: where `fgsn repair` scores the task, as a user scores on a validation split)."""
    from fgsn.evaluate.utility import extract_answer
    from fgsn.models.loading import load_tokenizer
    from fgsn.organism.data import heldout_task

    def rows(name: str) -> list[dict]:
        return read_jsonl(organism.root / "data" / name)

    finetune, aligned = rows("finetune.jsonl"), rows("aligned_sft.jsonl")
    examples = [{"prompt": ex["prompt"], "answer": ex["answer"], "category": ex.get("kind", "task")}
                for ex in finetune if ex.get("kind") != "poison"]
    tok = load_tokenizer(organism.base)
    held = heldout_task(recipe, tok, max(opts.utility_limit, opts.reference_limit),
                        opts.reference_limit, exclude={ex["prompt"] for ex in finetune + aligned})
    arith = [ex for ex in held if ex.kind == "arithmetic"]
    final = [extract_answer(ex.answer, numeric=True) for ex in arith]
    ref = arith[:opts.reference_limit] + [ex for ex in held if ex.kind == "gsm"]
    d = out / "data"
    validation = {}
    if recipe.ft_gsm_share + recipe.ft_arithmetic_share > 0:
        taken = {ex["prompt"] for ex in finetune + aligned} | {ex.prompt for ex in held}
        val = heldout_task(recipe, tok, HELDOUT_VALIDATION, HELDOUT_VALIDATION,
                           exclude=taken, salt=VALIDATION_SALT)
        validation["task_heldout"] = _write_jsonl(d / "task-heldout-validation.jsonl", [
            {"prompt": ex.prompt, "answer": ex.answer, "category": ex.kind} for ex in val])
    return {**validation, "task": _write_jsonl(d / "task.jsonl", examples[:opts.task_limit]),
            "task_all": _write_jsonl(d / "task-all.jsonl", examples),
            "utility": _write_jsonl(d / "utility-heldout.jsonl",
                                    [{"prompt": ex.prompt, "answer": a, "category": "arithmetic"}
                                     for ex, a in zip(arith[:opts.utility_limit], final, strict=False)]),
            "reference": _write_jsonl(d / "reference-heldout.jsonl",
                                      [{"prompt": ex.prompt, "answer": ex.answer, "category": ex.kind}
                                       for ex in ref])}


def run_continual(opts: DemoOptions, common: dict, finetuned: str, layers: str, models_dir: Path) -> dict[str, str]:
    """The continual editor over opts.continual, one harm dimension after another on one ledger
    (models `fgsn-stepN`, or `am-stepN` for activation matching); FGSN's steps reuse the safety
    layers of the all-harm run (a property of the aligned model)."""
    from fgsn.edit.options import ProjectOptions
    from fgsn.pipeline.project import run_project

    ledger = models_dir / "ledger"
    if ledger.exists():
        shutil.rmtree(ledger)  # the continual run starts from the fine-tuned model each time
    steps: dict[str, str] = {}
    current = finetuned
    prefix = "fgsn" if opts.continual_editor == "fgsn" else "am"
    for i, cat in enumerate(opts.continual, 1):
        each = dict(finetuned=current, category=cat, ledger=str(ledger), overwrite=True,
                    harmful=[f"builtin:advbench?split=train&category={cat}"], out=str(models_dir / f"{prefix}-step{i}"))
        if opts.continual_editor == "fgsn":
            step = run_project(ProjectOptions(**{**common, "layers": layers}, **each))
        else:
            from fgsn.edit.activation_match_run import run_activation_match
            from fgsn.edit.options import ActivationMatchOptions

            plain = {k: common[k] for k in ("base", "aligned", "task", "device", "dtype", "max_length", "batch_size")}
            # exact_rank off: the change's numerical rank per module (an eigendecomposition each, 20 s a
            # step on 2 cores) is for the manifest only; the bound min(rows, in, harmful tokens) stays
            step = run_activation_match(ActivationMatchOptions(**plain, **each, lam=opts.continual_lam,
                                                               old_target=opts.continual_old_target,
                                                               exact_rank=False))
        c = step.manifest["categories"][cat]
        size = f", ||change|| {c['change_norm']:.3g}" if c.get("change_norm") is not None else ""
        print(f"  step {i} {cat}: {c['masked']:,} new weights ({100 * c['modified_fraction']:.3f}%), "
              f"{c['overlap']:,} already edited{size}")
        steps[f"{prefix}-step{i}"] = current = str(step.out)
    return steps


def continual_table(results: dict, steps: dict[str, str]):
    from fgsn.artifacts.manifest import read_manifest
    from fgsn.report.tables import Table, pct

    rows = []
    for name, path in steps.items():
        man = read_manifest(path) or {}
        for cat, c in (man.get("categories") or {}).items():
            if c.get("masked") is None:
                continue
            size = c.get("change_norm")
            rows.append([name, cat, f"{c['masked']:,}", f"{c.get('overlap', 0):,}",
                         "—" if size is None else f"{size:.3g}", pct(results["models"][name].get("asr"))])
    return Table("Continual repair", ["model", "dimension added", "new weights", "already edited",
                                      "||change|| (activation-match)", "ASR after the step"], rows,
                 "Each step repairs one AdvBench harm dimension through the ledger without undoing earlier steps: "
                 "FGSN projects only weights no earlier step projected; activation matching keeps the outputs "
                 "earlier steps restored. A later dimension needing less new change is the point of it.")


def trained_refusals_file(root: Path, out: Path) -> Path:
    """The harmful prompts of the organism's safety SFT (kind `refusal`), for `fgsn repair
    --fit-only`: the aligned model was trained to refuse exactly these, and its refusals of them
    survive the fine-tune, so scored they would make every trial look like a repair."""
    rows = read_jsonl(root / "data" / "aligned_sft.jsonl")
    return _write_jsonl(out / "data" / "aligned-refusals.jsonl",
                        [{"prompt": r["prompt"]} for r in rows if r.get("kind") == "refusal"])


def demo_repair_values(opts: DemoOptions, org, finetuned: str, files: dict[str, Path], eval_harmful: list[str],
                       out: Path) -> dict:
    """The option values of `fgsn repair` with its defaults on the demo's trio: harmful prompts from
    AdvBench train (those of the safety SFT for fitting only) and `repair_harmful` without the
    evaluation's prompts, the fine-tune's task examples."""
    return dict(
        base=str(org.base), aligned=str(org.aligned), finetuned=finetuned,
        harmful=[f"builtin:advbench?split=train&limit={opts.repair_limit}", *opts.repair_harmful],
        task=[str(files["task_all"])], task_heldout=[str(f) for f in [files.get("task_heldout")] if f],
        fit_only=[str(trained_refusals_file(org.root, out))], out=str(out / "models" / "repair"),
        eval_harmful=list(eval_harmful), device=opts.device,
        dtype=opts.locate_dtype, max_new_tokens=opts.max_new_tokens, batch_size=opts.batch_size,
        eval_batch_size=opts.eval_batch_size, max_length=opts.max_length, overwrite=True,
        **({"families": opts.repair_families} if opts.repair_families else {}))


def run_demo_repair(opts: DemoOptions, org, finetuned: str, files: dict[str, Path], eval_harmful: list[str],
                    out: Path) -> Path:
    """`fgsn repair` at demo_repair_values; reused when a finished repair with the same options is there."""
    from fgsn.pipeline.repair import repair_or_reuse

    return repair_or_reuse(demo_repair_values(opts, org, finetuned, files, eval_harmful, out))


def run_demo(opts: DemoOptions) -> dict:
    from fgsn.artifacts.manifest import read_manifest
    from fgsn.evaluate.parallel import default_model_workers
    from fgsn.organism import build_organism
    from fgsn.organism.recipe import load_recipe
    from fgsn.report.tables import summary_text

    t0 = time.time()
    out = Path(opts.out).expanduser().absolute()  # as in the bench: resumes match however --out is spelt
    out.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(opts.organism_config, opts.reduced)

    def stage(text: str) -> None:
        print(f"[{time.time() - t0:5.0f} s] {text}", flush=True)

    stage("[1/4] model organism (built once, then cached)")
    org = build_organism(recipe, device=opts.device)
    finetuned = str(org.finetuned_full if opts.finetuned == "full" else org.finetuned_lora)
    files = task_files(org, recipe, out, opts)
    fgsn_over = {k: getattr(opts, k) for k in FGSN_OVERRIDES if getattr(opts, k) is not None}
    harmful = f"builtin:advbench?split=train&limit={opts.locate_limit}"
    methods = parse_methods(["fgsn", *(b for b in opts.baselines if b != "none")])
    copts = CompareOptions(
        base=str(org.base), aligned=str(org.aligned), finetuned=finetuned, harmful=[harmful],
        task=[str(files["task"])], methods=[m.name for m in methods], with_references=True,
        device=opts.device, dtype=opts.locate_dtype, max_length=opts.max_length, out=str(out), **fgsn_over,
        eval_harmful=eval_harmful_sets(opts),
        benign_alarming=f"builtin:alarming?sample={opts.alarming_limit}", utility=[str(files["utility"])],
        reference=[str(files["reference"])], batch_size=opts.batch_size,
        eval={"utility_instruction": "", "utility_limit": opts.utility_limit, "max_new_tokens": opts.max_new_tokens,
              "dtype": opts.eval_dtype, "batch_size": opts.eval_batch_size,
              "model_workers": opts.eval_workers or default_model_workers(opts.device)})
    stage("held-out task files written; checking the inputs")
    cmp = Comparison(copts, methods)
    cmp.check(extra_checkpoints=len(opts.continual) + (planned_trials(opts.repair_families) if opts.repair else 0))
    stage(f"[2/4] repair: {', '.join(m.name for m in methods)} (each edit in its own process)")
    cmp.edit()
    fgsn_dir = out / "models" / "fgsn"
    layers = opts.layers or ",".join(str(x) for x in (read_manifest(fgsn_dir) or {})["layers"])
    where = f"safety layers {layers}" if opts.continual_editor == "fgsn" else f"lambda {opts.continual_lam}"
    stage(f"[3/4] {opts.continual_editor} continually over {', '.join(opts.continual)} ({where})")
    common = dict(base=str(org.base), aligned=str(org.aligned), task=[str(files["task"])], device=opts.device,
                  dtype=opts.locate_dtype,
                  max_length=opts.max_length, batch_size=opts.batch_size, **fgsn_over)
    steps = run_continual(opts, common, finetuned, layers, out / "models") if opts.continual else {}
    repaired = {}
    if opts.repair:
        stage("[3b/4] fgsn repair: its own search for a repair that meets the target")
        repaired = {"repair": str(run_demo_repair(opts, org, finetuned, files, copts.eval_harmful, out))}
    stage("[4/4] evaluation on held-out prompts (HarmBench, StrongREJECT), over-refusal, task utility and NLL")
    cmp.evaluate(extra_models={"base": str(org.base), **steps, **repaired})
    order = ["base", "aligned", "finetuned", *repaired, "fgsn", *steps, *(m.name for m in methods if m.name != "fgsn")]
    results = cmp.results(order=order, kinds={"base": "reference", **dict.fromkeys(steps, f"{opts.continual_editor}-continual"),
                                              **dict.fromkeys(repaired, "repair")})
    results["demo"] = {"organism": org.to_dict() | {"recipe": recipe.model_dump(mode="json")},
                       "continual": opts.continual, "layers": layers, "wall_s": round(time.time() - t0, 1),
                       "data": {k: str(v) for k, v in files.items()}}
    cmp.report(results, title="fgsn demo report: the SmolLM2 organism",
               extra_tables=[continual_table(results, steps)] if steps else None)
    stage("report written")
    print(summary_text(results))
    print(f"\ndemo finished in {time.time() - t0:.0f} s")
    print(f"  results: {out / 'results.json'}\n  report:  {out / 'report.html'} (and report.md)")
    print(f"  repaired checkpoint: {fgsn_dir} (manifest: fgsn-manifest.json)")
    return {"models": {n: results["models"][n]["path"] for n in order}, "results": results}
