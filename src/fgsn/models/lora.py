"""PEFT LoRA adapters read as a fine-tune over the aligned model: dW = scale * B A.

Reads `adapter_config.json` (r, lora_alpha, use_rslora, rank_pattern, alpha_pattern,
target_modules) and `adapter_model.safetensors`. Tensors that are not LoRA factors
(`modules_to_save`) are full replacements of the aligned weight. DoRA and embedding LoRA are
refused with a clear message rather than silently mis-merged.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from fgsn.errors import InputError, MismatchError
from fgsn.models.safetensors_io import read_header, read_tensor

PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraFactors:
    """B (out, r) already multiplied by the scale, and A (r, in), both float32."""

    B: torch.Tensor
    A: torch.Tensor

    def delta(self) -> torch.Tensor:
        return self.B @ self.A


def _pattern_value(patterns: dict, module: str, default):
    # PEFT matches a pattern key against the end of the module name.
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


class LoraAdapter:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        cfg = self.path / "adapter_config.json"
        weights = self.path / "adapter_model.safetensors"
        if not cfg.is_file():
            raise InputError(f"{self.path} is not a PEFT adapter folder (no adapter_config.json)")
        if not weights.is_file():
            if (self.path / "adapter_model.bin").is_file():
                raise InputError(f"{self.path} holds adapter_model.bin (pickle); re-save the adapter with "
                                 "safe_serialization=True to get adapter_model.safetensors")
            raise InputError(f"{self.path} has no adapter_model.safetensors")
        from fgsn.models.checkpoint import read_json_config

        self.config = read_json_config(cfg)
        ptype = self.config.get("peft_type", "LORA")
        if str(ptype).upper() != "LORA":
            raise InputError(f"{self.path} is a {ptype} adapter; fgsn reads LoRA adapters only")
        if self.config.get("use_dora"):
            raise InputError(f"{self.path} is a DoRA adapter (use_dora); its update is not scale*B*A, "
                             "merge it into a full checkpoint first (peft merge_and_unload) and pass that")
        self.weights_file = weights
        self.r = int(self.config.get("r", 8))
        self.alpha = float(self.config.get("lora_alpha", self.r))
        self.use_rslora = bool(self.config.get("use_rslora", False))
        self.rank_pattern = self.config.get("rank_pattern") or {}
        self.alpha_pattern = self.config.get("alpha_pattern") or {}
        self.base_model = self.config.get("base_model_name_or_path")
        self._infos, _ = read_header(weights)
        self.lora: dict[str, tuple[str, str]] = {}     # base tensor name -> (A key, B key)
        self.replaced: dict[str, str] = {}              # base tensor name -> adapter key
        self._parse_keys()

    def _parse_keys(self) -> None:
        pairs: dict[str, dict[str, str]] = {}
        for key in self._infos:
            name = key[len(PREFIX):] if key.startswith(PREFIX) else key
            if "lora_magnitude_vector" in name:
                raise InputError(f"{self.path}: DoRA magnitude tensors found; merge the adapter first")
            if "lora_embedding_" in name:
                raise InputError(f"{self.path}: LoRA on embeddings ({name}) is not supported; merge the adapter "
                                 "into a full checkpoint and pass that as --finetuned")
            m = re.match(r"^(.*)\.lora_([AB])(?:\.[^.]+)?\.weight$", name)
            if m:
                pairs.setdefault(m.group(1) + ".weight", {})[m.group(2)] = key
                continue
            name = re.sub(r"\.modules_to_save(\.[^.]+)?\.", ".", name)
            self.replaced[name] = key
        for base, ab in pairs.items():
            if set(ab) != {"A", "B"}:
                raise InputError(f"{self.path}: {base} has lora_{'A' if 'A' in ab else 'B'} but not its pair")
            self.lora[base] = (ab["A"], ab["B"])
        if not self.lora and not self.replaced:
            raise InputError(f"{self.path}: the adapter holds no LoRA tensors")

    @property
    def targets(self) -> list[str]:
        return list(self.lora) + list(self.replaced)

    def scale(self, name: str) -> float:
        module = name[: -len(".weight")]
        r = _pattern_value(self.rank_pattern, module, self.r)
        alpha = _pattern_value(self.alpha_pattern, module, self.alpha)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def factors(self, name: str) -> LoraFactors:
        a_key, b_key = self.lora[name]
        A = read_tensor(self.weights_file, self._infos[a_key]).float()
        B = read_tensor(self.weights_file, self._infos[b_key]).float()
        if A.shape[0] != B.shape[1]:
            raise InputError(f"{self.path}: {name} has lora_A rank {A.shape[0]} but lora_B rank {B.shape[1]}")
        return LoraFactors(B * self.scale(name), A)

    def replacement(self, name: str) -> torch.Tensor:
        return read_tensor(self.weights_file, self._infos[self.replaced[name]])

    def delta_shape(self, name: str) -> tuple[int, int]:
        a_key, b_key = self.lora[name]
        return self._infos[b_key].shape[0], self._infos[a_key].shape[1]

    @cached_property
    def sha256(self) -> str:
        from fgsn.models.hashing import checkpoint_sha256

        return checkpoint_sha256([self.weights_file, self.path / "adapter_config.json"])

    def check_against(self, aligned, transposed: bool = False) -> None:
        """The adapter must fit the aligned model: every target present, shapes compatible."""
        for name in self.lora:
            if name not in aligned:
                raise MismatchError(f"adapter {self.path} targets {name}, which {aligned.path} does not have; "
                                    "the adapter was trained on another base model")
            shape = aligned.shape(name)
            out_in = (shape[1], shape[0]) if transposed else shape
            if tuple(out_in) != self.delta_shape(name):
                raise MismatchError(f"adapter {self.path}: {name} has update shape {self.delta_shape(name)} but "
                                    f"{aligned.path} has weight shape {tuple(out_in)}; the adapter is for another base")
        for name in self.replaced:
            if name not in aligned:
                raise MismatchError(f"adapter {self.path} saves {name}, which {aligned.path} does not have")
            rshape = self._infos[self.replaced[name]].shape
            if rshape != aligned.shape(name):
                raise MismatchError(f"adapter {self.path}: {name} has shape {rshape}, aligned has {aligned.shape(name)}")

    def apply_(self, name: str, weight: torch.Tensor) -> None:
        """Merge the adapter's update of tensor `name` into `weight` in place, in the weight's dtype
        (the update is cast to it and added), as loading the merged model does."""
        with torch.no_grad():
            if name in self.replaced:
                weight.copy_(self.replacement(name).to(weight.dtype))
                return
            d = self.factors(name).delta()
            if tuple(weight.shape) != tuple(d.shape):
                d = d.T  # Conv1D stores (in, out)
            weight.add_(d.to(device=weight.device, dtype=weight.dtype))

    def merge_into_(self, model: torch.nn.Module, reference=None) -> None:
        """Add the adapter's update to a live transformers model's weights, in place."""
        params = dict(model.named_parameters())
        for name in self.targets:
            if name not in params:
                raise MismatchError(f"adapter {self.path} targets {name}, absent from the loaded model")
            self.apply_(name, params[name].data)
