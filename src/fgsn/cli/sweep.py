"""`fgsn sweep`: the safety / utility / sparsity frontier (fgsn.pipeline.sweep)."""

from __future__ import annotations

import argparse

from fgsn.cli.common import add_config_flag
from fgsn.config import add_option_flags, options_from_args
from fgsn.pipeline.sweep import SweepOptions


def configure(p: argparse.ArgumentParser) -> None:
    add_config_flag(p)
    add_option_flags(p, SweepOptions)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fgsn.pipeline.sweep import run_sweep

    run_sweep(options_from_args(SweepOptions, args))
    return 0
