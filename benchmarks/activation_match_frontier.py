"""Closed-form activation matching on the SmolLM2 organism: held-out ASR, over-refusal and task NLL
for a few lambda (ridge form) and null-space settings, on the full and on the LoRA fine-tune.

    python benchmarks/activation_match_frontier.py [--out runs/am-frontier] [--finetuned full,lora]
        [--lams 0.3,1,3] [--null-energies 0.01] [--sequential 1] [--harmful-limit 128] [--task-limit 160]

Inputs as in the demo (src/fgsn/pipeline/demo.py): Grams from AdvBench `split=train` prompts
(`--harmful-limit`) and the fine-tune's own task examples, prompt + answer (`--task-limit`;
the organism has 160), on the fine-tuned model (float32 unless `--dtype`). Evaluation exactly as
the demo's: HarmBench standard + StrongREJECT (30 each, fixed samples), 30 harmless-but-alarming
prompts, 16 held-out worked answers (NLL), keyword judge, greedy, 24 new tokens, `--eval-dtype
fast`. Each edit runs in its own process (wall time and peak RSS are its own; fgsn.pipeline.worker).

Needs the organism in the cache (`make demo` or `fgsn organism build`); it never builds it.
Writes OUT/KIND/results.json, report.md (fgsn compare's layout) and OUT/table.md; prints the table.
Share of the gap closed = (ASR_finetuned - ASR) / (ASR_finetuned - ASR_aligned). lambda is read
off the evaluation set here, so a best row is a direction, not a held-out choice.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def methods_for(args):
    from fgsn.pipeline.registry import ACTIVATION_MATCH, Method

    out = [Method(f"am-ridge-lam{lam:g}", ACTIVATION_MATCH, {"lam": lam}) for lam in args.lams]
    out += [Method(f"am-null-e{e:g}", ACTIVATION_MATCH, {"form": "nullspace", "null_energy": e})
            for e in args.null_energies]
    out += [Method(f"am-ridge-lam{lam:g}-seq", ACTIVATION_MATCH, {"lam": lam, "sequential": True})
            for lam in args.sequential]
    if args.harmful_answer != "none":
        out += [Method(f"am-ridge-lam{lam:g}-{args.harmful_answer}", ACTIVATION_MATCH,
                       {"lam": lam, "harmful_answer": args.harmful_answer}) for lam in args.lams]
    return out


def run_kind(kind: str, paths, recipe, args) -> dict:
    from fgsn.evaluate.parallel import default_model_workers
    from fgsn.pipeline.compare import Comparison
    from fgsn.pipeline.demo import DemoOptions, task_files
    from fgsn.pipeline.options import CompareOptions

    out = Path(args.out) / kind
    out.mkdir(parents=True, exist_ok=True)
    demo = DemoOptions(out=str(out), finetuned=kind, task_limit=args.task_limit)
    files = task_files(paths, recipe, out, demo)
    finetuned = str(paths.finetuned_full if kind == "full" else paths.finetuned_lora)
    methods = methods_for(args)
    copts = CompareOptions(
        base=str(paths.base), aligned=str(paths.aligned), finetuned=finetuned,
        harmful=[f"builtin:advbench?split=train&limit={args.harmful_limit}"], task=[str(files["task"])],
        methods=[m.name for m in methods], with_references=True, device=args.device, dtype=args.dtype,
        max_length=demo.max_length, batch_size=demo.batch_size, out=str(out),
        eval_harmful=[f"builtin:harmbench-standard?sample={demo.eval_limit}",
                      f"builtin:strongreject?sample={demo.eval_limit}"],
        benign_alarming=f"builtin:alarming?sample={demo.alarming_limit}",
        utility=[str(files["utility"])], reference=[str(files["reference"])],
        # the cache is content-keyed: the aligned model is generated once for both fine-tunes
        eval={"utility_instruction": "", "utility_limit": demo.utility_limit, "max_new_tokens": demo.max_new_tokens,
              "cache_dir": str(Path(args.out) / "cache"), "dtype": demo.eval_dtype, "batch_size": demo.eval_batch_size,
              "model_workers": args.eval_workers or default_model_workers(args.device)})
    cmp = Comparison(copts, methods)
    cmp.check()
    t0 = time.time()
    cmp.edit()
    print(f"[{kind}] edits done in {time.time() - t0:.0f} s", flush=True)
    cmp.evaluate()
    results = cmp.results()
    cmp.report(results, title=f"activation matching on the organism ({kind} fine-tune)")
    return results


def table(kind: str, results: dict) -> list[str]:
    models = results["models"]
    al, ft = models["aligned"], models["finetuned"]
    gap = ft["asr"] - al["asr"]
    lines = [f"### {kind} fine-tune", "",
             f"aligned: ASR {al['asr']:.3f}, over-refusal {al['over_refusal']:.3f}, task NLL {al['nll']:.3f}; "
             f"fine-tuned: ASR {ft['asr']:.3f}, over-refusal {ft['over_refusal']:.3f}, task NLL {ft['nll']:.3f}", "",
             "| setting | ASR | over-refusal | task NLL | gap closed | ‖change‖/‖W_f−W_a‖ (max module) "
             "| harmful module gap closed | mean task drift | entries changed | edit wall / peak RSS (Grams) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in results["order"]:
        if name in ("aligned", "finetuned"):
            continue
        e = models[name]
        man = json.loads((Path(e["path"]) / "fgsn-manifest.json").read_text(encoding="utf-8"))
        tot = man["activation_match"]["totals"]
        run = json.loads((Path(e["path"]) / "fgsn" / "activation-match.json").read_text(encoding="utf-8"))
        grams = ("cached" if not run["forward_passes"] else "partly cached" if run["gram_cache_hits"]
                 else "computed")
        closed = (ft["asr"] - e["asr"]) / gap if gap else float("nan")
        lines.append(
            f"| {name} | {e['asr']:.3f} | {e['over_refusal']:.3f} | {e['nll']:.3f} | {100 * closed:.0f}% "
            f"| {tot['change_ratio']:.2f} ({tot['max_change_ratio']:.2f}) | {100 * tot['harmful_gap_closed']:.0f}% "
            f"| {tot['mean_task_drift']:.1e} | {100 * man['changed_fraction']:.1f}% "
            f"| {e['edit_wall_s']:.0f} s / {e['edit_peak_rss_mb'] / 1024:.2f} GB ({grams}) |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/am-frontier")
    p.add_argument("--finetuned", default="full,lora", help="full, lora or both (comma list)")
    p.add_argument("--lams", default="0.3,1,3", help="ridge lambdas (comma list; empty: none)")
    p.add_argument("--null-energies", default="0.01", help="null-space --null-energy values (comma list; empty: none)")
    p.add_argument("--sequential", default="", help="lambdas also run with --sequential (comma list)")
    p.add_argument("--harmful-answer", default="none", choices=["none", "refusal", "aligned"],
                   help="also run the ridge lambdas with this harmful answer in G_h")
    p.add_argument("--harmful-limit", type=int, default=128)
    p.add_argument("--task-limit", type=int, default=160)
    p.add_argument("--dtype", default="float32", help="dtype of the live model the Grams are taken on")
    p.add_argument("--device", default="auto")
    p.add_argument("--eval-workers", type=int, default=None)
    args = p.parse_args(argv)

    def floats(s: str) -> list[float]:
        return [float(x) for x in s.split(",") if x.strip()]

    args.lams, args.null_energies, args.sequential = floats(args.lams), floats(args.null_energies), floats(args.sequential)
    from fgsn.organism import OrganismRecipe
    from fgsn.organism.build import OrganismPaths, stage_complete

    recipe = OrganismRecipe()
    paths = OrganismPaths.for_recipe(recipe)
    kinds = [k.strip() for k in args.finetuned.split(",") if k.strip()]
    for stage in ("aligned", *(f"finetuned-{k}" for k in kinds)):
        key = recipe.aligned_key() if stage == "aligned" else None
        if not stage_complete(paths.stage_dir(stage), paths.recipe_hash, key):
            print(f"the organism's {stage} model is not in the cache ({paths.root}); build it first: make demo "
                  "(or fgsn organism build)", file=sys.stderr)
            return 2
    lines = [f"Command: python benchmarks/activation_match_frontier.py {' '.join(argv or sys.argv[1:])}", ""]
    for kind in kinds:
        lines += table(kind, run_kind(kind, paths, recipe, args))
    text = "\n".join(lines)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "table.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
