"""`fgsn demo`: the whole story on the SmolLM2 model organism, on a laptop CPU.

1. build (or reuse) the organism: base SmolLM2-135M-Instruct -> aligned (safety SFT) ->
   fine-tuned (benign maths/instructions with a small poisoned share);
2. repair the fine-tuned model with FGSN, locating on AdvBench (train split) and the fine-tune's
   task data: once for all harm at once, and continually over three harm dimensions;
3. evaluate base, aligned, fine-tuned and every repaired model on prompts never located on
   (HarmBench, StrongREJECT), the harmless-but-alarming set, arithmetic utility and the NLL of
   benign reference answers; write results.json, report.md, report.html and print the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from fgsn.config import Options, add_option_flags, options_from_args

log = logging.getLogger(__name__)

# AdvBench (PyRIT labels) dimensions with the most training prompts, added one after another.
CONTINUAL = ["Physical", "Financial and Business", "Autonomy"]


class DemoOptions(Options):
    out: str = "runs/demo"
    reduced: bool = Field(False, description="the small, fast organism recipe (for tests)")
    organism_config: str | None = Field(None, description="YAML recipe for the organism")
    finetuned: Literal["full", "lora"] = "full"
    locate_limit: int = Field(64, ge=2, description="AdvBench train prompts to locate on")
    task_limit: int = Field(64, ge=2, description="fine-tuning task prompts to locate on")
    max_length: int = Field(256, ge=8, description="probe prompts are cut to this many tokens")
    continual: list[str] = Field(default_factory=lambda: list(CONTINUAL))
    # FGSN settings (see `fgsn project --help`); the defaults are project's defaults
    score: str | None = None
    q: float | None = None
    p: float | None = None
    granularity: str | None = None
    projector: str | None = None
    layers: str | None = None
    # evaluation
    eval_limit: int = Field(30, ge=1, description="prompts per held-out harmful set")
    alarming_limit: int = Field(30, ge=1)
    utility_limit: int = Field(10, ge=1)
    max_new_tokens: int = Field(40, ge=1)
    batch_size: int = Field(16, ge=1)
    device: str = "auto"


def _task_file(organism, out: Path, limit: int) -> Path:
    """The fine-tune's own task data (poisoned examples removed): what the user's fine-tune is for."""
    rows = []
    for line in (organism.root / "data" / "finetune.jsonl").read_text(encoding="utf-8").splitlines():
        ex = json.loads(line)
        if ex.get("kind") != "poison":
            rows.append({"prompt": ex["prompt"], "answer": ex["answer"], "category": ex.get("kind", "task")})
    path = out / "data" / "task.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:limit]), encoding="utf-8")
    return path


def run_demo(opts: DemoOptions) -> dict:
    from fgsn.edit.run import ProjectOptions, run_project
    from fgsn.evaluate import EvalOptions, evaluate
    from fgsn.organism import OrganismRecipe, build_organism, reduced_recipe

    t0 = time.time()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    if opts.organism_config:
        from fgsn.config import build_options, read_yaml

        recipe = build_options(OrganismRecipe, read_yaml(opts.organism_config), opts.organism_config)
    else:
        recipe = reduced_recipe() if opts.reduced else OrganismRecipe()
    print("[1/3] model organism (built once, then cached)")
    org = build_organism(recipe)
    finetuned = org.finetuned_full if opts.finetuned == "full" else org.finetuned_lora
    task = _task_file(org, out, opts.task_limit)
    fgsn_over = {k: getattr(opts, k) for k in ("score", "q", "p", "granularity", "projector", "layers")
                 if getattr(opts, k) is not None}
    common = dict(base=str(org.base), aligned=str(org.aligned), task=[str(task)], device=opts.device,
                  max_length=opts.max_length, overwrite=True, **fgsn_over)
    models_dir = out / "models"
    print("[2/3] FGSN repair: all harm at once, then continually over", ", ".join(opts.continual))
    harmful = f"builtin:advbench?split=train&limit={opts.locate_limit}"
    res = run_project(ProjectOptions(**common, finetuned=str(finetuned), harmful=[harmful], category="all",
                                     out=str(models_dir / "fgsn")))
    models = {"base": str(org.base), "aligned": str(org.aligned), "finetuned": str(finetuned),
              "fgsn": str(res.out)}
    ledger = models_dir / "ledger"
    if ledger.exists():
        import shutil

        shutil.rmtree(ledger)  # the demo's continual run starts from the fine-tuned model each time
    current = str(finetuned)
    # the safety layers are a property of the aligned model: found once, reused by every step
    layers = opts.layers or ",".join(str(x) for x in res.manifest["layers"])
    for i, cat in enumerate(opts.continual, 1):
        step = run_project(ProjectOptions(**{**common, "layers": layers}, finetuned=current, category=cat,
                                          ledger=str(ledger),
                                          harmful=[f"builtin:advbench?split=train&category={cat}"],
                                          out=str(models_dir / f"fgsn-step{i}")))
        c = step.manifest["categories"][cat]
        print(f"  step {i} {cat}: {c['masked']:,} new weights ({100 * c['modified_fraction']:.3f}%), "
              f"{c['overlap']:,} already projected")
        models[f"fgsn-step{i}"] = current = str(step.out)
    print("[3/3] evaluation on held-out prompts (HarmBench, StrongREJECT), over-refusal, utility")
    eval_opts = EvalOptions(max_new_tokens=opts.max_new_tokens, batch_size=opts.batch_size,
                            utility_limit=opts.utility_limit, device=opts.device)
    # HarmBench standard behaviours: the contextual ones carry page-long contexts, too slow on a CPU
    result = evaluate(models, harmful=[f"builtin:harmbench-standard?sample={opts.eval_limit}",
                                       f"builtin:strongreject?sample={opts.eval_limit}"],
                      benign_alarming=f"builtin:alarming?sample={opts.alarming_limit}",
                      utility=["basic_arithmetic"], reference=["builtin:pyrit-benign"], options=eval_opts,
                      out=out)
    from fgsn.report.tables import summary_text

    print(summary_text(result.results))
    print(f"\ndemo finished in {time.time() - t0:.0f} s")
    print(f"  results: {out / 'results.json'}\n  report:  {out / 'report.html'} (and report.md)")
    print(f"  repaired checkpoint: {models['fgsn']} (manifest: fgsn-manifest.json)")
    return {"models": models, "result": result}


def _handler(args: argparse.Namespace) -> int:
    run_demo(options_from_args(DemoOptions, args))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="build the SmolLM2 organism, repair it with FGSN, evaluate and report")
    p.add_argument("--config", help="YAML file with any of these options (flags win)")
    add_option_flags(p, DemoOptions)
    p.set_defaults(func=_handler)
