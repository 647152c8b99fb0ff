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

The closed-form activation-matching editor (fgsn.edit.activation_match_run) has presets too:

    activation-match            ridge form, the editor's defaults (all layers, lam 1, mu 1e-3)
    activation-match-nullspace  form = nullspace (AlphaEdit-style: the change avoids the task inputs)
    activation-match-seq        sequential = true (each layer's Grams from the model repaired so far)

Beside the baselines, `revert` is fgsn's iterative reversion with rollback (fgsn.edit.revert) with
its own defaults; `sgdg` is the same code at SGDG's published defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fgsn.config import build_options
from fgsn.errors import InputError
from fgsn.locate.options import PRESETS

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
ACTIVATION_MATCH = "activation-match"
AM_PRESETS: dict[str, dict[str, Any]] = {
    "activation-match": {},
    "activation-match-nullspace": {"form": "nullspace"},
    "activation-match-seq": {"sequential": True},
}
BASELINES = ("safelora", "resta", "wanda", "irr", "sgdg")
INFERENCE = ("self-reminder",)
EDITORS = ("revert",)
METHODS = (*FGSN_PRESETS, *AM_PRESETS, *EDITORS, *BASELINES, *INFERENCE)


@dataclass(frozen=True)
class Method:
    name: str           # as given in --methods (the results key)
    kind: str           # fgsn | activation-match | revert | safelora | resta | wanda | irr | sgdg | self-reminder
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
            elif name in AM_PRESETS:
                out.append(Method(name, ACTIVATION_MATCH, AM_PRESETS[name]))
            elif name in BASELINES or name in INFERENCE or name in EDITORS:
                out.append(Method(name, name, {}))
            else:
                raise InputError(f"--methods: unknown method {name!r}; known: {', '.join(METHODS)}")
    if not out:
        raise InputError(f"--methods is empty; give a comma list, e.g. fgsn,safelora,resta,wanda,self-reminder "
                         f"(known: {', '.join(METHODS)})")
    return out


def option_class(kind: str):
    """The options class of a weight-editing method (torch-free: the CLI builds flags from it)."""
    from fgsn.baselines import options as bo

    if kind == "fgsn":
        from fgsn.edit.options import ProjectOptions

        return ProjectOptions
    if kind == ACTIVATION_MATCH:
        from fgsn.edit.activation_match_run import ActivationMatchOptions

        return ActivationMatchOptions
    if kind == "revert":
        from fgsn.edit.options import RevertOptions

        return RevertOptions
    classes = {"safelora": bo.SafeLoRAOptions, "resta": bo.RestaOptions, "wanda": bo.WandaOptions,
               "irr": bo.IRROptions, "sgdg": bo.SGDGOptions}
    if kind in classes:
        return classes[kind]
    raise InputError(f"unknown weight-editing method {kind!r}; use fgsn, {ACTIVATION_MATCH}, "
                     f"{', '.join((*EDITORS, *BASELINES))} "
                     "(self-reminder writes no checkpoint)")


def runner(kind: str) -> Callable[[Any], Any]:
    if kind == "fgsn":
        from fgsn.pipeline.project import run_project

        return run_project
    if kind == ACTIVATION_MATCH:
        from fgsn.edit.activation_match_run import run_activation_match

        return run_activation_match
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
    raise InputError(f"unknown weight-editing method {kind!r}; use fgsn, {ACTIVATION_MATCH}, "
                     f"{', '.join((*EDITORS, *BASELINES))}")


def run_method(kind: str, options: dict[str, Any]):
    """Build the method's options from a plain dict and run it (used in-process and by the worker)."""
    opts = build_options(option_class(kind), options, f"{kind} options")
    return runner(kind)(opts)
