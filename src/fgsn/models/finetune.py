"""The fine-tuned model as one interface over its two forms: a full checkpoint, or a LoRA
adapter over the aligned checkpoint. The edit reads weights and updates through it."""

from __future__ import annotations

import torch

from fgsn.models.checkpoint import Checkpoint
from fgsn.models.lora import LoraAdapter, LoraFactors


class FullFinetune:
    kind = "full"

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self.path = ckpt.path

    @property
    def sha256(self) -> str:
        return self.ckpt.sha256

    def get(self, name: str) -> torch.Tensor:
        """The fine-tuned tensor exactly as stored."""
        return self.ckpt.get(name)

    def factors(self, name: str) -> LoraFactors | None:
        return None

    def changed(self, name: str) -> bool:
        return True  # a full fine-tune may change anything; the edit computes dW to know


class LoraFinetune:
    kind = "lora"

    def __init__(self, aligned: Checkpoint, adapter: LoraAdapter, transposed: bool = False):
        self.aligned = aligned
        self.adapter = adapter
        self.path = adapter.path
        self.transposed = transposed

    @property
    def sha256(self) -> str:
        return self.adapter.sha256

    def factors(self, name: str) -> LoraFactors | None:
        return self.adapter.factors(name) if name in self.adapter.lora else None

    def changed(self, name: str) -> bool:
        return name in self.adapter.lora or name in self.adapter.replaced

    def get(self, name: str) -> torch.Tensor:
        """The merged fine-tuned tensor in the aligned model's dtype and layout."""
        if name in self.adapter.replaced:
            return self.adapter.replacement(name).to(self.aligned.dtype(name))
        w = self.aligned.get(name)
        if name not in self.adapter.lora:
            return w
        d = self.adapter.factors(name).delta()
        if self.transposed:
            d = d.T
        return (w.float() + d).to(w.dtype)


Finetune = FullFinetune | LoraFinetune
