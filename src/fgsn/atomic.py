"""Atomic output: a file or folder appears under its final name only once it is complete, so a
run killed at any moment leaves either nothing or the previous version intact."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fgsn.errors import InputError


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    """The one JSON style of every artifact: sorted keys make outputs byte-stable across runs."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj))


def jsonl_lines(text: str) -> list[str]:
    """The non-blank lines of a JSONL (or one-item-a-line) text, split on "\n" only. `str.splitlines`
    also breaks at U+2028, U+2029, U+0085, \\x0b, \\x0c and \\x1c-\\x1e, which JSON leaves unescaped
    inside strings (json.dumps with ensure_ascii=False): a model's completion can hold them."""
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Every row of a JSONL file written by `atomic_write_jsonl` (see `jsonl_lines`)."""
    return [json.loads(line) for line in jsonl_lines(Path(path).read_text(encoding="utf-8"))]


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any], sort_keys: bool = False) -> None:
    """One JSON object a line (prompt files, training data, evaluation records), written atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=sort_keys) + "\n" for r in rows))


def prepare_output_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing output unless `overwrite`; the real write goes through `atomic_dir`."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"output {out} already exists; pass --overwrite to replace it, or choose another --out")
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder; remove it or choose another --out")
    return out


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside `out`; on success it replaces `out` in one rename.

    On failure (or a kill) the temp folder is left behind with a `.tmp-` name that no reader
    mistakes for a finished output, and `out` keeps its previous content.
    """
    out = prepare_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def link_or_copy(src: str, dst: str) -> None:
    """Hard-link the file `src` to `dst`, or copy it where links fail."""
    try:
        os.link(src, dst)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(src, dst)


def link_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy the folder `src` into `dst` by hard links where the file system allows (a checkpoint
    published from a scratch folder costs no second copy on disk), else by plain copies. Safe
    because fgsn never writes a file in place: every write replaces the file with a new one."""
    shutil.copytree(src, dst, dirs_exist_ok=True, copy_function=link_or_copy)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
