"""The methods `fgsn compare` knows, by name: the baselines and FGSN with its ablations.

FGSN ablations are presets: named overrides of `fgsn project`'s options (ProjectOptions), run by
the same code path as `fgsn project`:

    fgsn               the options as given (the paper's recipe with the project's defaults)
    fgsn-layers-only   q = 1, p = 0: every weight of every target module in the safety layers
    fgsn-neurons-only  layers = all: neuron masks with no layer restriction
    fgsn-svd           projector = svd (exact orthogonal projector on the top singular vectors of V)
    fgsn-safelora      projector = safelora (C = V V^T / ||V||_F)
    fgsn-neuron        granularity = neuron (whole output rows)
    fgsn-weight        granularity = weight (single weights)
    fgsn-no-task       p = 0: no task exclusion
    fgsn-frontier      --preset frontier: snip-signed scores, all layers, 10% of each edited module

Beside the baselines, `revert` is fgsn's iterative reversion with rollback (fgsn.edit.revert) with
its own defaults; `sgdg` is the same code at SGDG's published defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fgsn.config import build_options
from fgsn.errors import InputError
from fgsn.locate.run import PRESETS

ALL_LAYERS = "all"

FGSN_PRESETS: dict[str, dict[str, Any]] = {
    "fgsn": {},
    "fgsn-layers-only": {"q": 1.0, "p": 0.0},
    "fgsn-neurons-only": {"layers": ALL_LAYERS},
    "fgsn-svd": {"projector": "svd"},
    "fgsn-safelora": {"projector": "safelora"},
    "fgsn-neuron": {"granularity": "neuron"},
    "fgsn-weight": {"granularity": "weight"},
    "fgsn-no-task": {"p": 0.0},
    "fgsn-frontier": dict(PRESETS["frontier"]),
}
BASELINES = ("safelora", "resta", "wanda", "irr", "sgdg")
INFERENCE = ("self-reminder",)
EDITORS = ("revert",)
METHODS = (*FGSN_PRESETS, *EDITORS, *BASELINES, *INFERENCE)


@dataclass(frozen=True)
class Method:
    name: str           # as given in --methods (the results key)
    kind: str           # fgsn | revert | safelora | resta | wanda | irr | sgdg | self-reminder
    overrides: dict[str, Any]

    @property
    def edits_weights(self) -> bool:
        return self.kind != "self-reminder"


def parse_methods(names: list[str]) -> list[Method]:
    out: list[Method] = []
    seen: set[str] = set()
    for raw in names:
        for name in (s.strip() for s in str(raw).split(",")):
            if not name:
                continue
            if name in seen:
                raise InputError(f"--methods: {name!r} is listed twice")
            seen.add(name)
            if name in FGSN_PRESETS:
                out.append(Method(name, "fgsn", FGSN_PRESETS[name]))
            elif name in BASELINES or name in INFERENCE or name in EDITORS:
                out.append(Method(name, name, {}))
            else:
                raise InputError(f"--methods: unknown method {name!r}; known: {', '.join(METHODS)}")
    if not out:
        raise InputError(f"--methods is empty; give a comma list, e.g. fgsn,safelora,resta,wanda,self-reminder "
                         f"(known: {', '.join(METHODS)})")
    return out


def option_class(kind: str):
    if kind == "fgsn":
        from fgsn.edit.run import ProjectOptions

        return ProjectOptions
    if kind == "safelora":
        from fgsn.baselines.safelora import SafeLoRAOptions

        return SafeLoRAOptions
    if kind == "resta":
        from fgsn.baselines.resta import RestaOptions

        return RestaOptions
    if kind == "wanda":
        from fgsn.baselines.wanda import WandaOptions

        return WandaOptions
    if kind == "irr":
        from fgsn.baselines.irr import IRROptions

        return IRROptions
    if kind == "sgdg":
        from fgsn.baselines.sgdg import SGDGOptions

        return SGDGOptions
    if kind == "revert":
        from fgsn.edit.revert import RevertOptions

        return RevertOptions
    raise InputError(f"unknown weight-editing method {kind!r}; use fgsn, {', '.join((*EDITORS, *BASELINES))} "
                     "(self-reminder writes no checkpoint)")


def runner(kind: str) -> Callable[[Any], Any]:
    if kind == "fgsn":
        from fgsn.edit.run import run_project

        return run_project
    if kind == "safelora":
        from fgsn.baselines.safelora import run_safelora

        return run_safelora
    if kind == "resta":
        from fgsn.baselines.resta import run_resta

        return run_resta
    if kind == "wanda":
        from fgsn.baselines.wanda import run_wanda

        return run_wanda
    if kind == "irr":
        from fgsn.baselines.irr import run_irr

        return run_irr
    if kind == "sgdg":
        from fgsn.baselines.sgdg import run_sgdg

        return run_sgdg
    if kind == "revert":
        from fgsn.edit.revert import run_revert

        return run_revert
    raise InputError(f"unknown weight-editing method {kind!r}; use fgsn, {', '.join((*EDITORS, *BASELINES))}")


def run_method(kind: str, options: dict[str, Any]):
    """Build the method's options from a plain dict and run it (used in-process and by the worker)."""
    opts = build_options(option_class(kind), options, f"{kind} options")
    return runner(kind)(opts)
