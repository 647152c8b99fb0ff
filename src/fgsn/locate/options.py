"""Options of the locate stage (`fgsn locate`, and the probing part of every stage that probes):
torch-free, so that the command line can build its flags and help without importing torch."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fgsn.config import Options

# Importance scores (fgsn.locate.scores computes them).
SCORES = ("wanda", "wanda-delta", "offsafety", "snip", "snip-signed", "contrast", "random")
# The answer whose gradient (snip scores) marks a harmful prompt's weights: a refusal.
DEFAULT_REFUSAL = "I'm sorry, but I can't help with that request."


class ProbeOptions(Options):
    """How prompts are run through a model for activation statistics (shared by every stage that
    probes: locate and the Wanda baseline)."""

    device: str = "auto"
    dtype: str | None = None
    batch_size: int = Field(8, ge=1)
    max_length: int | None = Field(None, ge=8)
    use_chat_template: bool = Field(True, json_schema_extra={"aliases": ["--chat-template"]})
    system: str | None = None
    trust_remote_code: bool = False
    cache: bool = True


# Named settings (`--preset`): fill every option of the set that is not given explicitly.
#   paper:    the published recipe (= the defaults): gap-searched layers, Wanda scores, q = p = 0.1
#   frontier: the best fine-grained setting of the repair frontier on the SmolLM2 organism
#             (README): snip-signed scores over all layers, 10% of each edited module. It needs
#             a backward pass over the target modules (gradient memory = their size in float32).
PRESETS: dict[str, dict] = {
    "paper": {"score": "wanda", "q": 0.1, "p": 0.1, "budget": None, "layers": None, "granularity": "weight",
              "projector": "safelora"},
    "frontier": {"score": "snip-signed", "p": 0.1, "budget": 0.1, "layers": "all", "granularity": "weight",
                 "projector": "safelora"},
}


class LocateOptions(ProbeOptions):
    preset: Literal["paper", "frontier"] | None = None
    aligned: str
    finetuned: str
    base: str | None = None
    harmful: list[str]
    task: list[str]
    benign: list[str] | None = None
    category: str | None = None
    layers: str | None = None
    layer_eps: float = Field(0.05, ge=0, le=1)
    modules: list[str] | None = None
    q: float = Field(0.1, ge=0, le=1)
    budget: float | None = Field(None, ge=0, le=1)
    p: float = Field(0.1, ge=0, le=1)
    granularity: Literal["weight", "neuron"] = "weight"
    score: Literal[SCORES] = "wanda"  # type: ignore[valid-type]
    projector: Literal["safelora", "svd"] = "safelora"
    rank: int | None = Field(None, ge=1)
    energy: float = Field(0.99, gt=0, le=1)
    allow_pickle: bool = False
    refusal_text: str = DEFAULT_REFUSAL
    probe_memory: Literal["auto", "resident", "streamed"] = Field(
        "auto", description="how the probes hold a model: resident (the whole model loaded), streamed (one decoder layer "
        "at a time read from the checkpoint: memory of one layer plus the prompts' hidden states, same statistics, "
        "on one device) or auto (streamed when the resident pass does not fit --probe-memory-budget)")
    probe_memory_budget: float | None = Field(
        None, gt=0, description="GiB a resident probe may hold (for --probe-memory auto); default: the device's free "
        "memory (available RAM, or free GPU memory) less 10% (at least 1 GiB), or $FGSN_PROBE_MEMORY_BUDGET")
    seed: int = 0
    overwrite: bool = False
    out: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            given = {k.replace("-", "_") for k in data}
            data = {**{k: v for k, v in PRESETS[data["preset"]].items() if k not in given}, **data}
        return data

    @model_validator(mode="after")
    def _contrast_is_neuron_level(self):
        if self.score == "contrast" and self.granularity != "neuron":
            raise ValueError("--score contrast scores output neurons; use it with --granularity neuron")
        return self

    @field_validator("layers", mode="before")
    @classmethod
    def _layers_str(cls, v):
        return ",".join(str(x) for x in v) if isinstance(v, list | tuple) else v

    @field_validator("harmful", "task", "benign", "modules", mode="before")
    @classmethod
    def _listify(cls, v):
        if isinstance(v, str):
            return [s.strip() for s in v.split(",")] if v and "," in v and not Path(v).exists() else [v]
        return v
