"""The streamed sparse projection of a whole checkpoint (method.md step 4 for every tensor):
masked target tensors are projected onto the safety direction, every other tensor is copied from
the fine-tuned model as stored; the result goes to a sharded checkpoint writer, or back into a
PEFT adapter (`write_adapter`). Used by `fgsn project` (fgsn.pipeline.project) and SafeLoRA."""

from __future__ import annotations

import shutil
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fgsn.artifacts.masks import PackedMasks
from fgsn.edit.projection import ProjectionSettings, TensorEdit, check_finite, project_tensor
from fgsn.errors import InputError
from fgsn.models.lora import LoraFactors
from fgsn.models.prefetch import prefetched
from fgsn.models.registry import from_out_in, to_out_in
from fgsn.models.trio import Trio
from fgsn.models.writer import CheckpointWriter


def write_adapter(tmp: Path, trio: Trio, edits: dict[str, TensorEdit]) -> None:
    """Write the edit back as a PEFT adapter: lora_B' = (C B)/scale on masked rows, A unchanged."""
    from safetensors.torch import save_file

    from fgsn.models.safetensors_io import read_tensor

    ad = trio.finetuned.adapter
    tensors = {}
    for key, info in ad._infos.items():
        tensors[key] = read_tensor(ad.weights_file, info)
    for name, e in edits.items():
        if e.masked == 0:
            continue
        if e.new_B is None:
            raise InputError(f"{name}: the edit is not representable as an adapter; use --output-format merged")
        _, b_key = ad.lora[name]
        tensors[b_key] = (e.new_B / ad.scale(name)).to(tensors[b_key].dtype).contiguous()
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    shutil.copy2(ad.path / "adapter_config.json", tmp / "adapter_config.json")
    for f in trio.aligned.side_files():
        if "token" in f.name or "chat_template" in f.name:
            shutil.copy2(f, tmp / f.name)


@dataclass
class _Inputs:
    """What the edit needs of one tensor, read together (by the prefetch thread when it is on)."""

    finetuned: torch.Tensor
    mask: torch.Tensor | None = None          # None: not an edit target
    aligned: torch.Tensor | None = None       # these three only when the mask selects something
    base: torch.Tensor | None = None
    factors: LoraFactors | None = None


def _reader(trio: Trio, masks: PackedMasks, targets_by_name: dict):
    def read(name: str) -> _Inputs:
        ft = trio.finetuned.get(name)
        if name not in masks or name not in targets_by_name:
            return _Inputs(ft)
        mask = masks.get(name)
        if not bool(mask.any()):
            return _Inputs(ft, mask)
        return _Inputs(ft, mask, trio.aligned.get(name), trio.base.get(name), trio.finetuned.factors(name))

    return read


@contextmanager
def _full_float32():
    """The projection in true float32 on every device: no TF32 matmuls on a GPU, whatever the
    process set before (the CPU result is the reference the GPU must match)."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def stream_edit(trio: Trio, masks: PackedMasks, targets_by_name: dict, settings: ProjectionSettings,
                writer: CheckpointWriter | None, device: str = "cpu", prefetch: int = 1) -> dict[str, TensorEdit]:
    """Walk every tensor of the model once: masked targets are projected (on `device`), the rest
    copied from the fine-tuned model as stored. The next `prefetch` tensors' inputs are read in a
    background thread while the current one is projected and written, so the inputs of at most
    1 + `prefetch` tensors are in memory at a time (`fgsn.models.prefetch`)."""
    edits: dict[str, TensorEdit] = {}
    arch = trio.arch
    dev = torch.device(device)
    reads = prefetched(trio.aligned.names, _reader(trio, masks, targets_by_name), prefetch)
    with _full_float32(), closing(reads):  # closing: an error here stops the reading thread at once
        for name, x in tqdm(reads, total=len(trio.aligned.names), desc="project", unit="tensor"):
            w_ft = x.finetuned
            if x.aligned is None:
                check_finite(w_ft, name, "fine-tuned")
                if x.mask is not None:
                    t = targets_by_name[name]
                    edits[name] = TensorEdit(name, t.layer, t.spec.name, numel=x.mask.numel(), masked=0)
            else:
                t = targets_by_name[name]
                w_ft, w_al, w_base = (w.to(dev) for w in (w_ft, x.aligned, x.base))
                for w, role in ((w_ft, "fine-tuned"), (w_al, "aligned"), (w_base, "base")):
                    check_finite(w, name, role)
                factors = x.factors
                if factors is not None:
                    factors = LoraFactors(factors.B.to(dev), factors.A.to(dev))
                parts = arch.part_sizes(t.spec, trio.aligned.config, x.mask.shape[0])
                out, edit = project_tensor(
                    name, t.layer, t.spec.name, w_aligned=to_out_in(w_al, arch), w_finetuned=to_out_in(w_ft, arch),
                    w_base=to_out_in(w_base, arch), mask=x.mask.to(dev), parts=parts, settings=settings,
                    factors=factors)
                if edit.new_B is not None:
                    edit.new_B = edit.new_B.cpu()
                edits[name] = edit
                w_ft = from_out_in(out, arch).cpu()
            if writer is not None:
                writer.write(name, w_ft)
    return edits
