"""Content-addressed cache of probe statistics: an interrupted or repeated locate reuses every
probe pass it already finished (keyed by model hash, prompts and settings)."""

from __future__ import annotations

import contextlib
import hashlib
import json

from fgsn.atomic import atomic_write_bytes
from fgsn.locate.probes import ProbeStats
from fgsn.models.hashing import cache_root


def probe_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _path(key: str):
    return cache_root() / "probes" / f"{key}.safetensors"


def load_probe(key: str) -> ProbeStats | None:
    from safetensors import SafetensorError, safe_open

    path = _path(key)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError):
        return None  # a damaged cache entry is recomputed, never trusted
    stats = ProbeStats(n_prompts=int(meta["n_prompts"]), n_tokens=int(meta["n_tokens"]))
    stats.unit_sum = tensors.pop("__unit_sum__", None)
    stats.sumsq = {k[len("sumsq/"):]: v for k, v in tensors.items()}
    return stats


def save_probe(key: str, stats: ProbeStats) -> None:
    from safetensors.torch import save

    tensors = {f"sumsq/{k}": v.contiguous() for k, v in stats.sumsq.items()}
    if stats.unit_sum is not None:
        tensors["__unit_sum__"] = stats.unit_sum.contiguous()
    meta = {"n_prompts": str(stats.n_prompts), "n_tokens": str(stats.n_tokens)}
    with contextlib.suppress(OSError):  # caching is an optimisation; a full disk must not fail the run
        atomic_write_bytes(_path(key), save(tensors, metadata=meta))


def cached_probe(key: str | None, compute) -> ProbeStats:
    if key is not None and (hit := load_probe(key)) is not None:
        return hit
    stats = compute()
    if key is not None:
        save_probe(key, stats)
    return stats
