"""Which activation-match families trade safety for task best, judged on `fgsn repair`'s own splits?

Runs `fgsn repair --search grid --confirm 0` on the demo's trio and inputs (`fgsn demo`'s repair,
the same splits, the evaluation prompts left out) over the plain ridge family (λ), one ridge
family with the revert prior α per --priors value and any --family, keeps every trial, and scores every trial on the
check split too, so that a family is compared on prompts neither its fit nor its search saw. The
demo's held-out evaluation prompts are never scored here: a family chosen from this table is
then judged on them (and on the bench) once.

    python benchmarks/repair_families.py --out runs/repair-families [--finetuned full|lora] \\
        [--lams 0.5,1,2,3] [--priors 0.01,0.03,0.1] [--prior-lams 1,3] \\
        [--family 'NAME:OPTION=VALUE;OPTION=VALUE']...   (more λ families at --prior-lams, e.g. mu=0.01;
        values are JSON where they parse: modules=["o_proj","down_proj"])

A rerun with the same --out reuses every finished trial and every cached completion.

Writes OUT/families.json (every trial: search and check ASR, task kept, cost) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def option_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def families(args) -> dict:
    """The plain λ family, per prior α a λ family at that α, and the --family ones (registered
    for this run only)."""
    from fgsn.pipeline.repair import FAMILIES, Family

    fams = {"am": Family("am", "lam", args.lams, of="activation-match")}
    for a in args.priors:
        fams[f"am-prior{a:g}"] = Family(f"am-prior{a:g}", "lam", args.prior_lams, of="activation-match",
                                        fixed=(("prior", a),))
    for spec in args.family:
        name, _, opts = spec.partition(":")
        fixed = tuple((k, option_value(v)) for k, _, v in (o.partition("=") for o in opts.split(";") if o))
        fams[name] = Family(name, "lam", args.prior_lams, of="activation-match", fixed=fixed)
    FAMILIES.update(fams)
    return fams


def extra_task_family(args, org, recipe, out: Path, files: dict) -> dict:
    """A λ family fitted on the task-fit split plus held-out draws of the fine-tune's maths."""
    from fgsn.atomic import atomic_write_jsonl, read_jsonl
    from fgsn.models.loading import load_tokenizer
    from fgsn.organism.data import heldout_task
    from fgsn.pipeline.repair import FAMILIES, Family, split_path, work_dir

    taken = {r["prompt"] for f in files.values() for r in read_jsonl(f)}
    taken |= {r["prompt"] for name in ("finetune.jsonl", "aligned_sft.jsonl") for r in read_jsonl(org.root / "data" / name)}
    n = args.extra_task
    extra = heldout_task(recipe, load_tokenizer(org.base), n, n, exclude=taken, salt=EXTRA_SALT)
    path = out / "data" / f"task-extra-{n}.jsonl"
    atomic_write_jsonl(path, [{"prompt": e.prompt, "answer": e.answer, "category": e.kind} for e in extra])
    fit = split_path(work_dir(out / "repair") / "data", "task", "fit")  # the fitted task part, once written
    name = f"am-xtask{n}"
    fam = Family(name, "lam", args.prior_lams, of="activation-match", fixed=(("task", [str(fit), str(path)]),))
    FAMILIES[name] = fam
    return {name: fam}


EXTRA_SALT = 200  # the demo's validation draw uses 100


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--finetuned", choices=["full", "lora"], default="full")
    p.add_argument("--lams", type=floats, default=(0.5, 1.0, 2.0, 3.0))
    p.add_argument("--priors", type=floats, default=(0.01, 0.03, 0.1))
    p.add_argument("--prior-lams", type=floats, default=(1.0, 3.0))
    p.add_argument("--family", action="append", default=[], help="NAME:OPTION=VALUE;...: one more λ family")
    p.add_argument("--extra-task", type=int, default=0, help=(
        "N: one more λ family (am-xtaskN) whose task Gram also holds N arithmetic + N word problems of the "
        "fine-tune's format drawn with another salt (none trained on, evaluated or in the task splits)"))
    args = p.parse_args()

    from fgsn.organism import build_organism
    from fgsn.organism.recipe import load_recipe
    from fgsn.pipeline.demo import DemoOptions, demo_repair_values, eval_harmful_sets, task_files
    from fgsn.pipeline.repair import RepairOptions, run_repair, score_models, split_path, trial_row, work_dir

    out = args.out.expanduser().absolute()
    dopts = DemoOptions(out=str(out), finetuned=args.finetuned)
    recipe = load_recipe(None, False)
    org = build_organism(recipe, device=dopts.device, stages=(f"finetuned-{args.finetuned}",))
    finetuned = str(org.finetuned_full if args.finetuned == "full" else org.finetuned_lora)
    files = task_files(org, recipe, out, dopts)
    fams = families(args)
    if args.extra_task:
        fams.update(extra_task_family(args, org, recipe, out, files))
    values = demo_repair_values(dopts, org, finetuned, files, eval_harmful_sets(dopts), out)
    opts = RepairOptions(**{**values, "families": list(fams), "search": "grid", "confirm": 0, "keep_trials": True,
                            "out": str(out / "repair")})
    doc = run_repair(opts)
    work = work_dir(Path(opts.out))
    split = {k: {part: split_path(work / "data", k, part) for part in ("fit", "search", "check")}
             for k in ("harmful", "task")}
    adapters = {"finetuned": finetuned} if args.finetuned == "lora" else {}
    refs = {"aligned": opts.aligned, "finetuned": opts.aligned if adapters else finetuned}
    trials = {n: str(work / "trials" / n) for n in doc["trials"]}
    check = score_models(opts, {**refs, **trials}, adapters, split, "check", work, run="all-trials")
    rows = {}
    for n, s in doc["trials"].items():
        c = trial_row(opts, check["aligned"], check["finetuned"], check[n], s["cost"])
        rows[n] = {"search": s, "check": c}
    (out / "families.json").write_text(json.dumps({"references": {"search": doc["references"], "check": {
        k: check[k] for k in refs}}, "trials": rows, "options": doc["options"]}, indent=1))
    print("| trial | search ASR | search task kept | check ASR | check task kept | ||change||/||W_f-W_a|| |")
    print("|---|---|---|---|---|---|")
    for k in refs:
        print(f"| {k} | {doc['references'][k]['asr']:.3f} | | {check[k]['asr']:.3f} | | |")
    for n, r in rows.items():
        s, c = r["search"], r["check"]
        print(f"| {n} | {s['asr']:.3f} | {s['task_kept']:.0%} | {c['asr']:.3f} | {c['task_kept']:.0%} | "
              f"{s['cost']:.2f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
