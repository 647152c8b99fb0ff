"""Options of `fgsn project`, `fgsn revert` and the task compensation they share: torch-free, so that the command line builds its flags and help
without importing torch."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from fgsn.config import Options
from fgsn.locate.options import DEFAULT_REFUSAL, LocateOptions, ProbeOptions


class CompensateOptions(Options):
    """Options of the task compensation, shared by every method that offers it."""

    compensate: Literal["none", "task"] = Field(
        "none", description="task: after the edit, update the kept entries of every edited row (OBS / SparseGPT) "
                            "so that the module's outputs on task inputs are preserved; none: leave them")
    compensate_samples: int | None = Field(
        None, ge=1, description="task examples whose inputs form H = X X^T (default: every task example the "
                                "method does not hold out for validation)")
    compensate_damp: float = Field(0.01, ge=0, description="dampening of H, as a share of its mean diagonal "
                                                            "(SparseGPT: 0.01)")
    compensate_solver: Literal["exact", "sparsegpt"] = Field(
        "exact", description="exact: the least-squares optimum per row; sparsegpt: SparseGPT's column sweep "
                             "(IRR's reference code), cheaper when a row's edited share is large")


class ProjectOptions(CompensateOptions, LocateOptions):
    base: str  # type: ignore[assignment]  (required here: the safety direction is aligned - base)
    harmful: list[str] = Field(default_factory=list)
    task: list[str] = Field(default_factory=list)
    ledger: str | None = None
    locate_run: str | None = None
    output_format: Literal["merged", "adapter"] = "merged"
    max_shard_gb: float = Field(5.0, gt=0)
    edit_device: str = Field("auto", description="where the projection's arithmetic runs: auto (the first CUDA "
                             "GPU when there is one, else cpu), cpu, cuda or cuda:N. Tensors are read and written on "
                             "the host in their stored dtype either way; a GPU gives the CPU's result to float32 "
                             "rounding (TF32 is off)")
    prefetch: int = Field(1, ge=0, le=2, description="tensors whose inputs (fine-tuned, aligned, base, mask) are "
                          "read ahead in a background thread while the current one is projected; each adds at "
                          "most one tensor's inputs (as stored, and its mask) to memory; 0: read in turn; the "
                          "output is byte-identical either way")

    @field_validator("edit_device")
    @classmethod
    def _edit_device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"unknown edit device {v!r}; use auto, cpu, cuda or cuda:N")
        return v


class RevertOptions(CompensateOptions, ProbeOptions):
    aligned: str = Field(description="aligned model folder: the values reverted entries take")
    finetuned: str = Field(description="fine-tuned model: a checkpoint folder, or a PEFT LoRA adapter over --aligned")
    base: str | None = Field(None, description="base model folder (recorded in the manifest; not needed)")
    harmful: list[str] = Field(description="harmful prompts the safety loss is measured on")
    task: list[str] = Field(default_factory=list, description="task examples (prompt + answer): the rollback's "
                                                              "validation and gradients, and the compensation")
    out: str | None = Field(None, description="output folder (appears only when complete)")
    overwrite: bool = False
    allow_pickle: bool = False
    seed: int = 0
    max_shard_gb: float = Field(5.0, gt=0, description="largest output shard, GB")
    modules: list[str] | None = Field(None, description="target modules (default: every linear module)")
    layers: str | None = Field(None, description="layers whose modules may be reverted (default: all)")
    rounds: int = Field(5, ge=1, description="rounds of scoring and reverting (SGDG: 20)")
    per_round: float = Field(0.02, gt=0, le=1, description="share reverted per round: of each module's entries "
                                                           "(scope module) or of all the model's parameters "
                                                           "(scope global; SGDG: 0.001)")
    scope: Literal["module", "global"] = Field("module", description="where the per-round share is counted and "
                                                                     "the top entries taken: each module, or all "
                                                                     "target modules together (SGDG)")
    rank: Literal["delta-grad", "grad"] = Field(
        "delta-grad", description="order of the candidates: delta-grad = the first-order loss decrease "
                                  "(theta - theta_a) * g (snip-signed); grad = |g| (SGDG)")
    loss: Literal["refusal-nll", "cosine"] = Field(
        "refusal-nll", description="safety loss: refusal-nll = NLL of --refusal-text after each harmful prompt; "
                                   "cosine = -cos(mean last-token hidden state, the aligned model's) (SGDG)")
    refusal_text: str = Field(DEFAULT_REFUSAL, description="the answer whose NLL is the refusal loss")
    cosine_layer: int | None = Field(None, ge=1, description="hidden state of the cosine loss, numbered as "
                                                             "transformers' hidden_states (k = output of decoder "
                                                             "layer k-1); default floor(4L/6) (SGDG)")
    harmful_limit: int | None = Field(None, ge=1, description="use only the first N harmful prompts (SGDG: 256)")
    rollback: bool = Field(True, description="put back reverted entries that matter most on the task when the "
                                             "validation task NLL crosses the floor")
    rollback_floor: Literal["gain", "likelihood"] = Field(
        "gain", description="gain: keep at least --rollback-keep of the fine-tune's NLL gain over the aligned "
                            "model; likelihood: the answers' per-token likelihood exp(-NLL) stays at least "
                            "--rollback-keep times the fine-tune's (SGDG's 0.95x rule)")
    rollback_keep: float = Field(0.95, ge=0, le=1, description="the floor's share (see --rollback-floor)")
    rollback_share: float = Field(0.2, gt=0, le=1, description="share of the reverted entries put back per "
                                                               "rollback (SGDG: 0.2)")
    rollback_loss: Literal["task-nll", "cosine"] = Field(
        "task-nll", description="task importance of a reverted entry from the gradient of the task answers' NLL, "
                                "or of -cos(mean hidden state on task prompts, the fine-tuned model's) (SGDG)")
    max_rollbacks: int = Field(1, ge=0, description="rollbacks at most, each followed by a new check (SGDG: 1)")
    validation_share: float = Field(0.25, gt=0, lt=1, description="share of the task examples held out (by "
                                                                  "prompt hash) for the rollback's check")
    ledger: str | None = Field(None, description="continual ledger folder (created if missing): this run is one "
                                                  "step, for --category, from the latest step's output as "
                                                  "--finetuned; entries an earlier step reverted are never touched "
                                                  "again (not reverted, rolled back or compensated)")
    category: str | None = Field(None, description="with --ledger: the harm category this step repairs (one step "
                                                   "per category); filters --harmful to it when it matches prompt "
                                                   "categories")

    @field_validator("harmful", "task", "modules", mode="before")
    @classmethod
    def _listify(cls, v):
        return [v] if isinstance(v, str) else v
