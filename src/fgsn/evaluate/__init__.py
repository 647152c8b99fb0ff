"""Evaluation harness: generation, judges, metrics (ASR, harmfulness, over-refusal, utility, NLL)."""

from __future__ import annotations

from fgsn.evaluate.options import EvalOptions

__all__ = ["EvalOptions", "EvalResult", "ModelScores", "evaluate"]


def __getattr__(name: str):
    # Lazy: `import fgsn.evaluate` stays cheap (no torch/transformers) for the CLI's --help.
    if name in ("evaluate", "EvalResult", "ModelScores"):
        from fgsn.evaluate import api

        return getattr(api, name)
    raise AttributeError(name)
