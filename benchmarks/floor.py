"""The hardware floor of an edit: read every byte of the three inputs and write the output, no
maths.

- `safetensors`: plain safetensors, tensor by tensor: `safe_open(...).get_tensor` of every tensor
  of base, aligned and fine-tuned, then `save_file` of the fine-tuned tensors (one file per input
  shard), fsync'd like fgsn's writer. Memory is not the point here (save_file needs a shard's
  tensors at once).
- `bytes`: the raw I/O floor: read the three inputs' files sequentially in 16 MiB blocks and write
  the fine-tuned bytes to the output, fsync'd (what `cat` + `cp` would cost).

    python benchmarks/floor.py --mode safetensors --base B --aligned A --finetuned F --out OUT
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

BLOCK = 16 << 20


def _files(folder: str | Path) -> list[Path]:
    return sorted(Path(folder).glob("*.safetensors"))


def floor_safetensors(base, aligned, finetuned, out) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    others = [safe_open(str(f), "pt") for folder in (base, aligned) for f in _files(folder)]
    for f in others:
        for k in f.keys():  # noqa: SIM118
            f.get_tensor(k)
    for path in _files(finetuned):
        with safe_open(str(path), "pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        target = Path(out) / path.name
        save_file(state, str(target), metadata={"format": "pt"})
        del state
        with open(target, "rb+") as g:
            os.fsync(g.fileno())


def floor_bytes(base, aligned, finetuned, out) -> None:
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    for folder in (base, aligned):
        for path in _files(folder):
            with open(path, "rb", buffering=0) as f:
                while f.readinto(view):
                    pass
    for path in _files(finetuned):
        with open(path, "rb", buffering=0) as f, open(Path(out) / path.name, "wb", buffering=0) as g:
            while k := f.readinto(view):
                g.write(view[:k])
            os.fsync(g.fileno())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("safetensors", "bytes"), default="safetensors")
    for k in ("base", "aligned", "finetuned", "out"):
        ap.add_argument(f"--{k}", required=True)
    a = ap.parse_args(argv)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (floor_safetensors if a.mode == "safetensors" else floor_bytes)(a.base, a.aligned, a.finetuned, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
