"""Free disk space, checked before a run writes checkpoints rather than discovered as ENOSPC an
hour into it.

Why: every edit of `fgsn compare`, `fgsn repair`, `fgsn demo` and `fgsn bench` writes a full
checkpoint (a LoRA fine-tune's repair too: it is written merged), so a run of fifteen variants of
a 135M-parameter model needs about 4 GB and the same run on an 8B model half a terabyte. A run that
stops on a full disk halfway has cost its time and leaves the disk full; the check costs nothing.
`FGSN_DISK_CHECK=0` turns it off (a file system whose free-space figure cannot be trusted).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fgsn.errors import InputError

MARGIN = 1.1  # manifests, evaluation caches and the atomic writes' temporary files on top of the weights


def weights_bytes(model: str | os.PathLike) -> int:
    """Size of a model folder's weight files (*.safetensors, *.bin): what one edited copy of it takes."""
    path = Path(model)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.glob("*") if f.suffix in (".safetensors", ".bin") and f.is_file())


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the file system that holds `path` (or would hold it: its nearest existing parent)."""
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def require_free(path: str | os.PathLike, need: int, what: str) -> None:
    """Raise InputError when the file system of `path` has less than `need` bytes (times a margin)
    free; `what` says what needs them, e.g. "4 checkpoints of 540 MB"."""
    if os.environ.get("FGSN_DISK_CHECK", "1") == "0" or need <= 0:
        return
    want, free = int(need * MARGIN), free_bytes(path)
    if free < want:
        raise InputError(f"{what} need about {gib(want)} free under {path}, but only {gib(free)} is free there: "
                         f"free some space, or write the run elsewhere (--out; the organism and the Gram cache "
                         f"live under $FGSN_CACHE); FGSN_DISK_CHECK=0 skips this check")


def require_checkpoints(path: str | os.PathLike, count: int, like: str | os.PathLike, what: str) -> None:
    """Room under `path` for `count` checkpoints the size of model folder `like`."""
    size = weights_bytes(like)
    require_free(path, count * size, f"{what} ({count} checkpoints of {size / 1e6:,.0f} MB)")
