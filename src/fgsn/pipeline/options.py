"""The options of `fgsn compare`, which every "edit several, evaluate together" command fills
(demo, sweep, bench, repair): torch-free, so that the command line builds its flags from them."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, field_validator

from fgsn.baselines.self_reminder import SUFFIX, SYSTEM
from fgsn.edit.options import ProjectOptions
from fgsn.evaluate.options import EvalOptions

DEFAULT_EVAL_HARMFUL = ("builtin:harmbench?split=test&limit=100", "builtin:strongreject?split=test&limit=100")
# Fields that make no sense for a comparison: each method writes its own folder, and compare sets the
# evaluation's per-model settings itself (the fine-tuned adapter, Self-Reminder's system prompt and
# suffix), so no flag is offered for them and a YAML value is an error.
NOT_FOR_COMPARE = ("ledger", "locate_run", "output_format", "category", "adapters", "systems", "suffixes")


class CompareOptions(ProjectOptions, EvalOptions):
    """Inputs and options of `fgsn compare`: every option of `fgsn project` (used by the FGSN
    methods, and shared with the baselines where the meaning is the same: models, target modules,
    seed, device, prompts' chat template) and of `fgsn eval`, plus the baselines' own."""

    methods: list[str]
    with_references: bool = False
    eval_harmful: list[str] = Field(default_factory=lambda: list(DEFAULT_EVAL_HARMFUL))
    eval_attack: list[str] = Field(default_factory=list)
    benign_alarming: str | None = "builtin:alarming"
    utility: list[str] = Field(default_factory=list)
    reference: list[str] = Field(default_factory=list)
    judge: str = "keyword"
    isolate: bool = True
    # SafeLoRA
    safelora_select: Literal["threshold", "number"] = "threshold"
    safelora_threshold: float = Field(0.5, ge=-1, le=1)
    safelora_k: int = Field(10, ge=1)
    # RESTA
    resta_beta: float = Field(0.5, ge=0)
    resta_dare: float = Field(0.0, ge=0, lt=1)
    resta_unaligned: str | None = None
    resta_scope: Literal["all", "linear"] = "all"
    # Wanda
    wanda_q: float = Field(0.1, ge=0, le=1)
    wanda_target: Literal["update", "weight"] = "update"
    wanda_group: Literal["row", "module"] = "row"
    wanda_granularity: Literal["weight", "neuron"] = "weight"
    wanda_score: Literal["wanda", "wanda-delta"] = "wanda"
    # activation matching (defaults: the editor's own; presets in methods.AM_PRESETS override them)
    activation_match_form: Literal["ridge", "nullspace"] = "ridge"
    activation_match_lam: float = Field(1.0, ge=0)
    activation_match_mu: float = Field(1e-3, ge=0)
    activation_match_null_energy: float = Field(0.01, gt=0, lt=1)
    activation_match_sequential: bool = False
    activation_match_harmful_answer: Literal["none", "refusal", "aligned"] = "none"
    # Self-Reminder
    self_reminder_system: str = SYSTEM
    self_reminder_suffix: str = SUFFIX
    # any method's own options, by method name (IRR, SGDG and revert run at their defaults otherwise)
    method_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per method name, options of that method that override what compare "
                                          "passes it, e.g. {sgdg: {rounds: 5}} in YAML or '{\"sgdg\": {\"rounds\": "
                                          "5}}' as a flag", json_schema_extra={"json": True, "metavar": "JSON"})

    @field_validator("methods", "eval_harmful", "eval_attack", "utility", "reference", mode="before")
    @classmethod
    def _listify_compare(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("method_options", mode="before")
    @classmethod
    def _json_mapping(cls, v):
        if isinstance(v, str):
            try:
                return json.loads(v)
            except json.JSONDecodeError as e:
                raise ValueError(f"not a JSON mapping of method name to options ({e})") from e
        return v
