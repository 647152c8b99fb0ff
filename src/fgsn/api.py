"""The public Python API: the same steps as the CLI, as plain functions returning typed results.

    import fgsn.api as fgsn
    res = fgsn.project(base="B", aligned="A", finetuned="F", harmful=["h.jsonl"], task=["t.jsonl"], out="out/")
    print(res.modified_fraction, res.out)
"""

from __future__ import annotations

from fgsn.artifacts.locate_run import LocateRun
from fgsn.config import with_overrides
from fgsn.edit.options import ProjectOptions
from fgsn.locate.run import LocateOptions, run_locate
from fgsn.pipeline.project import ProjectResult, run_project


def locate(*, out: str | None = None, options: LocateOptions | None = None, **kw) -> LocateRun:
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
    repaired checkpoint to `out`; returns its EditResult (out, manifest). With `ledger` and
    `category` it is one continual step (fgsn.edit.activation_match_ledger): `finetuned` the
    latest step's output, `kappa` / `old_target` / `keep_old` how the earlier categories are kept."""
    from fgsn.edit.activation_match_run import run_activation_match
    from fgsn.edit.options import ActivationMatchOptions

    return run_activation_match(with_overrides(ActivationMatchOptions, options, kw))


def revert(*, options=None, **kw):
    """Iterative reversion with rollback (fgsn.edit.revert): write the repaired checkpoint to `out`.
    `options` and keyword overrides are validated together, as the CLI validates flags."""
    from fgsn.edit.options import RevertOptions
    from fgsn.edit.revert import run_revert

    return run_revert(with_overrides(RevertOptions, options, kw))


def baseline(method: str, *, options=None, **kw):
    """Run one weight-editing method of the registry (fgsn.pipeline.registry: "safelora", "resta",
    "wanda", "irr", "sgdg", or any other registered editor) with its options; returns its result
    (out, manifest). `options` and keyword overrides are validated together, as the CLI does."""
    from fgsn.pipeline.registry import option_class, runner

    return runner(method)(with_overrides(option_class(method), options, kw, f"{method} options"))


def compare(*, options=None, **kw) -> dict:
    """`fgsn compare` from Python (CompareOptions: methods, models, prompts, evaluation settings);
    returns the results dict (also written to `out`/results.json)."""
    from fgsn.pipeline.compare import run_compare
    from fgsn.pipeline.options import CompareOptions

    return run_compare(with_overrides(CompareOptions, options, kw, "compare options"))


def sweep(*, options=None, **kw) -> dict:
    """`fgsn sweep` from Python (SweepOptions); returns the sweep.json document."""
    from fgsn.pipeline.sweep import SweepOptions, run_sweep

    return run_sweep(with_overrides(SweepOptions, options, kw, "sweep options"))


def bench(*, options=None, **kw) -> dict:
    """`fgsn bench` from Python (BenchOptions; `preset="quick"` for the smoke check); returns its results."""
    from fgsn.pipeline.bench import BenchOptions, run_bench, with_preset

    opts = with_overrides(BenchOptions, options, kw, "bench options")
    return run_bench(with_preset(opts.model_dump(exclude_unset=True)))


def repair(*, options=None, **kw) -> dict:
    """`fgsn repair` from Python (RepairOptions): search the methods and their strength and write the
    cheapest edit that meets the target to `out`; returns the repair.json document."""
    from fgsn.pipeline.repair import RepairOptions, run_repair

    return run_repair(with_overrides(RepairOptions, options, kw, "repair options"))


def evaluate(*args, **kw):
    """Generate, judge and score models side by side (fgsn.evaluate.evaluate, which stops at
    results.json), then render the report of the run folder unless `options.report` is off."""
    import inspect

    from fgsn.evaluate import EvalOptions
    from fgsn.evaluate import evaluate as _evaluate
    from fgsn.report import write_report

    res = _evaluate(*args, **kw)
    opts = inspect.signature(_evaluate).bind(*args, **kw).arguments.get("options") or EvalOptions()
    if opts.report:
        write_report(res.rundir, res.results)
    return res


__all__ = ["locate", "project", "activation_match", "revert", "baseline", "compare", "sweep", "bench", "repair",
           "evaluate", "LocateOptions", "ProjectOptions", "LocateRun", "ProjectResult"]
