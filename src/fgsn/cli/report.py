"""`fgsn report RUNDIR`: rebuild results and reports of an evaluation run (no model is loaded)."""

from __future__ import annotations

import argparse

DESCRIPTION = ("Aggregate the records of an `fgsn eval` run folder into RUNDIR/results.json, RUNDIR/report.md and a "
               "self-contained RUNDIR/report.html, and print the summary table. Schema of results.json: "
               "docs/results-schema.md.")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("rundir", help="the --out folder of fgsn eval")
    p.add_argument("--quiet", action="store_true", help="do not print the summary table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fgsn.evaluate.results import write_results
    from fgsn.report import write_report

    write_report(args.rundir, write_results(args.rundir), echo=not args.quiet)
    print(f"\nwrote {args.rundir}/results.json, report.md, report.html")
    return 0
