"""IRR, SGDG rollback and fgsn's iterative reversion (with and without task compensation) on the
SmolLM2 organism, on the demo's inputs and evaluated with the demo's settings.

    python benchmarks/reversion_organism.py [--out runs/reversion] [--finetuned full|lora]
                                            [--variants irr,irr-nocomp,sgdg,revert,revert-comp,...]

Needs the organism in the cache (`make demo` or `fgsn organism build`; this script does not build
it). Every method sees what the demo's FGSN sees: AdvBench `split=train` (64 prompts) as harmful
prompts and the fine-tune's first 64 task examples; the base model stands in for the unaligned
model (IRR). Each edit runs in its own process (wall time and peak RSS of the edit alone, as in
`fgsn compare`); the evaluation is the demo's (HarmBench standard + StrongREJECT, 30 each;
30 harmless alarming prompts; the NLL of 16 held-out worked answers; keyword judge, greedy, 24
new tokens, bfloat16 where native). Writes RUNDIR/results.json, report.md, report.html and
prints the table. A rerun reuses finished edits and cached completions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HARMFUL = "builtin:advbench?split=train&limit=64"


def variants(harmful: str, task: str) -> dict[str, tuple[str, dict]]:
    """name -> (method kind, its options beyond the models): each at its defaults."""
    return {
        "irr": ("irr", {"task": [task]}),                                     # 10 samples, SparseGPT sweep
        "irr-nocomp": ("irr", {"task": [task], "compensate": "none"}),
        "sgdg": ("sgdg", {"harmful": [harmful], "task": [task]}),             # 20 rounds, 0.1%, cosine
        "revert": ("revert", {"harmful": [harmful], "task": [task]}),         # 5 x 2% per module, refusal NLL
        "revert-comp": ("revert", {"harmful": [harmful], "task": [task], "compensate": "task"}),
        "revert-10r": ("revert", {"harmful": [harmful], "task": [task], "rounds": 10}),
        # the one-round reversion it generalises: snip-signed over all layers, 10% of each module
        "fgsn-frontier": ("fgsn", {"harmful": [harmful], "task": [task], "preset": "frontier"}),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/reversion")
    ap.add_argument("--finetuned", choices=("full", "lora"), default="full")
    ap.add_argument("--variants", default="irr,irr-nocomp,sgdg,revert,revert-comp")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per forward/backward pass of the edits")
    args = ap.parse_args(argv)

    from fgsn.artifacts.manifest import MANIFEST
    from fgsn.atomic import atomic_write_json
    from fgsn.evaluate.parallel import default_model_workers
    from fgsn.organism import OrganismRecipe
    from fgsn.organism.build import OrganismPaths, stage_complete
    from fgsn.pipeline.compare import Comparison, run_isolated
    from fgsn.pipeline.demo import DemoOptions, task_files
    from fgsn.pipeline.options import CompareOptions

    recipe = OrganismRecipe()
    org = OrganismPaths.for_recipe(recipe)
    stage = "finetuned-full" if args.finetuned == "full" else "finetuned-lora"
    if not all(stage_complete(org.stage_dir(s), org.recipe_hash, recipe.aligned_key() if s == "aligned" else None)
               for s in ("aligned", stage)):
        raise SystemExit(f"the organism {org.root} is not built; run `make demo` or `fgsn organism build` first")
    out = Path(args.out)
    demo = DemoOptions(out=str(out))
    files = task_files(org, recipe, out, demo)
    finetuned = str(org.finetuned_full if args.finetuned == "full" else org.finetuned_lora)
    table = variants(HARMFUL, str(files["task"]))
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(chosen) - set(table)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {', '.join(table)}")

    costs: dict[str, dict] = {}
    (out / "edits").mkdir(parents=True, exist_ok=True)
    for name in chosen:
        kind, own = table[name]
        folder = out / "models" / name
        stats = out / "edits" / f"{name}.json"
        if (folder / MANIFEST).is_file() and stats.is_file():
            costs[name] = {**json.loads(stats.read_text()), "resumed": True}
            continue
        options = {"aligned": str(org.aligned), "finetuned": finetuned, "base": str(org.base), "out": str(folder),
                   "overwrite": True, "device": "cpu", "max_length": demo.max_length, "batch_size": args.batch_size,
                   **own}
        t = time.time()
        print(f"[{name}] {kind} ...", flush=True)
        costs[name] = {**run_isolated(name, kind, options, stats), "resumed": False}
        atomic_write_json(stats, costs[name])
        print(f"[{name}] done in {time.time() - t:.0f} s", flush=True)

    copts = CompareOptions(
        base=str(org.base), aligned=str(org.aligned), finetuned=finetuned, harmful=[HARMFUL],
        task=[str(files["task"])], methods=["fgsn"], with_references=True, device="cpu", out=str(out),
        eval_harmful=[f"builtin:harmbench-standard?sample={demo.eval_limit}",
                      f"builtin:strongreject?sample={demo.eval_limit}"],
        benign_alarming=f"builtin:alarming?sample={demo.alarming_limit}", utility=[str(files["utility"])],
        reference=[str(files["reference"])],
        eval={"utility_instruction": "", "utility_limit": demo.utility_limit, "max_new_tokens": demo.max_new_tokens,
              "dtype": demo.eval_dtype, "batch_size": demo.eval_batch_size,
              "model_workers": default_model_workers("cpu")})
    models = {n: str(out / "models" / n) for n in chosen}
    cmp = Comparison(copts, [])  # the variants were edited above, with options of their own
    cmp.costs = costs
    cmp.evaluate(extra_models=models)
    order = ["aligned", "finetuned", *chosen]
    results = cmp.results(order=order, kinds={n: table[n][0] for n in chosen})
    results["benchmark"] = {"script": "benchmarks/reversion_organism.py", "finetuned": args.finetuned,
                            "variants": {n: {"kind": table[n][0], "options": table[n][1]} for n in chosen}}
    cmp.report(results, title=f"Reversion, IRR and SGDG on the organism ({args.finetuned} fine-tune)")
    print(format_table(results))
    return 0


def format_table(results: dict) -> str:
    def f(x, d=3):
        return "—" if x is None else f"{x:.{d}f}"

    m = results["models"]
    al, ft = m["aligned"], m["finetuned"]
    lines = ["| model | ASR | over-refusal | task NLL | share of the ASR gap closed | params modified | edit wall / "
             "peak RSS |", "|---|---|---|---|---|---|---|"]
    for n in results["order"]:
        e = m[n]
        gap = (ft["asr"] - e["asr"]) / (ft["asr"] - al["asr"]) if n not in ("aligned", "finetuned") and \
            ft["asr"] != al["asr"] else None
        cost = f"{e['edit_wall_s']:.0f} s / {e['edit_peak_rss_mb'] / 1024:.1f} GB" if e.get("edit_wall_s") else ""
        mod = f"{100 * e['modified_fraction']:.2f}%" if e.get("modified_fraction") is not None and \
            n not in ("aligned", "finetuned") else "—"
        lines.append(f"| {n} | {f(e['asr'])} | {f(e['over_refusal'])} | {f(e.get('nll'))} | "
                     f"{'—' if gap is None else f'{100 * gap:.0f}%'} | {mod} | {cost} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
