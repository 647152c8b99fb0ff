"""The public Python API: the same steps as the CLI, as plain functions returning typed results.

    import fgsn.api as fgsn
    res = fgsn.project(base="B", aligned="A", finetuned="F", harmful=["h.jsonl"], task=["t.jsonl"], out="out/")
    print(res.modified_fraction, res.out)
"""

from __future__ import annotations

from fgsn.config import with_overrides
from fgsn.edit.run import ProjectOptions, ProjectResult, run_project
from fgsn.locate.run import LocateOptions, LocateResult, run_locate


def locate(*, out: str | None = None, options: LocateOptions | None = None, **kw) -> LocateResult:
    """Find safety layers and neuron masks; with `out`, save them as a locate run folder.
    `options` and keyword overrides are validated together, as the CLI validates flags."""
    opts = with_overrides(LocateOptions, options, kw)
    return run_locate(opts, out=out or opts.out)


def project(*, options: ProjectOptions | None = None, **kw) -> ProjectResult:
    """Locate (or reuse `locate_run`) and write the repaired checkpoint to `out`."""
    opts = with_overrides(ProjectOptions, options, kw)
    return run_project(opts)


def activation_match(*, options=None, **kw):
    """The closed-form activation-matching editor (fgsn.edit.activation_match_run): write the
    repaired checkpoint to `out`; returns its BaselineResult (out, manifest). With `ledger` and
    `category` it is one continual step (fgsn.edit.activation_match_ledger): `finetuned` the
    latest step's output, `kappa` / `old_target` / `keep_old` how the earlier categories are kept."""
    from fgsn.edit.activation_match_run import ActivationMatchOptions, run_activation_match

    return run_activation_match(with_overrides(ActivationMatchOptions, options, kw))


def revert(*, options=None, **kw):
    """Iterative reversion with rollback (fgsn.edit.revert): write the repaired checkpoint to `out`.
    `options` and keyword overrides are validated together, as the CLI validates flags."""
    from fgsn.edit.revert import RevertOptions, run_revert

    return run_revert(with_overrides(RevertOptions, options, kw))


def evaluate(*args, **kw):
    """Generate, judge and score models side by side (see fgsn.evaluate)."""
    from fgsn.evaluate import evaluate as _evaluate

    return _evaluate(*args, **kw)


__all__ = ["locate", "project", "activation_match", "revert", "evaluate", "LocateOptions", "ProjectOptions",
           "LocateResult", "ProjectResult"]
