"""`fgsn sweep`: the safety / utility / sparsity frontier (fgsn.pipeline.sweep)."""

from __future__ import annotations

import argparse

from fgsn.cli.common import configure_options
from fgsn.config import options_from_args
from fgsn.pipeline.sweep import SweepOptions


def configure(p: argparse.ArgumentParser) -> None:
    configure_options(p, SweepOptions, run)


def run(args: argparse.Namespace) -> int:
    from fgsn.pipeline.sweep import run_sweep

    run_sweep(options_from_args(SweepOptions, args))
    return 0
