"""`fgsn bench`: every method on every organism scenario (fgsn.pipeline.bench)."""

from __future__ import annotations

import argparse

from fgsn.cli.common import add_config_flag
from fgsn.config import add_option_flags, options_from_args
from fgsn.pipeline import bench

DESCRIPTION = bench.__doc__.split("\n\n")[0]


def configure(p: argparse.ArgumentParser) -> None:
    add_config_flag(p)
    p.add_argument("--quick", action="store_const", const="quick", dest="preset", default=argparse.SUPPRESS,
                   help="same as --preset quick")
    add_option_flags(p, bench.BenchOptions)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    opts = options_from_args(bench.BenchOptions, args)
    bench.run_bench(bench.with_preset(opts.model_dump(exclude_unset=True)))
    return 0
