"""`fgsn locate`: find safety layers and neuron masks; save them as a run folder."""

from __future__ import annotations

import argparse

from fgsn.cli.common import HELPS, configure_options
from fgsn.config import options_from_args
from fgsn.errors import FgsnError
from fgsn.locate.options import LocateOptions


def configure(p: argparse.ArgumentParser) -> None:
    configure_options(p, LocateOptions, run, HELPS)


def run(args: argparse.Namespace) -> int:
    from fgsn.locate.run import run_locate

    opts = options_from_args(LocateOptions, args)
    if not opts.out:
        raise FgsnError("fgsn locate needs --out RUN")
    res = run_locate(opts, out=opts.out)
    print(f"layers {res.layers[0]}-{res.layers[-1]}; {res.masked:,} weights masked in {len(res.masks)} tensors; "
          f"run saved in {opts.out}")
    return 0
