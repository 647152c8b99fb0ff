"""The one registry of edit methods: every repair fgsn can run, by name, with its options class and
its run function. `fgsn compare`, `fgsn demo`, `fgsn sweep`, `fgsn bench`, `fgsn repair`, `fgsn
baseline` and the edit worker look methods up here; none of them branches on a method's name.

Two levels:

- a *method* (`EditMethod`, keyed by `kind`): one code path: fgsn (locate + project),
  activation-match, revert, the baselines safelora, resta, wanda, irr, sgdg, and Self-Reminder (an
  inference-time setting, no checkpoint). It names its options class (torch-free: the command line
  builds flags from it), its run function ("module:function", imported only when it runs: torch),
  the locate inputs a comparison must give it, and how a comparison fills its options
  (`from_compare`);
- a *variant* (`Method`, keyed by `name`): what `--methods` lists: a method with preset overrides
  of its options. FGSN's ablations and named presets are variants of fgsn (`fgsn-svd`: projector
  svd; `fgsn-paper` / `fgsn-frontier`: `--preset paper` / `--preset frontier`), activation
  matching has its forms; every method is also the variant of its own name, at its defaults.

A new method registers once, `register(EditMethod(...), variants={...})`, and every command above
can run it. This module is torch-free.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fgsn.baselines.options import IRROptions, RestaOptions, SafeLoRAOptions, SGDGOptions, WandaOptions
from fgsn.config import Options, build_options
from fgsn.edit.options import ActivationMatchOptions, CompensateOptions, ProjectOptions, RevertOptions
from fgsn.errors import InputError
from fgsn.locate.options import PRESETS, ProbeOptions
from fgsn.pipeline.options import NOT_FOR_COMPARE

ALL_LAYERS = "all"  # a variant's `layers` override meaning every decoder layer (fgsn: 0-(L-1))
ACTIVATION_MATCH = "activation-match"

# what a method may need from a comparison besides the models
HARMFUL, TASK = "harmful", "task"


@dataclass(frozen=True)
class Method:
    """A name of `--methods` (the results key): method `kind` with `overrides` of its options."""

    name: str
    kind: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> EditMethod:
        return method(self.kind)

    @property
    def edits_weights(self) -> bool:
        return self.spec.edits_weights


@dataclass(frozen=True)
class EditMethod:
    """One repair method: how to build its options and run it, and what a comparison gives it.

    from_compare(opts, overrides, out, num_layers) -> the method's options as a plain dict (what its
    manifest records): what `fgsn compare`'s options (CompareOptions: the top level and the method's
    section) share with the method, the variant's overrides on top, written to `out`. `setting(opts)` is the inference-time setting of
    a method that edits no weight (an object with system_prompt(user_system), suffix, describe())."""

    kind: str
    doc: str
    options: type[Options] | None = None
    run: str | None = None
    needs: tuple[str, ...] = ()
    from_compare: Callable[[Any, dict[str, Any], str, int], dict[str, Any]] | None = None
    setting: Callable[[Any], Any] | None = None
    group: str = "baseline"  # fgsn | editor | baseline | inference (how --help lists it)

    @property
    def edits_weights(self) -> bool:
        return self.run is not None

    def runner(self) -> Callable[[Any], Any]:
        if self.run is None:
            raise InputError(f"{self.kind} writes no checkpoint (it is an evaluation setting)")
        module, _, fn = self.run.partition(":")
        return getattr(importlib.import_module(module), fn)


_METHODS: dict[str, EditMethod] = {}
_VARIANTS: dict[str, Method] = {}


def register(spec: EditMethod, variants: dict[str, dict[str, Any]] | None = None) -> EditMethod:
    """Add a method and its named variants (default: just its own name at its defaults)."""
    if spec.kind in _METHODS:
        raise ValueError(f"edit method {spec.kind!r} is registered twice")
    if spec.edits_weights and (spec.options is None or spec.from_compare is None):
        raise ValueError(f"edit method {spec.kind!r} needs an options class and from_compare")
    _METHODS[spec.kind] = spec
    for name, overrides in (variants if variants is not None else {spec.kind: {}}).items():
        if name in _VARIANTS:
            raise ValueError(f"method name {name!r} is registered twice")
        _VARIANTS[name] = Method(name, spec.kind, dict(overrides))
    return spec


def method(kind: str) -> EditMethod:
    try:
        return _METHODS[kind]
    except KeyError:
        raise InputError(f"unknown edit method {kind!r}; known: {', '.join(_METHODS)}") from None


def methods(group: str | None = None) -> list[EditMethod]:
    """The registered methods in registration order (of one group, if given)."""
    return [m for m in _METHODS.values() if group is None or m.group == group]


def variant(name: str) -> Method:
    try:
        return _VARIANTS[name]
    except KeyError:
        raise InputError(f"unknown method {name!r}; known: {', '.join(_VARIANTS)}") from None


def variant_names() -> list[str]:
    return list(_VARIANTS)


def variants_of(kind: str) -> dict[str, Method]:
    return {n: v for n, v in _VARIANTS.items() if v.kind == kind}


def parse_methods(names: list[str]) -> list[Method]:
    """The variants of a `--methods` value (comma lists, repeatable); unknown or repeated names are errors."""
    out: list[Method] = []
    seen: set[str] = set()
    for raw in names:
        for name in (s.strip() for s in str(raw).split(",")):
            if not name:
                continue
            if name in seen:
                raise InputError(f"--methods: {name!r} is listed twice")
            seen.add(name)
            if name not in _VARIANTS:
                raise InputError(f"--methods: unknown method {name!r}; known: {', '.join(_VARIANTS)}")
            out.append(_VARIANTS[name])
    if not out:
        raise InputError(f"--methods is empty; give a comma list, e.g. fgsn,safelora,resta,wanda,self-reminder "
                         f"(known: {', '.join(_VARIANTS)})")
    return out


def _weight_editor(kind: str) -> EditMethod:
    spec = _METHODS.get(kind)
    if spec is None or not spec.edits_weights:
        editors = ", ".join(m.kind for m in _METHODS.values() if m.edits_weights)
        others = ", ".join(m.kind for m in _METHODS.values() if not m.edits_weights)
        raise InputError(f"unknown weight-editing method {kind!r}; use {editors} ({others} writes no checkpoint)")
    return spec


def option_class(kind: str) -> type[Options]:
    """The options class of a weight-editing method (torch-free: the CLI builds flags from it)."""
    cls = _weight_editor(kind).options
    assert cls is not None
    return cls


def runner(kind: str) -> Callable[[Any], Any]:
    """The run function of a weight-editing method (imports its module: torch)."""
    return _weight_editor(kind).runner()


def run_method(kind: str, options: dict[str, Any]):
    """Build the method's options from a plain dict and run it (used in-process and by the worker)."""
    opts = build_options(option_class(kind), options, f"{kind} options")
    return runner(kind)(opts)


