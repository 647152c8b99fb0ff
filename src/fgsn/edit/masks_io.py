"""Masks kept bit-packed in memory and on disk (1 bit a weight): a 7B model's masks for six
layers take ~150 MB this way instead of 1.2 GB of bools."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch

from fgsn.locate.masks import load_masks, pack, save_masks, unpack


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

    def save(self, path: str | os.PathLike, meta: dict | None = None) -> None:
        save_masks(path, {k: self.get(k) for k in self._data}, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PackedMasks:
        masks, _ = load_masks(path)
        pm = cls()
        for k, v in masks.items():
            pm.put(k, v)
        return pm
