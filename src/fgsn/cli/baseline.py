"""`fgsn baseline METHOD`: one baseline alone, writing its checkpoint (the registry's baselines).

    fgsn baseline safelora --base B --aligned A --finetuned F --out OUT [--select number --k 10]
    fgsn baseline resta    --base B --aligned A --finetuned F --out OUT [--beta 0.5 --dare 0.3]
    fgsn baseline wanda    --aligned A --finetuned F --harmful H --out OUT [--q 0.1 --target update]
    fgsn baseline irr      --base B --aligned A --finetuned F --task T --out OUT [--compensate none]
    fgsn baseline sgdg     --aligned A --finetuned F --harmful H --task T --out OUT [--rounds 20]
"""

from __future__ import annotations

import argparse

from fgsn.cli.common import BASELINE_HELPS, HELPS, SKIP, add_config_flag
from fgsn.config import add_option_flags, options_from_args, own_descriptions_first


def configure(p: argparse.ArgumentParser) -> None:
    from fgsn.pipeline.registry import methods

    bs = p.add_subparsers(dest="baseline_method", metavar="METHOD")
    helps = {**HELPS, **BASELINE_HELPS}
    for spec in methods("baseline"):
        q = bs.add_parser(spec.kind, help=spec.doc, description=spec.doc)
        add_config_flag(q)
        add_option_flags(q, spec.options, own_descriptions_first(spec.options, helps))
        q.set_defaults(func=run, kind=spec.kind)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def run(args: argparse.Namespace) -> int:
    from fgsn.pipeline.registry import option_class, runner

    opts = options_from_args(option_class(args.kind), args, skip=SKIP)
    res = runner(args.kind)(opts)
    m = res.manifest
    print(f"{args.kind} checkpoint: {res.out}")
    print(f"  parameters modified: {m['masked']:,} = {100 * m['modified_fraction']:.3f}% of all, "
          f"{100 * m['modified_fraction_edited']:.2f}% of the tensors considered")
    return 0
