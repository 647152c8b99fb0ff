"""`fgsn repair`: search the repair methods and their strength (fgsn.pipeline.repair)."""

from __future__ import annotations

import argparse

from fgsn.cli.common import configure_options
from fgsn.config import options_from_args
from fgsn.pipeline import repair

DESCRIPTION = repair.__doc__.split("\n\n")[0]


def configure(p: argparse.ArgumentParser) -> None:
    configure_options(p, repair.RepairOptions, run)


def run(args: argparse.Namespace) -> int:
    repair.run_repair(options_from_args(repair.RepairOptions, args))
    return 0
