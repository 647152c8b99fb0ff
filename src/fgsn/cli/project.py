"""`fgsn project`: locate (or reuse --locate-run) and project; write the repaired checkpoint."""

from __future__ import annotations

import argparse

from fgsn.cli.common import HELPS, configure_options
from fgsn.config import options_from_args
from fgsn.edit.options import ProjectOptions


def configure(p: argparse.ArgumentParser) -> None:
    configure_options(p, ProjectOptions, run, HELPS)


def run(args: argparse.Namespace) -> int:
    from fgsn.pipeline.project import run_project

    res = run_project(options_from_args(ProjectOptions, args))
    print_manifest_summary(res.manifest, res.out)
    return 0


def print_manifest_summary(m: dict, out) -> None:
    layers = m["layers"]
    span = f"{layers[0]}-{layers[-1]}" if layers else "none"
    print(f"edited checkpoint: {out}")
    print(f"  method: fgsn ({m['options']['score']}, {m['options']['projector']}, {m['options']['granularity']}, "
          f"q={m['options']['q']}, p={m['options']['p']})")
    print(f"  layers: {span}   modules edited: {sum(1 for x in m['modules'] if x['masked'])}/{len(m['modules'])}")
    print(f"  parameters modified: {m['masked']:,} = {100 * m['modified_fraction']:.3f}% of all, "
          f"{100 * m['modified_fraction_edited']:.2f}% of the edited modules")
    for cat, c in m["categories"].items():
        print(f"  category {cat}: {c['masked']:,} new, {c['overlap']:,} already projected earlier")
    if m.get("noop"):
        print("  (no-op: this category was already applied)")
