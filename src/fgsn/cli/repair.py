"""`fgsn repair`: search the repair methods and their strength (fgsn.pipeline.repair)."""

from __future__ import annotations

import argparse

from fgsn.cli.common import add_config_flag
from fgsn.config import add_option_flags, options_from_args
from fgsn.pipeline import repair

DESCRIPTION = repair.__doc__.split("\n\n")[0]


def configure(p: argparse.ArgumentParser) -> None:
    add_config_flag(p)
    add_option_flags(p, repair.RepairOptions)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    repair.run_repair(options_from_args(repair.RepairOptions, args))
    return 0
