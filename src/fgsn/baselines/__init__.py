"""Other defences behind the same interface as fgsn, for side-by-side comparison (`fgsn compare`).

Weight-editing baselines (each writes a checkpoint loadable by transformers plus an
`fgsn-manifest.json` in fgsn's schema):
- SafeLoRA (Hsu et al. 2024): `fgsn.baselines.safelora.run_safelora`
- RESTA (Bhardwaj et al. 2024): `fgsn.baselines.resta.run_resta`
- Wanda safety-neuron pruning (Sun et al. 2024 scores, Antidote-style removal): `fgsn.baselines.wanda.run_wanda`

Inference-time baseline (no checkpoint; an evaluation setting):
- Self-Reminder (Xie et al. 2023): `fgsn.baselines.self_reminder.SelfReminder`

FGSN ablations are presets of `fgsn project`'s options: `fgsn.baselines.methods.FGSN_PRESETS`.
The comparison itself: `fgsn.baselines.compare.run_compare(CompareOptions(...))`.
"""

from __future__ import annotations

__all__ = ["compare", "run_baseline"]


def run_baseline(method: str, **options):
    """Run one weight-editing baseline ("safelora", "resta" or "wanda") with keyword options;
    returns its EditResult (out, manifest)."""
    from fgsn.baselines.methods import run_method

    return run_method(method, options)


def compare(**options):
    """`fgsn compare` from Python: keyword options of CompareOptions; returns the results dict."""
    from fgsn.baselines.compare import CompareOptions, run_compare
    from fgsn.config import build_options

    return run_compare(build_options(CompareOptions, options, "compare options"))
