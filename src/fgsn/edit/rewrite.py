"""Writing an edited checkpoint: the streamed rewrite every entry-wise method shares (FGSN's
baselines, the iterative reversion), the atomic output folder with its manifest and run info.

A method walks the checkpoint once, tensor by tensor: only the tensors of one module are in
memory at a time, and the output folder appears only when complete (`fgsn.atomic.atomic_dir`).
Tensors a method leaves alone are copied from the fine-tuned model bit for bit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fgsn.artifacts.card import write_card
from fgsn.artifacts.manifest import MANIFEST
from fgsn.atomic import atomic_dir, atomic_write_json
from fgsn.edit.projection import check_finite
from fgsn.errors import InputError
from fgsn.memory import peak_rss_mb
from fgsn.models.finetune import LoraFinetune
from fgsn.models.safetensors_io import PlannedTensor
from fgsn.models.trio import Trio
from fgsn.models.writer import CheckpointWriter, copy_side_files

log = logging.getLogger(__name__)

RUN_INFO = "fgsn/run.json"


@dataclass
class EditResult:
    out: Path
    manifest: dict

    @property
    def modified_fraction(self) -> float:
        return self.manifest["modified_fraction"]


def require_out(opts, method: str) -> Path:
    """The output folder of `method` (`opts.out`), which a rewrite cannot do without."""
    if not opts.out:
        raise InputError(f"fgsn baseline {method} needs --out DIR for the edited checkpoint")
    return Path(opts.out)


def side_files(trio: Trio) -> list[Path]:
    """Config and tokenizer files of the output: the aligned model's for a LoRA fine-tune, else
    the fine-tuned checkpoint's (as `fgsn project` does)."""
    src = trio.aligned if isinstance(trio.finetuned, LoraFinetune) else trio.finetuned.ckpt
    return src.side_files()


def stream_rewrite(trio: Trio, tmp: Path, transform: Callable[[str, torch.Tensor], torch.Tensor | None],
                   max_shard_gb: float = 5.0, desc: str = "rewrite", names: list[str] | None = None) -> None:
    """Write every tensor of the model into `tmp`: `transform(name, w_finetuned)` returns the new
    tensor (same dtype and shape as stored) or None to keep the fine-tuned tensor as it is.
    `names`: the order in which tensors are visited and laid out (default: the checkpoint's), for
    a method that computes them in another order (layer by layer)."""
    names = list(trio.aligned.names) if names is None else names
    if sorted(names) != sorted(trio.aligned.names):  # pragma: no cover - a method bug
        raise RuntimeError("stream_rewrite: `names` must list every tensor of the model once")
    plan = [PlannedTensor(n, trio.aligned.dtype(n), trio.aligned.shape(n)) for n in names]
    writer = CheckpointWriter(tmp, plan, int(max_shard_gb * 1024**3))
    for name in tqdm(names, desc=desc, unit="tensor"):
        w_ft = trio.finetuned.get(name)
        check_finite(w_ft, name, "fine-tuned")
        out = transform(name, w_ft)
        if out is None:
            out = w_ft
        elif out.dtype != w_ft.dtype or tuple(out.shape) != tuple(w_ft.shape):  # pragma: no cover - a method bug
            raise RuntimeError(f"{name}: the method produced {out.dtype} {tuple(out.shape)}, stored is "
                               f"{w_ft.dtype} {tuple(w_ft.shape)}")
        writer.write(name, out.contiguous())
    writer.close()
    copy_side_files(side_files(trio), tmp)


def run_info(t0: float, **how) -> dict:
    """Timings, memory and how the edit ran (e.g. device, prefetch): kept out of the manifest so
    that the manifest is deterministic."""
    return {"wall_s": round(time.time() - t0, 3),
            "peak_rss_mb": round(peak_rss_mb(), 1), **how}


def write_output(out: Path, opts, write: Callable[[Path], dict], t0: float, command: str | None = None) -> EditResult:
    """Run `write(tmp) -> manifest` inside an atomic output folder; add the manifest, the model card
    (with `command`, default `fgsn baseline METHOD`, as the one that reproduces it) and run info.
    `opts.overwrite` says whether an existing `out` may be replaced."""
    with atomic_dir(out, overwrite=opts.overwrite) as tmp:
        manifest = write(tmp)
        atomic_write_json(tmp / MANIFEST, manifest)
        (tmp / "fgsn").mkdir(exist_ok=True)
        write_card(tmp, manifest, opts, command or f"fgsn baseline {manifest['method']}")
        atomic_write_json(tmp / RUN_INFO, run_info(t0))
    log.info("wrote %s: %.3f%% of all parameters modified", out, 100 * manifest["modified_fraction"])
    return EditResult(out, manifest)
