"""Reading a saved tiny checkpoint back, for the editors' formula tests: every tensor of its
safetensors shards, and which of them are the seven linear modules the editors touch."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def weights(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def is_linear(name: str) -> bool:
    return name.endswith(".weight") and any(f".{m}." in name for m in PROJ)
