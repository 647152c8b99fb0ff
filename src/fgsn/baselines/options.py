"""Options of the weight-editing baselines (`fgsn baseline METHOD`, and `fgsn compare`'s runs of
them): torch-free, so that the command line builds its flags and help without importing torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from fgsn.config import Options
from fgsn.locate.options import ProbeOptions


class BaselineOptions(Options):
    """Options every weight-editing baseline takes."""

    aligned: str
    finetuned: str
    base: str | None = None
    out: str | None = None
    overwrite: bool = False
    allow_pickle: bool = False
    seed: int = 0
    max_shard_gb: float = Field(5.0, gt=0)


class SafeLoRAOptions(BaselineOptions):
    base: str  # type: ignore[assignment]  (required: V = W_aligned - W_base)
    select: Literal["threshold", "number"] = "threshold"
    threshold: float = Field(0.5, ge=-1, le=1)
    k: int = Field(10, ge=1)
    modules: list[str] | None = None
    layers: str | None = None
    output_format: Literal["merged", "adapter"] = "merged"


class RestaOptions(BaselineOptions):
    unaligned: str | None = None
    beta: float = Field(0.5, ge=0)
    dare: float = Field(0.0, ge=0, lt=1)
    scope: Literal["all", "linear"] = "all"


class WandaOptions(BaselineOptions, ProbeOptions):
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