# -- how a comparison fills each method's options ------------------------------------------------------
def _common(c, out: str) -> dict[str, Any]:
    """What every weight editor shares with the comparison: the models and how the output is written."""
    return {"aligned": c.aligned, "finetuned": c.finetuned, "base": c.base, "allow_pickle": c.allow_pickle,
            "seed": c.seed, "max_shard_gb": c.max_shard_gb, "out": out, "overwrite": True}


def _probe(c) -> dict[str, Any]:
    return {k: getattr(c, k) for k in ProbeOptions.model_fields}


def _fgsn(c, over: dict[str, Any], out: str, num_layers: int) -> dict[str, Any]:
    d = {k: getattr(c, k) for k in ProjectOptions.model_fields if k not in NOT_FOR_COMPARE}
    d.update(over, out=out, overwrite=True)
    if d.get("layers") == ALL_LAYERS:
        d["layers"] = f"0-{num_layers - 1}"
    return d


def _activation_match(c, over: dict[str, Any], out: str, num_layers: int) -> dict[str, Any]:
    return {**_common(c, out), **_probe(c), "harmful": c.harmful, "task": c.task, "modules": c.modules,
            **c.activation_match.model_dump(), "refusal_text": c.refusal_text, **over}


def _revert(c, over: dict[str, Any], out: str, num_layers: int) -> dict[str, Any]:
    # shared meaning with fgsn's: the refusal loss and the compensation
    return {**_sgdg(c, {}, out, num_layers), "refusal_text": c.refusal_text,
            **{k: getattr(c, k) for k in CompensateOptions.model_fields}, **over}


def _sgdg(c, over: dict[str, Any], out: str, num_layers: int) -> dict[str, Any]:
    # IRR and SGDG keep their published defaults unless --method-options says otherwise
    return {**_common(c, out), **_probe(c), "harmful": c.harmful, "task": c.task, "modules": c.modules, **over}


def _safelora(c, over: dict[str, Any], out: str, num_layers: int) -> dict[str, Any]:
    return {**_common(c, out), **c.safelora.model_dump(), "modules": c.modules, **over}


def _resta(c, over: dict[str, Any], out: str, num_layers: int) -> dict[str, Any]:
    return {**_common(c, out), **c.resta.model_dump(), **over}


