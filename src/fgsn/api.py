"""The public Python API: the same steps as the CLI, as plain functions returning typed results.

    import fgsn.api as fgsn
    res = fgsn.project(base="B", aligned="A", finetuned="F", harmful=["h.jsonl"], task=["t.jsonl"], out="out/")
    print(res.modified_fraction, res.out)
"""

from __future__ import annotations

from fgsn.config import build_options
from fgsn.edit.run import ProjectOptions, ProjectResult, run_project
from fgsn.locate.run import LocateOptions, LocateResult, run_locate


def locate(*, out: str | None = None, options: LocateOptions | None = None, **kw) -> LocateResult:
    """Find safety layers and neuron masks; with `out`, save them as a locate run folder."""
    opts = options.model_copy(update=kw) if options else build_options(LocateOptions, kw)
    return run_locate(opts, out=out or opts.out)


def project(*, options: ProjectOptions | None = None, **kw) -> ProjectResult:
    """Locate (or reuse `locate_run`) and write the repaired checkpoint to `out`."""
    opts = options.model_copy(update=kw) if options else build_options(ProjectOptions, kw)
    return run_project(opts)


def revert(*, options=None, **kw):
    """Iterative reversion with rollback (fgsn.edit.revert): write the repaired checkpoint to `out`."""
    from fgsn.edit.revert import RevertOptions, run_revert

    opts = options.model_copy(update=kw) if options else build_options(RevertOptions, kw)
    return run_revert(opts)


def evaluate(*args, **kw):
    """Generate, judge and score models side by side (see fgsn.evaluate)."""
    from fgsn.evaluate import evaluate as _evaluate

    return _evaluate(*args, **kw)


__all__ = ["locate", "project", "revert", "evaluate", "LocateOptions", "ProjectOptions", "LocateResult", "ProjectResult"]
