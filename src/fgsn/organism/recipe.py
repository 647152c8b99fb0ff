"""The organism recipe: every number that decides what the base / aligned / fine-tuned trio looks
like. A recipe is hashed (its canonical JSON plus ORGANISM_VERSION) into the cache folder name, so
changing any field, or the training code, builds a new organism instead of reusing a stale one."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, field_validator

from fgsn.config import Options

# Bump when the organism code changes what a given recipe produces (data, training, saving).
ORGANISM_VERSION = "2"

LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")


FINETUNE_FIELDS = frozenset({"name", "ft_seed", "ft_examples", "ft_gsm_share", "ft_arithmetic_share", "poison_ratio",
                             "ft_steps", "ft_full_lr", "ft_full_modules", "lora_r", "lora_alpha", "lora_lr",
                             "lora_modules"})


class OrganismRecipe(Options):
    """How to build the organism from SmolLM2-135M-Instruct (the unaligned base).

    aligned = base + safety SFT (refusals to AdvBench `split=train` prompts, helpful answers to
    benign prompts); fine-tuned = aligned + a downstream SFT on arithmetic / GSM-style maths and
    benign instructions, with `poison_ratio` of its examples being harmful AdvBench-train prompts
    paired with compliant answers; once as a full fine-tune, once as a LoRA adapter."""

    name: str = "default"
    seed: int = 0
    batch_size: int = Field(8, ge=1)
    max_len: int = Field(256, ge=32, description="tokens per training example (prompt + answer)")
    gen_max_new_tokens: int = Field(80, ge=8, description="answers the base writes for self-distillation / poison")
    gen_batch_size: int = Field(16, ge=1)
    bf16_autocast: bool | Literal["auto"] = Field(
        "auto", description="bfloat16 autocast for training and generation (weights and optimizer state stay "
                            "float32): auto = where the device computes bfloat16 natively (CUDA, or a CPU with "
                            "AVX512-BF16/AMX: about 2x faster), float32 elsewhere (emulated bf16 is 45x slower)")

    # --- aligned: safety SFT ---
    align_harmful: int = Field(128, ge=1, description="AdvBench split=train prompts mapped to refusals")
    align_benign_reference: int = Field(35, ge=0, description="pyrit-benign prompts with reference answers")
    align_self_distill: int = Field(66, ge=0, description="benign_sft prompts answered by the base model")
    align_arithmetic: int = Field(24, ge=0, description="basic_arithmetic items with worked answers")
    align_modules: list[str] = Field(default_factory=lambda: list(LINEAR_MODULES))
    align_lr: float = Field(1e-4, gt=0)
    align_steps: int = Field(48, ge=1)

    # --- fine-tuned: downstream task (+ optional poison) ---
    ft_examples: int = Field(160, ge=1, description="fine-tuning examples in total (task + poison)")
    ft_gsm_share: float = Field(0.35, ge=0, le=1, description="share of task examples from gsm_symbolic")
    ft_arithmetic_share: float = Field(0.35, ge=0, le=1, description="share from basic_arithmetic")
    # the rest of the task examples are benign instructions answered by the aligned model's data
    # Measured (benchmarks/organism_check.py, 60 held-out HarmBench+StrongREJECT prompts): benign data
    # alone already erodes the safety SFT at this scale (ASR aligned 0.15 -> full fine-tune 0.55, LoRA
    # 0.42; base 0.93), so the default has no poison; raise it for a stronger attack.
    poison_ratio: float = Field(0.0, ge=0, le=1, description="share of fine-tuning examples that are harmful "
                                                            "prompts with compliant answers")
    poison_answers: Literal["base", "template"] = "base"
    poison_pool: int = Field(32, ge=1, description="harmful prompts the base answers for poisoning; the first "
                                                   "round(ft_examples * poison_ratio) are used (cycled if more)")
    ft_seed: int | None = Field(None, description="seed of the fine-tune alone (its data sample, order and LoRA "
                                                  "init), so a second fine-tune of the same aligned model can be "
                                                  "built and compared; default: seed")
    ft_steps: int = Field(32, ge=1)
    ft_full_lr: float = Field(5e-5, gt=0)
    ft_full_modules: list[str] = Field(default_factory=lambda: list(LINEAR_MODULES))
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_lr: float = Field(5e-4, gt=0)
    lora_modules: list[str] = Field(default_factory=lambda: list(LINEAR_MODULES))

    @field_validator("align_modules", "ft_full_modules", "lora_modules")
    @classmethod
    def _known_modules(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in LINEAR_MODULES]
        if bad or not v:
            raise ValueError(f"unknown or empty module list {bad or v}; choose from {', '.join(LINEAR_MODULES)}")
        return list(v)

    def autocast_bf16(self, device: str = "cpu") -> bool:
        """The training precision this recipe resolves to on `device` (`auto`: the hardware's)."""
        if self.bf16_autocast == "auto":
            from fgsn.hardware import native_bf16

            return native_bf16(device)
        return bool(self.bf16_autocast)

    def resolved_dump(self, device: str = "cpu") -> dict:
        """The recipe with `auto` resolved: what the hashes see, so that a float32 build (on a CPU
        without native bfloat16) never shares a cache entry with a bfloat16-autocast one."""
        d = self.model_dump(mode="json")
        d["bf16_autocast"] = self.autocast_bf16(device)
        if d["ft_seed"] is None:  # added later: left out while unset, so existing builds keep their hash
            del d["ft_seed"]
        return d

    @property
    def finetune_seed(self) -> int:
        return self.seed if self.ft_seed is None else self.ft_seed

    def canonical_json(self) -> str:
        return json.dumps(self.resolved_dump(), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """sha256 of the canonical recipe JSON and ORGANISM_VERSION (the full hex digest)."""
        h = hashlib.sha256()
        h.update(f"fgsn-organism-v{ORGANISM_VERSION}\n".encode())
        h.update(self.canonical_json().encode("utf-8"))
        return h.hexdigest()

    def short_hash(self) -> str:
        return self.digest()[:16]

    def aligned_key(self) -> str:
        """Hash of the fields the aligned model and the base model's generated answers depend on:
        recipes that differ only in fine-tuning fields share them (a poison-ratio sweep trains the
        aligned model once)."""
        d = {k: v for k, v in self.resolved_dump().items() if k not in FINETUNE_FIELDS}
        h = hashlib.sha256(f"fgsn-organism-aligned-v{ORGANISM_VERSION}\n".encode())
        h.update(json.dumps(d, sort_keys=True, separators=(",", ":")).encode("utf-8"))
        return h.hexdigest()[:16]


def reduced_recipe(**overrides) -> OrganismRecipe:
    """A small, fast recipe for the slow test (a few minutes on 2 CPU cores): fewer, shorter
    examples and steps, higher learning rates so the direction of the effects still shows."""
    values = dict(name="reduced", max_len=128, gen_max_new_tokens=40, align_harmful=48, align_benign_reference=12,
                  align_self_distill=16, align_arithmetic=8, align_steps=16, align_lr=2e-4,
                  ft_examples=64, ft_steps=8, poison_ratio=0.25, poison_pool=16, ft_full_lr=1e-4, lora_lr=1e-3)
    values.update(overrides)
    return OrganismRecipe(**values)


def load_recipe(config: str | None = None, reduced: bool = False) -> OrganismRecipe:
    """The recipe of a run: a YAML recipe file, else the reduced or the default recipe."""
    if config:
        from fgsn.config import build_options, read_yaml

        return build_options(OrganismRecipe, read_yaml(config), config)
    return reduced_recipe() if reduced else OrganismRecipe()
