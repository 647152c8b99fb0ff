"""On-disk caches of completions, judge verdicts and reference NLLs.

Layout: `ROOT/<kind>/<namespace>/part-<hash>.jsonl`, where the namespace is derived from what
determines the values (model content hash + generation settings; judge id; ...). Each part is
written atomically once, never appended to, so a run killed mid-batch loses at most that batch
and a rerun (`--resume` for free) generates only what is missing. Values are keyed by a sha256 of
their input (the rendered prompt text), so a changed chat template is a cache miss, not a stale hit.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from fgsn.atomic import atomic_write_json, atomic_write_text, jsonl_lines

log = logging.getLogger(__name__)


def sha256_text(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def settings_key(settings: dict[str, Any]) -> str:
    return sha256_text(json.dumps(settings, sort_keys=True, ensure_ascii=False))


class ShardCache:
    """A key -> JSON value map stored as immutable, atomically written shards."""

    def __init__(self, root: str | Path, describe: dict[str, Any] | None = None):
        self.root = Path(root)
        self._data: dict[str, Any] = {}
        if self.root.is_dir():
            for part in sorted(self.root.glob("part-*.jsonl")):
                self._load(part)
        if describe is not None and not (self.root / "settings.json").exists():
            atomic_write_json(self.root / "settings.json", describe)  # for humans inspecting the cache

    def _load(self, part: Path) -> None:
        try:
            lines = jsonl_lines(part.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            log.warning("cache shard %s unreadable (%s); ignoring it", part, e)
            return
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                self._data[row["k"]] = row["v"]
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning("cache shard %s line %d is corrupt; ignoring it", part, n)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def put_many(self, values: dict[str, Any]) -> None:
        """Store a batch as one new shard (no-op for an empty batch)."""
        new = {k: v for k, v in values.items() if self._data.get(k, object()) != v}
        if not new:
            return
        body = "".join(json.dumps({"k": k, "v": v}, ensure_ascii=False, sort_keys=True) + "\n"
                       for k, v in sorted(new.items()))
        name = f"part-{sha256_text(body)[:20]}.jsonl"
        atomic_write_text(self.root / name, body)
        self._data.update(new)


class EvalCache:
    """The three caches of an evaluation, under one root (default RUNDIR/cache)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def generations(self, model_hash: str, settings: dict[str, Any]) -> ShardCache:
        ns = self.root / "generations" / model_hash[:20] / settings_key(settings)[:20]
        return ShardCache(ns, {"model_sha256": model_hash, **settings})

    def judgments(self, judge_id: str, describe: dict[str, Any]) -> ShardCache:
        return ShardCache(self.root / "judgments" / judge_id[:20], describe)

    def nll(self, model_hash: str, settings: dict[str, Any]) -> ShardCache:
        ns = self.root / "nll" / model_hash[:20] / settings_key(settings)[:20]
        return ShardCache(ns, {"model_sha256": model_hash, **settings})
