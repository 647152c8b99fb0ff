"""`fgsn activation-match`: the closed-form activation-matching editor (fgsn.edit.activation_match_run)."""

from __future__ import annotations

import argparse

from fgsn.cli.common import HELPS, configure_options
from fgsn.config import options_from_args, own_descriptions_first
from fgsn.edit.options import ActivationMatchOptions

DESCRIPTION = ("Closed-form activation matching: per linear module, W = W_f + (W_a - W_f) G_h (G_h + lam G_t + mu I)^-1 "
               "from the input Grams on harmful prompts (G_h) and task examples (G_t), or its null-space form; writes "
               "the repaired checkpoint and fgsn-manifest.json (share of entries changed, rank and relative size of "
               "each change)")


def configure(p: argparse.ArgumentParser) -> None:
    configure_options(p, ActivationMatchOptions, run, own_descriptions_first(ActivationMatchOptions, HELPS))


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def run(args: argparse.Namespace) -> int:
    from fgsn.edit.activation_match_run import LORA_NOTE, run_activation_match

    opts = options_from_args(ActivationMatchOptions, args)
    res = run_activation_match(opts)
    m = res.manifest
    tot = m["activation_match"]["totals"]
    print(f"activation-match checkpoint: {res.out}")
    print(f"  form {opts.form}, lam {m['activation_match']['lam']}, mu {opts.mu}, "
          f"{'sequential' if opts.sequential else 'one pass'}; modules changed: {tot['modules_edited']}/{tot['modules']}")
    print(f"  entries changed: {m['changed']:,} = {100 * m['changed_fraction']:.2f}% of all parameters; "
          f"||change|| / ||W_f - W_a|| = {_fmt(tot['change_ratio'])} (max per module {_fmt(tot['max_change_ratio'])})")
    print(f"  harmful output gap closed (module level): {_fmt(tot['harmful_gap_closed'])}; mean task output drift "
          f"{_fmt(tot['mean_task_drift'])}")
    c = m["activation_match"].get("continual")
    if c is not None:
        ct = c["totals"]
        earlier = ", ".join(c["earlier"]) or "none"
        print(f"  ledger {c['ledger']}: step {c['step']}, category {c['category']} (earlier: {earlier}); rows changed "
              f"{ct['rows_changed']:,}, of them changed by an earlier step {ct['rows_again']:,}")
        if c["earlier"]:
            print(f"  earlier categories' module outputs: mean relative change {_fmt(ct['mean_old_drift'])} (max "
                  f"{_fmt(ct['max_old_drift'])}), kappa {c['settings']['kappa']}, keep-old {c['settings']['keep_old']}; "
                  f"cos(change, earlier steps' change) {_fmt(ct['overlap_cos'])}")
    if m["activation_match"]["lora_merged"]:
        print(f"  note: {LORA_NOTE}")
    return 0
