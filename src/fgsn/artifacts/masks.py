"""Masks kept bit-packed in memory and on disk (1 bit a weight): a 7B model's masks for six
layers take ~150 MB this way instead of 1.2 GB of bools. Masks are unpacked one tensor at a time,
when the edit needs them; saving and loading never unpack."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np
import torch

from fgsn.errors import IntegrityError


def pack(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.reshape(-1).numpy().astype(np.uint8)))


def unpack(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    n = int(np.prod(shape))
    bits = np.unpackbits(packed.numpy(), count=n)
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


class PackedMasks:
    def __init__(self) -> None:
        self._data: dict[str, tuple[torch.Tensor, tuple[int, ...]]] = {}

    def put(self, name: str, mask: torch.Tensor) -> None:
        self._data[name] = (pack(mask), tuple(mask.shape))

    def get(self, name: str) -> torch.Tensor:
        packed, shape = self._data[name]
        return unpack(packed, shape)

    def __contains__(self, name: str) -> bool:
        return name in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._data[name][1]

    def union_update(self, other: PackedMasks) -> None:
        """self |= other, tensor by tensor, on the packed bits (both pad with zero bits, so the OR of
        the packed bytes is the packed OR); nothing is unpacked."""
        for name, (packed, shape) in other._data.items():
            if name not in self._data:
                self._data[name] = (packed.clone(), shape)
                continue
            mine, my_shape = self._data[name]
            if my_shape != shape:
                raise IntegrityError(f"mask of {name} has shape {list(shape)} here but {list(my_shape)} in an "
                                     "earlier mask file; the masks were made for different models")
            self._data[name] = (mine | packed, shape)

    def save(self, path: str | os.PathLike, meta: dict | None = None) -> None:
        """One safetensors file of packed bits, shapes in its metadata; atomic and byte-stable."""
        from safetensors.torch import save

        from fgsn.atomic import atomic_write_bytes

        shapes = {k: list(s) for k, (_, s) in self._data.items()}
        # One metadata key: safetensors writes its metadata map in no fixed order, and masks must be
        # byte-identical across identical runs.
        metadata = {"fgsn": json.dumps({"shapes": shapes, "meta": meta or {}}, sort_keys=True)}
        atomic_write_bytes(path, save({k: p for k, (p, _) in sorted(self._data.items())}, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike) -> PackedMasks:
        from safetensors import SafetensorError, safe_open

        pm = cls()
        try:
            with safe_open(str(path), "pt") as f:
                shapes = json.loads((f.metadata() or {})["fgsn"])["shapes"]
                for k in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    pm._data[k] = (f.get_tensor(k), tuple(shapes[k]))
        except (OSError, SafetensorError, KeyError, json.JSONDecodeError) as e:
            raise IntegrityError(f"mask file {path} is unreadable or corrupt ({e}); re-run locate") from e
        return pm
