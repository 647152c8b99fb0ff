"""The options of `fgsn compare`, which every "edit several, evaluate together" command fills
(demo, sweep, bench, repair): torch-free, so that the command line builds its flags from them.

They are nested: at the top level, `fgsn project`'s options (the FGSN methods use them; the other
methods share them where the meaning is the same: models, prompts, target modules, device, dtype,
batch size, chat template, seed) and the comparison's own; in sections, the evaluation (`eval`:
every option of `fgsn eval`) and each baseline's settings (`safelora`, `resta`, `wanda`,
`activation_match`, `self_reminder`). In YAML:

    dtype: fast                   # the edits' probes (and the evaluation, unless eval.dtype says otherwise)
    eval: {dtype: float32, batch_size: 64, max_new_tokens: 24}
    safelora: {select: number, k: 5}

The flags keep their spellings: `--max-new-tokens` fills eval.max_new_tokens, `--safelora-k`
safelora.k; the settings the evaluation shares with the edits have `--eval-` flags of their own
(`--eval-dtype`, `--eval-batch-size`, ...), defaulting to the edits' (`--dtype`, `--batch-size`).
The old flat YAML keys (`max_new_tokens:`, `safelora_k:`) are still read, with a deprecation
warning naming where each goes.
"""

from __future__ import annotations

import json
import warnings
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from fgsn.baselines.self_reminder import SUFFIX, SYSTEM
from fgsn.config import Options
from fgsn.edit.options import ProjectOptions
from fgsn.evaluate.options import EvalOptions

DEFAULT_EVAL_HARMFUL = ("builtin:harmbench?split=test&limit=100", "builtin:strongreject?split=test&limit=100")
# Fields that make no sense for a comparison: each method writes its own folder, and compare sets the
# evaluation's per-model settings itself (the fine-tuned adapter, Self-Reminder's system prompt and
# suffix), so no flag is offered for them and a YAML value is an error. (ledger ... category are
# top-level options; adapters, systems and suffixes are eval.*.)
NOT_FOR_COMPARE = ("ledger", "locate_run", "output_format", "category", "adapters", "systems", "suffixes")
# What the evaluation shares with the edits' probes; eval.NAME defaults to the top-level NAME.
SHARED = tuple(k for k in EvalOptions.model_fields if k in ProjectOptions.model_fields)


class SafeLoRASection(Options):
    select: Literal["threshold", "number"] = Field("threshold", description="SafeLoRA: project modules with cos <= "
                                                   "threshold, or the k lowest-cos modules (number)")
    threshold: float = Field(0.5, ge=-1, le=1, description="SafeLoRA: cosine threshold")
    k: int = Field(10, ge=1, description="SafeLoRA: number of modules projected in `number` mode")


class RestaSection(Options):
    beta: float = Field(0.5, ge=0, description="RESTA: weight of the safety vector")
    dare: float = Field(0.0, ge=0, lt=1, description="RESTA: DARE drop rate of the fine-tuning delta (0: no DARE)")
    unaligned: str | None = Field(None, description="RESTA: model the safety vector is measured from (default: "
                                                    "--base)")
    scope: Literal["all", "linear"] = Field("all", description="RESTA: all tensors (paper) or only the linear "
                                                               "modules of the decoder layers")


class WandaSection(Options):
    q: float = Field(0.1, ge=0, le=1, description="Wanda: share of weights removed")
    target: Literal["update", "weight"] = Field("update", description="Wanda: remove the fine-tuning update "
                                                                      "(update) or zero the weights (weight)")
    group: Literal["row", "module"] = Field("row", description="Wanda: top-q within each output row (Wanda's "
                                                               "comparison group) or over the module")
    granularity: Literal["weight", "neuron"] = Field("weight", description="Wanda: weight, or neuron (whole rows; "
                                                                           "needs --wanda-group module)")
    score: Literal["wanda", "wanda-delta"] = Field("wanda", description="Wanda: |W| (wanda) or |dW| (wanda-delta) "
                                                                        "times input norms")


