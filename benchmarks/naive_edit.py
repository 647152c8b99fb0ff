"""The naive reference edit, written the way SafeLoRA's code does it: load the three full models
into memory, form every dense d_out x d_out projection matrix C = V V^T / ||V||_F up front (kept
in a list, like SafeLoRA's `aligned_matrix`), then apply the masked projection and save the whole
state dict at once. Same inputs and same output numbers as `fgsn project` (float32 maths, bf16
rounding at the end); only the memory and the order of work differ. Independent of fgsn's code on
purpose: it reads the locate run's masks with numpy and safetensors directly.

Scope: full fine-tunes of Llama-like checkpoints ((out, in) weights, no fused modules), the
`safelora` projector, any mask granularity.

    python benchmarks/naive_edit.py --base B --aligned A --finetuned F --locate-run RUN --out OUT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def load_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """The whole checkpoint in memory (every shard)."""
    state: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


def load_masks(run: str | Path) -> dict[str, torch.Tensor]:
    """Bit-packed masks of a locate run (fgsn's format: uint8 packbits + shapes in metadata)."""
    path = str(Path(run) / "masks.safetensors")
    with safe_open(path, "pt") as f:
        shapes = json.loads(f.metadata()["fgsn"])["shapes"]
        out = {}
        for k in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
            n = int(np.prod(shapes[k]))
            bits = np.unpackbits(f.get_tensor(k).numpy(), count=n).astype(bool)
            out[k] = torch.from_numpy(bits).reshape(shapes[k])
    return out


def projection_matrix(w_aligned: torch.Tensor, w_base: torch.Tensor) -> torch.Tensor:
    """SafeLoRA's dense C = V V^T / ||V||_F (d_out x d_out, float32)."""
    V = w_aligned.float() - w_base.float()
    n = float(torch.linalg.matrix_norm(V.double(), "fro"))
    if n == 0.0:
        return torch.zeros(V.shape[0], V.shape[0])
    return (V @ V.T) / n


def naive_edit(base: str | Path, aligned: str | Path, finetuned: str | Path, locate_run: str | Path
               ) -> dict[str, torch.Tensor]:
    b, a, ft = load_state(base), load_state(aligned), load_state(finetuned)
    masks = load_masks(locate_run)
    targets = [n for n in ft if n in masks and any(f".{m}.weight" in n for m in MODULES)]
    # all projection matrices first, as SafeLoRA does
    C = {n: projection_matrix(a[n], b[n]) for n in targets}
    out = dict(ft)
    for n in targets:
        wa = a[n].float()
        dW = ft[n].float() - wa
        projected = C[n] @ dW
        out[n] = torch.where(masks[n], (wa + projected).to(ft[n].dtype), ft[n])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for k in ("base", "aligned", "finetuned", "locate-run", "out"):
        ap.add_argument(f"--{k}", required=True)
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    state = naive_edit(a.base, a.aligned, a.finetuned, a.locate_run)
    path = out / "model.safetensors"
    save_file(state, str(path), metadata={"format": "pt"})
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    (out / "config.json").write_bytes((Path(a.finetuned) / "config.json").read_bytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
