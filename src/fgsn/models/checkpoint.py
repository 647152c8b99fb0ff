"""A Hugging Face checkpoint folder read lazily, one tensor at a time.

Handles a single `model.safetensors`, sharded safetensors with `model.safetensors.index.json`,
and (only with `allow_pickle`) legacy `.bin` files loaded with `weights_only=True`.
"""

from __future__ import annotations

import json
import logging
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from fgsn.errors import InputError, IntegrityError
from fgsn.models.safetensors_io import TensorInfo, read_header, read_tensor

log = logging.getLogger(__name__)

# Files that describe the model besides its weights; copied to an edited output.
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
              "chat_template.jinja", "chat_template.json")


def read_json_config(path: Path) -> Any:
    """A model's or adapter's JSON config, or an InputError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON: {e}") from e


class Checkpoint:
    """Lazy view of a checkpoint folder: names, shapes and dtypes from headers; data on demand."""

    def __init__(self, path: str | os.PathLike, allow_pickle: bool = False):
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise InputError(f"model path {self.path} does not exist")
        if not self.path.is_dir():
            raise InputError(f"model path {self.path} is not a folder; give a Hugging Face checkpoint folder")
        cfg_path = self.path / "config.json"
        if not cfg_path.is_file():
            if (self.path / "adapter_config.json").is_file():
                raise InputError(f"{self.path} is a LoRA adapter, not a full checkpoint; pass it where an adapter "
                                 "is accepted (e.g. --finetuned ADAPTER with --aligned the model it was trained on)")
            raise InputError(f"{self.path} has no config.json; is it a Hugging Face checkpoint folder?")
        self.config: dict[str, Any] = read_json_config(cfg_path)
        self.allow_pickle = allow_pickle
        self.is_pickle = False
        self._infos: dict[str, tuple[Path, TensorInfo]] = {}
        self._pickled: dict[str, torch.Tensor] = {}
        self._index()

    # -- discovery ---------------------------------------------------------------------------
    def _weight_files(self) -> list[Path]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
                raise IntegrityError(f"{index} is corrupt ({e}); re-download the checkpoint") from e
            files = sorted({self.path / f for f in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise InputError(f"{self.path}: shards listed in the index are missing: {missing[:5]}")
            return files
        files = sorted(self.path.glob("*.safetensors"))
        if files:
            return files
        pickles = sorted(self.path.glob("*.bin")) + sorted(self.path.glob("*.pt")) + sorted(self.path.glob("*.pth"))
        if pickles:
            if not self.allow_pickle:
                raise InputError(
                    f"{self.path} holds only pickle weights ({pickles[0].name}); fgsn does not unpickle files by "
                    "default. Convert them to safetensors, or pass --allow-pickle to load them with weights_only=True"
                )
            self.is_pickle = True
            return pickles
        raise InputError(f"{self.path} has no weight files (*.safetensors)")

    def _index(self) -> None:
        self.files = self._weight_files()
        for f in self.files:
            if self.is_pickle:
                state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
                self._pickled.update(state)
                continue
            infos, _ = read_header(f)
            for name, info in infos.items():
                if name in self._infos:
                    raise IntegrityError(f"{self.path}: tensor {name} appears in two shards")
                self._infos[name] = (f, info)

    # -- metadata ------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._pickled) if self.is_pickle else list(self._infos)

    def __contains__(self, name: str) -> bool:
        return name in (self._pickled if self.is_pickle else self._infos)

    def _require(self, name: str) -> None:
        if name not in self:
            raise InputError(f"tensor {name} is missing from {self.path}")

    def shape(self, name: str) -> tuple[int, ...]:
        self._require(name)
        return tuple(self._pickled[name].shape) if self.is_pickle else self._infos[name][1].shape

    def dtype(self, name: str) -> torch.dtype:
        self._require(name)
        return self._pickled[name].dtype if self.is_pickle else self._infos[name][1].dtype

    def numel(self, name: str) -> int:
        n = 1
        for s in self.shape(name):
            n *= s
        return n

    @cached_property
    def total_params(self) -> int:
        return sum(self.numel(n) for n in self.names)

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    @property
    def vocab_size(self) -> int | None:
        v = self.config.get("vocab_size")
        if v is None and isinstance(self.config.get("text_config"), dict):
            v = self.config["text_config"].get("vocab_size")
        return v

    def side_files(self) -> list[Path]:
        return [self.path / n for n in SIDE_FILES if (self.path / n).is_file()]

    # -- data ------------------------------------------------------------------------------------
    def get(self, name: str) -> torch.Tensor:
        """The tensor as stored (dtype and layout), on CPU, in its own memory."""
        self._require(name)
        if self.is_pickle:
            return self._pickled[name].clone()
        path, info = self._infos[name]
        return read_tensor(path, info)

    @cached_property
    def sha256(self) -> str:
        """Content hash of the weight files (combined in name order); cached by path, size and
        mtime so that big checkpoints are hashed once."""
        from fgsn.models.hashing import checkpoint_sha256

        return checkpoint_sha256(self.files)

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {len(self.names)} tensors)"
