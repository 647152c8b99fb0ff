"""`fgsn compare` (every method side by side) and `fgsn baseline METHOD` (one baseline alone).

    fgsn compare --base B --aligned A --finetuned F --harmful H --task T \\
                 --methods fgsn,safelora,resta,wanda,self-reminder --out RUNDIR [--config compare.yaml]
    fgsn baseline safelora --base B --aligned A --finetuned F --out OUT [--select number --k 10]
    fgsn baseline resta    --base B --aligned A --finetuned F --out OUT [--beta 0.5 --dare 0.3]
    fgsn baseline wanda    --aligned A --finetuned F --harmful H --out OUT [--q 0.1 --target update]
    fgsn baseline irr      --base B --aligned A --finetuned F --task T --out OUT [--compensate none]
    fgsn baseline sgdg     --aligned A --finetuned F --harmful H --task T --out OUT [--rounds 20]
"""

from __future__ import annotations

import argparse

from fgsn.config import add_option_flags, options_from_args, own_descriptions_first

SKIP = ("func", "config", "command", "verbose", "kind", "baseline_method")

BASELINE_HELPS = {
    "select": "SafeLoRA: project modules with cos(C dW, dW) <= --threshold, or the --k lowest (number)",
    "threshold": "SafeLoRA: cosine threshold",
    "k": "SafeLoRA: number of modules projected in `number` mode",
    "output_format": "merged checkpoint, or adapter (SafeLoRA on a LoRA input: lora_B <- C lora_B)",
    "unaligned": "RESTA: model the safety vector is measured from (paper: a harmfully fine-tuned aligned model; "
                 "default: --base)",
    "beta": "RESTA: weight of the safety vector (aligned - unaligned)",
    "dare": "RESTA: DARE drop rate of the fine-tuning delta (0 = no DARE)",
    "scope": "RESTA: all tensors (paper) or linear (decoder-layer linear modules only)",
    "q": "Wanda: share of weights removed (top-q by |W| ||X||)",
    "target": "Wanda: remove the fine-tuning update (update) or zero the weight (weight)",
    "group": "Wanda: top-q within each output row (Wanda's comparison group) or over the flattened module",
    "score": "Wanda: wanda (|W_finetuned|) or wanda-delta (|dW|) times input norms",
    "save_masks": "Wanda: also save the masks (fgsn/masks.safetensors; 1 bit a weight of all modules)",
    "layers": "restrict to these layers (default: all; the method has no layer search)",
    "max_shard_gb": "largest output shard, GB",
}


def _helps(extra: dict[str, str]) -> dict[str, str]:
    from fgsn.cli import HELPS

    return {**HELPS, **extra}


def add_parser(subparsers) -> None:
    from fgsn.baselines.compare import HELPS as COMPARE_HELPS
    from fgsn.baselines.compare import NOT_FOR_COMPARE, CompareOptions
    from fgsn.baselines.methods import BASELINES, option_class

    p = subparsers.add_parser(
        "compare", help="run FGSN, its ablations and the baselines on the same inputs; evaluate them side by side",
        description="Run every method of --methods on the same base/aligned/fine-tuned trio (checkpoints under "
                    "RUNDIR/models/NAME), evaluate all of them with the same harness (fgsn eval), and write "
                    "RUNDIR/results.json, report.md and report.html with ASR (overall, per category), harmfulness, "
                    "over-refusal, utility, share of parameters modified and the cost of each edit. A method whose "
                    "output is complete is not re-run.")
    p.add_argument("--config", help="YAML file with any of these options (flags win)")
    add_option_flags(p, CompareOptions, _helps(COMPARE_HELPS), skip=(*NOT_FOR_COMPARE, "report"))
    p.set_defaults(func=_compare)

    from fgsn.cli import COMMANDS

    b = subparsers.add_parser("baseline", help=COMMANDS["baseline"][1])
    bs = b.add_subparsers(dest="baseline_method", metavar="METHOD")
    docs = {"safelora": "SafeLoRA (Hsu et al. 2024): project low-cosine modules' updates onto V V^T/||V||_F",
            "resta": "RESTA (Bhardwaj et al. 2024): add beta * (aligned - unaligned), optional DARE",
            "wanda": "Wanda safety-neuron pruning (Antidote-style): remove top Wanda-scored weights on harmful "
                     "prompts",
            "irr": "IRR (Wu et al. 2025): revert update entries whose sign opposes aligned - base, then recalibrate "
                   "the kept ones on task inputs (OBS / SparseGPT)",
            "sgdg": "SGDG rollback (Yang et al. 2025): 20 rounds of gradient-selected reversion to the aligned "
                    "values on a hidden-state cosine loss, with a rollback on a task floor"}
    for kind in BASELINES:
        q = bs.add_parser(kind, help=docs[kind], description=docs[kind])
        q.add_argument("--config", help="YAML file with any of these options (flags win)")
        add_option_flags(q, option_class(kind), own_descriptions_first(option_class(kind), _helps(BASELINE_HELPS)))
        q.set_defaults(func=_baseline, kind=kind)
    b.set_defaults(func=lambda args: (b.print_help(), 1)[1])


def _compare(args: argparse.Namespace) -> int:
    from fgsn.baselines.compare import CompareOptions, run_compare
    from fgsn.report.tables import summary_text

    opts = options_from_args(CompareOptions, args, skip=SKIP)
    results = run_compare(opts)
    print(summary_text(results))
    from fgsn.baselines.compare import cost_table
    from fgsn.report.tables import text_table

    t = cost_table(results)
    print(f"\n{t.title}\n{text_table(t)}")
    print(f"\nwrote {opts.out}/results.json, report.md, report.html")
    return 0


def _baseline(args: argparse.Namespace) -> int:
    from fgsn.baselines.methods import option_class, runner

    opts = options_from_args(option_class(args.kind), args, skip=SKIP)
    res = runner(args.kind)(opts)
    m = res.manifest
    print(f"{args.kind} checkpoint: {res.out}")
    print(f"  parameters modified: {m['masked']:,} = {100 * m['modified_fraction']:.3f}% of all, "
          f"{100 * m['modified_fraction_edited']:.2f}% of the tensors considered")
    return 0
