"""`fgsn revert`: the iterative reversion with rollback (fgsn.edit.revert) from the command line.

    fgsn revert --aligned A --finetuned F --harmful H --task T --out OUT \\
                [--rounds 5 --per-round 0.02 --loss refusal-nll --compensate task]
"""

from __future__ import annotations

import argparse

from fgsn.cli.common import HELPS, configure_options
from fgsn.config import options_from_args, own_descriptions_first
from fgsn.edit.options import RevertOptions

DESCRIPTION = ("Round after round, revert to its aligned value each fine-tuned entry whose reversion lowers the safety "
               "loss to first order (the top --per-round by score), re-scoring on the model repaired so far; then, if "
               "the validation task NLL crosses the floor, put back the reverted entries that matter most on the "
               "task; optionally compensate the kept entries on task inputs.")


def configure(p: argparse.ArgumentParser) -> None:
    configure_options(p, RevertOptions, run, own_descriptions_first(RevertOptions, HELPS))


def run(args: argparse.Namespace) -> int:
    from fgsn.edit.revert import run_revert

    res = run_revert(options_from_args(RevertOptions, args))
    m = res.manifest
    info = m["revert"]
    print(f"reverted checkpoint: {res.out}")
    print(f"  parameters reverted: {m['masked']:,} = {100 * m['modified_fraction']:.3f}% of all, "
          f"{100 * m['modified_fraction_edited']:.2f}% of the target modules; changed: {m['changed']:,}")
    rounds = info["rounds"]
    print(f"  safety loss {rounds[0]['safety_loss']:.4f} -> {info['safety_loss_final']:.4f} over {len(rounds)} rounds")
    v = info.get("validation")
    if v:
        print(f"  validation task NLL: fine-tuned {v['nll_finetuned']:.4f}, after the rounds {v['nll_after_rounds']:.4f}, "
              f"final {v['nll_final']:.4f} (ceiling {v['ceiling']:.4f}; {len(info['rollbacks'])} rollback(s))")
    if info.get("compensation"):
        print(f"  compensated {len(info['compensation'])} modules on task inputs")
    if m.get("ledger_step") is not None:
        for cat, c in m["categories"].items():
            print(f"  ledger step {m['ledger_step']}, category {cat}: {c['masked']:,} reverted, {c['overlap']:,} of "
                  "them reverted by an earlier step (entries earlier steps reverted stay as they are)")
    return 0