def _wanda(c, over: dict[str, Any], out: str, num_layers: int) -> dict[str, Any]:
    return {**_common(c, out), **_probe(c), "harmful": c.harmful, **c.wanda.model_dump(), "modules": c.modules,
            **over}


def _irr(c, over: dict[str, Any], out: str, num_layers: int) -> dict[str, Any]:
    return {**_common(c, out), **_probe(c), "task": c.task, "modules": c.modules, **over}


def _self_reminder(c):
    from fgsn.baselines.self_reminder import SelfReminder

    return SelfReminder(**c.self_reminder.model_dump())


# -- the methods ---------------------------------------------------------------------------------------
register(EditMethod(
    "fgsn", "FGSN: project the fine-tuning update of the safety neurons in the safety layers onto the safety "
            "direction V = W_aligned - W_base", ProjectOptions, "fgsn.pipeline.project:run_project",
    (HARMFUL, TASK), _fgsn, group="fgsn"),
    variants={
        "fgsn": {},                                      # the options as given (the paper's recipe by default)
        "fgsn-layers-only": {"q": 1.0, "p": 0.0},        # every weight of every target module in the safety layers
        "fgsn-neurons-only": {"layers": ALL_LAYERS},     # neuron masks with no layer restriction
        "fgsn-svd": {"projector": "svd"},                # exact projector on the top singular vectors of V
        "fgsn-safelora": {"projector": "safelora"},      # C = V V^T / ||V||_F
        "fgsn-neuron": {"granularity": "neuron"},        # whole output rows
        "fgsn-weight": {"granularity": "weight"},        # single weights
        "fgsn-no-task": {"p": 0.0},                      # no task exclusion
        "fgsn-frontier": dict(PRESETS["frontier"]),      # --preset frontier: snip-signed, all layers, 10% budget
        "fgsn-paper": dict(PRESETS["paper"]),            # --preset paper, whatever the other options say
    })
register(EditMethod(
    ACTIVATION_MATCH, "closed-form activation matching: each linear module reproduces the aligned model on harmful "
                      "inputs and the fine-tune on task inputs", ActivationMatchOptions,
    "fgsn.edit.activation_match_run:run_activation_match", (HARMFUL, TASK), _activation_match, group="editor"),
    variants={
        "activation-match": {},                          # ridge form at the compare options (editor defaults)
        "activation-match-nullspace": {"form": "nullspace"},  # AlphaEdit-style: the change avoids the task inputs
        "activation-match-seq": {"sequential": True},    # each layer's Grams from the model repaired so far
        "activation-match-located": {"layers": "search"},  # only the safety layers of locate's cosine-gap search
        # G_h without the chat template's head, which every harmful and task sequence shares
        "activation-match-noprefix": {"shared_prefix": "skip"},
    })
register(EditMethod(
    "revert", "iterative reversion with rollback: revert the fine-tuned entries whose return to the aligned value "
              "lowers a safety loss, round after round", RevertOptions, "fgsn.edit.revert:run_revert",
    (HARMFUL, TASK), _revert, group="editor"))
register(EditMethod(
    "safelora", "SafeLoRA (Hsu et al. 2024): project low-cosine modules' updates onto V V^T/||V||_F",
    SafeLoRAOptions, "fgsn.baselines.safelora:run_safelora", (), _safelora))
register(EditMethod(
    "resta", "RESTA (Bhardwaj et al. 2024): add beta * (aligned - unaligned), optional DARE",
    RestaOptions, "fgsn.baselines.resta:run_resta", (), _resta))
register(EditMethod(
    "wanda", "Wanda safety-neuron pruning (Antidote-style): remove top Wanda-scored weights on harmful prompts",
    WandaOptions, "fgsn.baselines.wanda:run_wanda", (HARMFUL,), _wanda))
register(EditMethod(
    "irr", "IRR (Wu et al. 2025): revert update entries whose sign opposes aligned - base, then recalibrate the "
           "kept ones on task inputs (OBS / SparseGPT)", IRROptions, "fgsn.baselines.irr:run_irr", (TASK,), _irr))
register(EditMethod(
    "sgdg", "SGDG rollback (Yang et al. 2025): 20 rounds of gradient-selected reversion to the aligned values on a "
            "hidden-state cosine loss, with a rollback on a task floor", SGDGOptions,
    "fgsn.baselines.sgdg:run_sgdg", (HARMFUL, TASK), _sgdg))
register(EditMethod(
    "self-reminder", "Self-Reminder (Xie et al. 2023): the fine-tuned model with a responsibility system prompt and "
                     "reminder (an evaluation setting, no checkpoint)", setting=_self_reminder, group="inference"))
