"""Content hashes of model files, cached on disk by (path, size, mtime) so that a 100 GB
checkpoint is read once, not at every run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from fgsn.atomic import atomic_write_json, sha256_file


def cache_root(cache_root: str | os.PathLike | None = None) -> Path:
    """The fgsn cache folder, the one root of every cache (probes, file hashes, the converted
    SmolLM2, the organism): the argument, else `$FGSN_CACHE` (empty means unset, `~` is expanded),
    else `~/.cache/fgsn`."""
    if cache_root is not None:
        return Path(cache_root).expanduser()
    env = os.environ.get("FGSN_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fgsn"


def _cache_file() -> Path:
    return cache_root() / "file-hashes.json"


def file_sha256(path: str | os.PathLike) -> str:
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache_path = _cache_file()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = sha256_file(path)
    cache[key] = digest
    with contextlib.suppress(OSError):  # a read-only home is no reason to fail a run
        atomic_write_json(cache_path, cache)
    return digest


def checkpoint_sha256(files: list[Path]) -> str:
    """One hash for a set of weight files: sha256 over 'name:sha256' lines in name order."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda p: p.name):
        h.update(f"{f.name}:{file_sha256(f)}\n".encode())
    return h.hexdigest()
