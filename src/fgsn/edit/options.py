"""Options of the edit stage (`fgsn project`, `fgsn revert`, `fgsn activation-match` and the task
compensation they share): torch-free, so that the command line builds its flags and help without
importing torch."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fgsn.config import Options
from fgsn.locate.options import DEFAULT_REFUSAL, LocateOptions, ProbeOptions


class EditOptions(Options):
    """Options every weight editor that rewrites a checkpoint on its own takes (the baselines and the
    activation-matching editor): the models, where the output goes, and how it is written."""

    aligned: str
    finetuned: str
    base: str | None = None
    out: str | None = None
    overwrite: bool = False
    allow_pickle: bool = False
    seed: int = 0
    max_shard_gb: float = Field(5.0, gt=0)


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


class ActivationMatchOptions(EditOptions, ProbeOptions):
    """Options of the closed-form activation-matching editor."""

    harmful: list[str] = Field(default_factory=list, description=(
        "harmful prompts (files or builtin:NAME?..): their module inputs form G_h, where the repaired model must "
        "reproduce the aligned model's outputs"))
    task: list[str] = Field(default_factory=list, description=(
        "task examples, prompt + answer (what the fine-tune is for): their module inputs form G_t, where the "
        "fine-tuned model's outputs are kept"))
    form: Literal["ridge", "nullspace"] = Field("ridge", description=(
        "ridge: W_f + (W_a-W_f) G_h (G_h + lam G_t + mu I)^-1 (a soft trade-off); nullspace: the change acts only on "
        "the eigenvectors of G_t holding at most --null-energy of the task input energy (AlphaEdit-style hard "
        "constraint)"))
    lam: float = Field(1.0, ge=0, description=(
        "lambda, ridge form: weight of keeping the task outputs against matching the harmful ones, both as mean "
        "squared output error per token (1: a task token weighs what a harmful token does). Lower closes more of "
        "the safety gap, higher keeps more of the task; on the SmolLM2 organism's full fine-tune 1 is the "
        "strongest of 0.3/1/3 that keeps 95% of the fine-tune's task-NLL gain "
        "(benchmarks/activation_match_frontier.py)"))
    mu: float = Field(1e-3, ge=0, description=(
        "mu: damping, as a multiple of mean diag(G_h) (the mean squared harmful input), so it means the same at "
        "every layer; raise it when a Gram is singular"))
    prior: float = Field(0.0, ge=0, description=(
        "alpha, ridge form: a revert prior, weight of ||W - W_a||^2 relative to mean diag(G_h) as --mu is: "
        "W = W_f + (W_a-W_f)(G_h + alpha I)(G_h + lam G_t + (mu + alpha) I)^-1, so input directions that neither "
        "the harmful nor the task prompts reach return to the aligned model's weights instead of keeping the "
        "fine-tune's (harmful prompts unlike the fitted ones meet the aligned model there); 0: the plain ridge form"))
    null_energy: float = Field(0.01, gt=0, lt=1, description=(
        "nullspace form: share of tr(G_t) the edited input subspace may hold (its smallest-eigenvalue "
        "eigenvectors); bounds the task output change"))
    sequential: bool = Field(False, description=(
        "take each layer's Grams from the model repaired so far, layer after layer (SparseGPT-style); default: all "
        "Grams from the unedited model"))
    layers: str = Field("all", description=(
        "layers to edit: all, search (the safety layers of fgsn locate's cosine-gap search on the aligned model), "
        "or A-B / a comma list (0-based)"))
    modules: list[str] | None = Field(None, description="target modules (e.g. q_proj); default: every linear module")
    rows: Literal["all", "fgsn"] = Field("all", description=(
        "all output rows, or only the rows (neurons) an FGSN mask selects (from --locate-run, else located now "
        "with --granularity neuron, --fgsn-q, --fgsn-p), so that the paper's localisation composes with the "
        "closed form"))
    locate_run: str | None = Field(None, description="with --rows fgsn: an `fgsn locate --out RUN` folder")
    fgsn_q: float = Field(0.1, ge=0, le=1, description="with --rows fgsn: FGSN's harmful top-q (neuron masks)")
    fgsn_p: float = Field(0.1, ge=0, le=1, description="with --rows fgsn: FGSN's task top-p exclusion")
    layer_eps: float = Field(0.05, ge=0, le=1, description="with --layers search: relative rise that counts")
    harmful_answer: Literal["none", "refusal", "aligned"] = Field("none", description=(
        "what follows each harmful prompt in G_h: none (prompt tokens only), refusal (--refusal-text), or aligned "
        "(the aligned model's own greedy answer, --answer-tokens long)"))
    refusal_text: str = Field(DEFAULT_REFUSAL, description="with --harmful-answer refusal: the answer appended")
    answer_tokens: int = Field(32, ge=1, description="with --harmful-answer aligned: tokens generated per prompt")
    harmful_from: Literal["finetuned", "aligned"] = Field("finetuned", description=(
        "model whose module inputs on harmful prompts form G_h"))
    shared_prefix: Literal["keep", "skip"] = Field("keep", description=(
        "the tokens every harmful and task sequence begins with (the chat template's system prompt and user "
        "header: 24 of a short prompt's 37 tokens for SmolLM2) have the same module inputs in all of them, so "
        "G_h and G_t both hold them and the two terms pull those outputs apart; skip leaves them out of G_h (the "
        "task term alone decides them; they still run, as context; measured worse on the organism at every "
        "strength, docs/method.md)"))
    task_from: Literal["finetuned", "aligned"] = Field("finetuned", description=(
        "model whose module inputs on task examples form G_t"))
    allow_no_task: bool = Field(False, description=(
        "without --task, fit the harmful side alone (lambda = 0: nothing protects the task); off: an error"))
    gram_memory_gb: float = Field(1.0, gt=0, description=(
        "Grams (float64) resident at once; layers are processed in chunks that fit, one forward pass per chunk "
        "(planned from the last layer down, so the early, cheap-to-reach layers take the extra passes)"))
    max_batch_tokens: int = Field(4096, ge=64, description="padded tokens per forward batch")
    ledger: str | None = Field(None, description=(
        "continual ledger folder (created if missing): this run is one step, for --category, starting from the "
        "latest step's output as --finetuned; it keeps the outputs earlier steps restored on their harmful prompts "
        "(recorded in the ledger)"))
    category: str | None = Field(None, description=(
        "with --ledger: the harm category this step repairs (one step per category); filters --harmful to it when "
        "it matches prompt categories"))
    kappa: float = Field(100.0, ge=0, description=(
        "with --ledger, from the second category on: weight of keeping the earlier categories' module outputs, per "
        "token relative to the new category's harmful tokens; their mean squared change is at most "
        "(harmful gap + lambda task gap) / kappa"))
    old_target: Literal["current", "aligned", "joint"] = Field("current", description=(
        "with --ledger: what the --kappa term holds the earlier categories' module outputs to: current (as the "
        "model this step starts from gives them, residual gap included) or aligned (the aligned model's: their "
        "harmful term stays in the objective, so a later category that resembles an earlier one can still be "
        "repaired; their gap can rise by at most (harmful gap + lambda task gap) / kappa); joint: no kappa, the "
        "step is the one-shot edit of every category so far (their harmful Grams pooled by tokens, all Grams on "
        "the original fine-tune): the result does not depend on the order of the categories, and a step changes "
        "only as much as its category moves the pooled Gram"))
    keep_old: Literal["soft", "hard"] = Field("soft", description=(
        "with --ledger: soft: only the --kappa term; hard: also confine the change to input directions holding at "
        "most --old-energy of the earlier categories' input energy (as --null-energy does for the task)"))
    old_energy: float = Field(0.01, gt=0, lt=1, description=(
        "with --keep-old hard: share of the earlier categories' tr(G_old) the edited input subspace may hold"))
    original_finetuned: str | None = Field(None, description=(
        "with --ledger, from the second category on: the fine-tuned model the ledger's first step started from "
        "(the task term's reference; default: the path the ledger recorded)"))
    exact_rank: bool = Field(True, description=(
        "report each change's numerical rank and the directions holding 99% of it (an SVD per module); off: only "
        "the bound min(rows, in, harmful tokens)"))

    @field_validator("harmful", "task", "modules", mode="before")
    @classmethod
    def _listify(cls, v):
        if isinstance(v, str):
            return [s.strip() for s in v.split(",")] if v and "," in v and not Path(v).exists() else [v]
        return v

    @model_validator(mode="after")
    def _joint(self):
        if self.prior and self.form == "nullspace":
            raise ValueError("--prior belongs to the ridge form (the null-space form confines the change to the "
                             "task null space instead): use --form ridge, or drop --prior")
        if self.prior and self.ledger and self.old_target != "joint":
            raise ValueError("--prior in a continual ledger needs --old-target joint (each step the one-shot edit of "
                             "its categories so far); the kappa steps have no revert prior")
        if self.old_target == "joint" and self.keep_old == "hard":
            raise ValueError("--old-target joint re-solves every category together, so there is no earlier edit to "
                             "confine the change around: use --keep-old soft (the default) with it, or another "
                             "--old-target")
        if self.old_target == "joint" and self.sequential:
            raise ValueError("--old-target joint takes every Gram on the original fine-tune, which --sequential "
                             "would edit as it goes: drop one of them")
        return self
