"""Options of the weight-editing baselines (`fgsn baseline METHOD`, and `fgsn compare`'s runs of
them): torch-free, so that the command line builds its flags and help without importing torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from fgsn.edit.options import CompensateOptions, EditOptions, RevertOptions
from fgsn.locate.options import ProbeOptions


class SafeLoRAOptions(EditOptions):
    base: str  # type: ignore[assignment]  (required: V = W_aligned - W_base)
    select: Literal["threshold", "number"] = "threshold"
    threshold: float = Field(0.5, ge=-1, le=1)
    k: int = Field(10, ge=1)
    modules: list[str] | None = None
    layers: str | None = None
    output_format: Literal["merged", "adapter"] = "merged"


class RestaOptions(EditOptions):
    unaligned: str | None = None
    beta: float = Field(0.5, ge=0)
    dare: float = Field(0.0, ge=0, lt=1)
    scope: Literal["all", "linear"] = "all"


class WandaOptions(EditOptions, ProbeOptions):
    harmful: list[str]
    q: float = Field(0.1, ge=0, le=1)
    target: Literal["update", "weight"] = "update"
    group: Literal["row", "module"] = "row"
    granularity: Literal["weight", "neuron"] = "weight"
    score: Literal["wanda", "wanda-delta"] = "wanda"
    modules: list[str] | None = None
    layers: str | None = None
    save_masks: bool = False

    @field_validator("harmful", "modules", mode="before")
    @classmethod
    def _listify(cls, v):
        return [v] if isinstance(v, str) else v


class IRROptions(CompensateOptions, EditOptions, ProbeOptions):
    unaligned: str | None = Field(None, description="model the safety vector is measured from (paper: the aligned "
                                                    "model harmfully fine-tuned; default: --base)")
    task: list[str] = Field(default_factory=list, description="task examples for the recalibration's H")
    modules: list[str] | None = Field(None, description="target modules (default: every linear module; the "
                                                        "reference code: q_proj, v_proj)")
    layers: str | None = Field(None, description="restrict to these layers (default: all)")
    compensate: Literal["none", "task"] = Field("task", description="task: recalibrate the kept entries (IRR's "
                                                                    "third step); none: the removal alone")
    compensate_samples: int | None = Field(10, ge=1, description="task examples for H (the reference: 10)")
    compensate_solver: Literal["exact", "sparsegpt"] = Field(
        "sparsegpt", description="sparsegpt: the reference's column sweep; exact: the per-row least-squares optimum")

    @field_validator("task", "modules", mode="before")
    @classmethod
    def _listify(cls, v):
        return [v] if isinstance(v, str) else v


class SGDGOptions(RevertOptions):
    rounds: int = Field(20, ge=1, description="rounds of scoring and reverting (SGDG: 20)")
    per_round: float = Field(0.001, gt=0, le=1, description="share of all the model's parameters reverted per "
                                                            "round (SGDG's recovery_rate 0.1%)")
    scope: Literal["module", "global"] = Field("global", description="global: the top entries over all target "
                                                                     "modules (SGDG)")
    rank: Literal["delta-grad", "grad"] = Field("grad", description="grad: candidates ordered by |g| (SGDG)")
    loss: Literal["refusal-nll", "cosine"] = Field("cosine", description="cosine: -cos(mean last-token hidden "
                                                                         "state, the aligned model's) (SGDG)")
    harmful_limit: int | None = Field(256, ge=1, description="use only the first N harmful prompts (SGDG: 256)")
    rollback_floor: Literal["gain", "likelihood"] = Field(
        "likelihood", description="likelihood: the task answers' per-token likelihood stays >= 0.95x the "
                                  "fine-tune's (SGDG's rule)")
    rollback_loss: Literal["task-nll", "cosine"] = Field(
        "cosine", description="cosine: importance from -cos(mean hidden state on task prompts, the fine-tuned "
                              "model's) (SGDG's benign loss)")
