"""Streaming checkpoint writer: shards are laid out up front and written tensor by tensor, so the
output never needs the whole model in memory. Use it inside `fgsn.atomic.atomic_dir` so that the
folder appears only when complete."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from fgsn.models.safetensors_io import PlannedTensor, StreamingShardWriter, plan_shards

DEFAULT_SHARD_BYTES = 5 * 1024**3


class CheckpointWriter:
    def __init__(self, folder: str | Path, plan: list[PlannedTensor], max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                 metadata: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.shards = plan_shards(plan, max_shard_bytes)
        n = len(self.shards)
        self.file_names = (["model.safetensors"] if n == 1
                           else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
        self.metadata = {"format": "pt", **(metadata or {})}
        self._shard = -1
        self._writer: StreamingShardWriter | None = None
        self._left = 0

    def _open_next(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._shard += 1
        plan = self.shards[self._shard]
        self._writer = StreamingShardWriter(self.folder / self.file_names[self._shard], plan, self.metadata)
        self._left = len(plan)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._left == 0:
            self._open_next()
        assert self._writer is not None
        self._writer.write(name, tensor)
        self._left -= 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._shard != len(self.shards) - 1 or self._left:
            raise RuntimeError("checkpoint writer closed before every planned tensor was written")
        if len(self.shards) > 1:
            weight_map = {t.name: self.file_names[i] for i, shard in enumerate(self.shards) for t in shard}
            total = sum(t.nbytes for shard in self.shards for t in shard)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))


def copy_side_files(files: list[Path], folder: str | Path) -> None:
    """Config, tokenizer and generation config travel unchanged with the edited weights."""
    for f in files:
        shutil.copy2(f, Path(folder) / f.name)
