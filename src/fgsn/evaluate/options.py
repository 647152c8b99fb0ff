"""Typed options of `fgsn eval` (YAML keys and flags share these names, with - or _)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from fgsn.config import Options

MODEL_WORKERS_HELP = ("models evaluated at once, each in its own process: one GPU each on a multi-GPU box, or "
                      "a share of the CPU threads (2 on 2 cores: 1.3x for small models, benchmarks/demo_speed.py)")
DEFAULT_UTILITY_INSTRUCTION = "\nGive the final answer alone on the last line, as: Answer: <answer>"


class EvalOptions(Options):
    """Generation, judging and scoring settings of an evaluation run.

    Everything that can change a completion (backend, dtype, decoding, chat template, system
    prompt) is part of the completion cache key; batch size and device are not, so that a rerun
    on other hardware reuses the cache (greedy decoding makes that sound up to float noise).
    """

    # generation
    backend: Literal["hf", "vllm"] = "hf"
    tensor_parallel: int | None = Field(None, ge=1)  # vLLM: GPUs per model; None = every visible GPU
    device: str = "auto"
    dtype: str | None = None
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0
    use_chat_template: bool = True
    system: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    adapters: dict[str, str] = Field(default_factory=dict)
    # per-model inference-time settings (e.g. Self-Reminder): a system prompt and a suffix on the
    # user turn for model NAME; the judge still sees the prompt as given
    systems: dict[str, str] = Field(default_factory=dict)
    suffixes: dict[str, str] = Field(default_factory=dict)
    cache_dir: str | None = None  # default: RUNDIR/cache
    model_workers: int = Field(1, ge=1, description=MODEL_WORKERS_HELP)
    # judges
    keyword_list: str = "fgsn-v1"
    keyword_min_words: int | None = Field(None, ge=0)  # None: the list's own rule
    judge_url: str | None = None
    judge_model: str | None = None
    judge_key_env: str = "OPENAI_API_KEY"
    judge_timeout: float = Field(60.0, gt=0)
    judge_retries: int = Field(4, ge=0)
    judge_backoff: float = Field(1.0, ge=0)
    judge_workers: int = Field(4, ge=1)
    judge_success_score: float = Field(3.0, ge=1, le=5)
    judge_path: str | None = None
    judge_max_new_tokens: int = Field(20, ge=1)
    # utility and reference answers
    utility_limit: int = Field(100, ge=1)
    utility_seed: int = 0
    utility_instruction: str = DEFAULT_UTILITY_INSTRUCTION
    nll_max_length: int = Field(2048, ge=8)
    # paired statistics (results.json `paired`)
    paired_against: list[str] = Field(default_factory=list, description=(
        "models every other model is compared with on the same prompts (paired bootstrap interval of the "
        "difference, exact McNemar p); default: the models named aligned and finetuned, else the first model; "
        "'all' compares every pair"))
    bootstrap_resamples: int = Field(10_000, ge=100, description="paired bootstrap resamples")
    bootstrap_seed: int = Field(0, description="seed of the paired bootstrap")
    # output
    report: bool = True

    @field_validator("paired_against", mode="before")
    @classmethod
    def _listify_paired(cls, v):
        return [x for x in v.split(",") if x] if isinstance(v, str) else v

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str | None) -> str | None:
        from fgsn.models.loading import DTYPES

        if v in (None, "auto", "fast") or v in DTYPES:
            return None if v == "auto" else v
        raise ValueError(f"unknown dtype {v!r}; use one of {', '.join(sorted(DTYPES))}, auto or fast")
