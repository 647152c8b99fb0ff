"""Opening and checking the base / aligned / fine-tuned trio before any work is done."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fgsn.errors import InputError, MismatchError
from fgsn.models.checkpoint import Checkpoint
from fgsn.models.finetune import Finetune, FullFinetune, LoraFinetune
from fgsn.models.lora import LoraAdapter
from fgsn.models.registry import Architecture, architecture_for, layer_prefix


def is_adapter(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "adapter_config.json").is_file() and not (p / "config.json").is_file()


def open_finetuned(path: str | os.PathLike, aligned: Checkpoint, arch: Architecture,
                   allow_pickle: bool = False) -> Finetune:
    if is_adapter(path):
        adapter = LoraAdapter(path)
        adapter.check_against(aligned, transposed=arch.transposed)
        return LoraFinetune(aligned, adapter, transposed=arch.transposed)
    ft = Checkpoint(path, allow_pickle=allow_pickle)
    check_same_model(aligned, ft, "aligned", "fine-tuned")
    return FullFinetune(ft)


def check_same_model(a: Checkpoint, b: Checkpoint, a_role: str, b_role: str) -> None:
    """Same architecture, tensor names, shapes, dtypes and vocabulary, or a MismatchError that
    names the first difference."""
    if a.model_type != b.model_type:
        raise MismatchError(f"{b_role} model {b.path} is a {b.model_type!r} model but {a_role} {a.path} is "
                            f"{a.model_type!r}; all models must share one architecture")
    if a.vocab_size != b.vocab_size:
        raise MismatchError(f"{b_role} {b.path} has vocab_size {b.vocab_size} but {a_role} has {a.vocab_size}; "
                            "the models must share a tokenizer")
    names_a, names_b = set(a.names), set(b.names)
    if names_a != names_b:
        only_a = sorted(names_a - names_b)[:3]
        only_b = sorted(names_b - names_a)[:3]
        raise MismatchError(f"{a_role} and {b_role} have different tensors: only in {a_role}: {only_a}; only in "
                            f"{b_role}: {only_b} ({b.path})")
    for name in a.names:
        if a.shape(name) != b.shape(name):
            raise MismatchError(f"{name}: shape {a.shape(name)} in {a_role} but {b.shape(name)} in {b_role} "
                                f"({b.path}); the models are not the same architecture size")
        if a.dtype(name) != b.dtype(name):
            raise MismatchError(f"{name}: dtype {a.dtype(name)} in {a_role} but {b.dtype(name)} in {b_role} "
                                f"({b.path}); save both in the same dtype")


@dataclass
class Trio:
    aligned: Checkpoint
    finetuned: Finetune
    arch: Architecture
    base: Checkpoint | None = None

    @property
    def num_layers(self) -> int:
        return self.arch.num_layers(self.aligned.config)

    def source(self, which: str) -> tuple[Path, Path | None]:
        """(checkpoint folder, LoRA adapter or None) that loads the `aligned` or `finetuned` model live."""
        from fgsn.models.finetune import LoraFinetune

        if which == "aligned":
            return self.aligned.path, None
        if isinstance(self.finetuned, LoraFinetune):
            return self.aligned.path, self.finetuned.path
        return self.finetuned.path, None


def open_trio(aligned: str | os.PathLike, finetuned: str | os.PathLike, base: str | os.PathLike | None = None,
              allow_pickle: bool = False) -> Trio:
    al = Checkpoint(aligned, allow_pickle=allow_pickle)
    arch = architecture_for(al.config)
    b = None
    if base is not None:
        b = Checkpoint(base, allow_pickle=allow_pickle)
        check_same_model(al, b, "aligned", "base")
    ft = open_finetuned(finetuned, al, arch, allow_pickle=allow_pickle)
    if Path(aligned).resolve() == Path(finetuned).resolve():
        raise InputError(f"--finetuned and --aligned are the same folder ({aligned}); there is no update to repair")
    return Trio(aligned=al, finetuned=ft, arch=arch, base=b)


def layer_of(trio: Trio) -> Callable[[str], int | None]:
    """tensor name -> decoder layer index (None for embeddings, final norm, head)."""
    rx = re.compile(rf"^{re.escape(layer_prefix(trio.arch, trio.aligned.names))}\.(\d+)\.")

    def f(name: str) -> int | None:
        m = rx.match(name)
        return int(m.group(1)) if m else None

    return f
