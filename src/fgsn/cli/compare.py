"""`fgsn compare`: every method side by side on the same inputs, evaluated by the same harness.

    fgsn compare --base B --aligned A --finetuned F --harmful H --task T \\
                 --methods fgsn,safelora,resta,wanda,self-reminder --out RUNDIR [--config compare.yaml]
"""

from __future__ import annotations

import argparse

from fgsn.cli.common import COMPARE_HELPS, HELPS, SKIP, add_config_flag, methods_help
from fgsn.config import add_option_flags, options_from_args
from fgsn.pipeline.options import NOT_FOR_COMPARE, CompareOptions

DESCRIPTION = ("Run every method of --methods on the same base/aligned/fine-tuned trio (checkpoints under "
               "RUNDIR/models/NAME), evaluate all of them with the same harness (fgsn eval), and write "
               "RUNDIR/results.json, report.md and report.html with ASR (overall, per category), harmfulness, "
               "over-refusal, utility, share of parameters modified and the cost of each edit. A method whose output "
               "is complete and was made with the same options is not re-run.")


def configure(p: argparse.ArgumentParser) -> None:
    add_config_flag(p)
    add_option_flags(p, CompareOptions, {**HELPS, **COMPARE_HELPS, "methods": methods_help()},
                     skip=(*NOT_FOR_COMPARE, "report"))
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
