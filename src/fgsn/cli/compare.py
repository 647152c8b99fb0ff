"""`fgsn compare`: every method side by side on the same inputs, evaluated by the same harness.

    fgsn compare --base B --aligned A --finetuned F --harmful H --task T \\
                 --methods fgsn,safelora,resta,wanda,self-reminder --out RUNDIR [--config compare.yaml]

The options are nested (fgsn.pipeline.options): the top level, `eval.*` and one section per
baseline; the flags keep their spellings (`--max-new-tokens` is eval.max_new_tokens,
`--safelora-k` safelora.k), and what the evaluation shares with the edits has `--eval-NAME`.
"""

from __future__ import annotations

import argparse

from fgsn.cli.common import COMPARE_HELPS, HELPS, SKIP, add_config_flag, methods_help
from fgsn.config import add_option_flags, options_from_args
from fgsn.evaluate.options import EvalOptions
from fgsn.pipeline.options import NOT_FOR_COMPARE, SECTIONS, SHARED, CompareOptions

DESCRIPTION = ("Run every method of --methods on the same base/aligned/fine-tuned trio (checkpoints under "
               "RUNDIR/models/NAME), evaluate all of them with the same harness (fgsn eval), and write "
               "RUNDIR/results.json, report.md and report.html with ASR (overall, per category), harmfulness, "
               "over-refusal, utility, share of parameters modified and the cost of each edit. A method whose output "
               "is complete and was made with the same options is not re-run.")
TITLES = {"eval": "evaluation (YAML section eval; the settings it shares with the edits: --eval-NAME, default: "
                  "--NAME)",
          "safelora": "SafeLoRA (YAML section safelora)", "resta": "RESTA (YAML section resta)",
          "wanda": "Wanda (YAML section wanda)", "activation_match": "activation matching (YAML section "
                                                                     "activation_match)",
          "self_reminder": "Self-Reminder (YAML section self_reminder)"}


def _eval_prefix(name: str) -> str:
    return "eval-" if name in SHARED else ""


def configure(p: argparse.ArgumentParser) -> None:
    add_config_flag(p)
    add_option_flags(p, CompareOptions, {**HELPS, **COMPARE_HELPS, "methods": methods_help()},
                     skip=(*NOT_FOR_COMPARE, *SECTIONS))
    shared = {k: f"the evaluation's: {(EvalOptions.model_fields[k].description or HELPS.get(k, k)).replace('%', '%%')}; "
                 f"default: --{k.replace('_', '-')}" for k in SHARED}
    for section, cls in SECTIONS.items():
        g = p.add_argument_group(TITLES[section])
        if section == "eval":
            add_option_flags(g, cls, shared, skip=(*NOT_FOR_COMPARE, "report"), section=section, prefix=_eval_prefix)
        else:
            add_option_flags(g, cls, section=section, prefix=section.replace("_", "-") + "-")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fgsn.pipeline.compare import cost_table, run_compare
    from fgsn.report.tables import summary_text, text_table

    opts = options_from_args(CompareOptions, args, skip=SKIP)
    results = run_compare(opts)
    print(summary_text(results))
    t = cost_table(results)
    print(f"\n{t.title}\n{text_table(t)}")
    print(f"\nwrote {opts.out}/results.json, report.md, report.html")
    return 0
