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


class MemoryMemo:
    """A small in-process cache of large tensor dicts, bounded in bytes (oldest evicted first).

    Why: gradient sums (the snip scores) are as large as the target weights, too big to write to
    disk on every locate, but `fgsn sweep` locates the same model on the same prompts once per
    budget; keeping the last few in memory turns N backward passes into one.
    """

    def __init__(self, max_bytes: int):
        from collections import OrderedDict

        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[dict, int]] = OrderedDict()

    @staticmethod
    def _size(value: dict) -> int:
        return sum(t.numel() * t.element_size() for t in value.values())

    def get_or_compute(self, key: str | None, compute):
        if key is not None and key in self._items:
            self._items.move_to_end(key)
            return self._items[key][0]
        value = compute()
        size = self._size(value)
        if key is not None and size <= self.max_bytes:
            self._items[key] = (value, size)
            while sum(s for _, s in self._items.values()) > self.max_bytes:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()


# Two sides (harmful, task) of a 135M-parameter model's gradient sums fit with room to spare.
GRADIENT_MEMO = MemoryMemo(max_bytes=2 << 30)