class ActivationMatchSection(Options):
    """Defaults: the editor's own; the registry's activation-match variants override them."""

    form: Literal["ridge", "nullspace"] = Field("ridge", description="activation-match: ridge or nullspace (see "
                                                                     "fgsn activation-match --help)")
    lam: float = Field(1.0, ge=0, description="activation-match: lambda, weight of keeping the task outputs (ridge "
                                              "form)")
    mu: float = Field(1e-3, ge=0, description="activation-match: damping mu, a multiple of mean diag(G_h)")
    null_energy: float = Field(0.01, gt=0, lt=1, description="activation-match: share of the task input energy the "
                                                             "null-space edit may touch")
    sequential: bool = Field(False, description="activation-match: Grams from the model repaired so far, layer "
                                                "after layer")
    harmful_answer: Literal["none", "refusal", "aligned"] = Field(
        "none", description="activation-match: none, refusal or aligned: what follows harmful prompts in G_h")


class SelfReminderSection(Options):
    system: str = Field(SYSTEM, description="Self-Reminder: system prompt")
    suffix: str = Field(SUFFIX, description="Self-Reminder: text appended to every user turn")


# section name -> its options class; a section's flags are --PREFIX-NAME (eval: see SHARED)
SECTIONS: dict[str, type[Options]] = {"eval": EvalOptions, "safelora": SafeLoRASection, "resta": RestaSection,
                                      "wanda": WandaSection, "activation_match": ActivationMatchSection,
                                      "self_reminder": SelfReminderSection}


def legacy_key(key: str) -> tuple[str, str] | None:
    """(section, field) of an old flat key of CompareOptions (`max_new_tokens`, `safelora_k`), if it is one."""
    if key in EvalOptions.model_fields and key not in ProjectOptions.model_fields:
        return "eval", key
    for section, cls in SECTIONS.items():
        name = key.removeprefix(section + "_")
        if section != "eval" and name != key and name in cls.model_fields:
            return section, name
    return None


class CompareOptions(ProjectOptions):
    """Inputs and options of `fgsn compare` (see the module doc for the sections)."""

    methods: list[str]
    with_references: bool = False
    eval_harmful: list[str] = Field(default_factory=lambda: list(DEFAULT_EVAL_HARMFUL))
    eval_attack: list[str] = Field(default_factory=list)
    benign_alarming: str | None = "builtin:alarming"
    utility: list[str] = Field(default_factory=list)
    reference: list[str] = Field(default_factory=list)
    judge: str = "keyword"
    isolate: bool = True
    eval: EvalOptions = Field(default_factory=EvalOptions)
    safelora: SafeLoRASection = Field(default_factory=SafeLoRASection)
    resta: RestaSection = Field(default_factory=RestaSection)
    wanda: WandaSection = Field(default_factory=WandaSection)
    activation_match: ActivationMatchSection = Field(default_factory=ActivationMatchSection)
    self_reminder: SelfReminderSection = Field(default_factory=SelfReminderSection)
    # any method's own options, by method name (IRR, SGDG and revert run at their defaults otherwise)
    method_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per method name, options of that method that override what compare "
                                          "passes it, e.g. {sgdg: {rounds: 5}} in YAML or '{\"sgdg\": {\"rounds\": "
                                          "5}}' as a flag", json_schema_extra={"json": True, "metavar": "JSON"})

    @model_validator(mode="before")
    @classmethod
    def _flat_keys_into_sections(cls, data):
        """The old flat keys (max_new_tokens, safelora_k, ...) into their sections, with a warning."""
        if not isinstance(data, dict):
            return data
        moved: list[str] = []
        out = dict(data)
        for key in list(out):
            where = legacy_key(str(key).replace("-", "_"))
            if where is None:
                continue
            section, name = where
            given = out.get(section)
            sec = given.model_dump(exclude_unset=True) if isinstance(given, BaseModel) else dict(given or {})
            if name in sec:
                raise ValueError(f"{key} is given twice: flat (deprecated) and as {section}.{name}; keep the second")
            sec[name] = out.pop(key)
            out[section] = sec
            moved.append(f"{key} -> {section}.{name}")
        if moved:
            warnings.warn(f"compare options: flat keys are deprecated, write them in their section: "
                          f"{', '.join(moved)}", FutureWarning, stacklevel=2)
        return out

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

    def eval_options(self) -> EvalOptions:
        """The evaluation's options: the eval section, where the settings it shares with the edits
        (SHARED) default to the top-level ones unless the section gives its own."""
        given = self.eval.model_fields_set
        return EvalOptions(**{k: getattr(self, k) for k in SHARED if k not in given},
                           **self.eval.model_dump(exclude_unset=True))

    def value(self, name: str):
        """An option by its flat name, wherever it lives (top level, or eval.NAME for evaluation-only ones)."""
        return getattr(self, name) if name in type(self).model_fields else getattr(self.eval, name)
