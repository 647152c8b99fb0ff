"""`fgsn demo`: the whole story on the SmolLM2 model organism (fgsn.pipeline.demo)."""

from __future__ import annotations

import argparse

from fgsn.cli.common import configure_options
from fgsn.config import options_from_args
from fgsn.pipeline.demo import DemoOptions


def configure(p: argparse.ArgumentParser) -> None:
    configure_options(p, DemoOptions, run)


def run(args: argparse.Namespace) -> int:
    from fgsn.pipeline.demo import run_demo

    run_demo(options_from_args(DemoOptions, args))
    return 0
