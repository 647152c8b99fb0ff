"""The continual ledger (method.md step 5): one folder that records, per safety dimension, the
mask it projected (bit-packed), the share of parameters it newly modified, its overlap with
earlier dimensions, and the models it applies to.

    LEDGER/ledger.json        steps, model hashes, a checksum of its own content
    LEDGER/masks/NNN-CAT.safetensors
    LEDGER/.lock              held (flock) by the run that writes

A new dimension projects only weights no earlier dimension projected; its --finetuned must be the
output of the latest step (the ledger refuses any other model, by sha256).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from fgsn.artifacts.masks import PackedMasks
from fgsn.atomic import atomic_write_json, dumps_json, sha256_file
from fgsn.errors import IntegrityError, LedgerError

VERSION = 1


def _checksum(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return hashlib.sha256(dumps_json(body).encode()).hexdigest()


class Ledger:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.file = self.path / "ledger.json"
        self.doc: dict = {"version": VERSION, "models": {}, "steps": []}
        self._unions: PackedMasks | None = None  # OR of every step's masks, packed; built on first use
        if self.path.exists() and not self.path.is_dir():
            raise LedgerError(f"ledger {self.path} is not a folder; --ledger takes a folder (created if missing)")
        if self.file.exists():
            self._load()

    def _load(self) -> None:
        try:
            doc = json.loads(self.file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IntegrityError(f"ledger {self.file} is corrupt ({e}); restore it from a backup") from e
        if not isinstance(doc, dict) or doc.get("checksum") != _checksum(doc):
            raise IntegrityError(f"ledger {self.file} fails its checksum: it was edited or damaged")
        if doc.get("version") != VERSION:
            raise LedgerError(f"ledger {self.file} has version {doc.get('version')}; this fgsn reads {VERSION}")
        self._unions = None
        for step in doc["steps"]:
            mf = self.path / step["mask_file"]
            if not mf.is_file() or sha256_file(mf) != step["mask_sha256"]:
                raise IntegrityError(f"ledger mask file {mf} is missing or does not match its recorded sha256")
        self.doc = doc

    @property
    def steps(self) -> list[dict]:
        return self.doc["steps"]

    def categories(self) -> list[str]:
        return [s["category"] for s in self.steps]

    def step_of(self, category: str) -> dict | None:
        return next((s for s in self.steps if s["category"] == category), None)

    @contextlib.contextmanager
    def locked(self) -> Iterator[Ledger]:
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LedgerError(f"ledger {self.path} is in use by another fgsn run; wait for it to finish") from None
            if self.file.exists():
                self._load()  # re-read under the lock: another run may have added a step
            yield self
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def check_models(self, base_sha: str, aligned_sha: str, finetuned_sha: str) -> None:
        """Refuse a ledger made for other models, or a --finetuned that is not the latest step."""
        models = self.doc["models"]
        if not models:
            return
        for role, sha in (("base", base_sha), ("aligned", aligned_sha)):
            if models.get(role) != sha:
                raise LedgerError(f"ledger {self.path} was made for another {role} model (sha256 "
                                  f"{str(models.get(role))[:12]}..., given {sha[:12]}...); use a new --ledger folder")
        expected = models["current"]
        if finetuned_sha != expected:
            where = self.steps[-1]["output"] if self.steps else "the original fine-tuned model"
            raise LedgerError(f"ledger {self.path} continues from {where} (sha256 {expected[:12]}...), but "
                              f"--finetuned has sha256 {finetuned_sha[:12]}...; pass the latest step's output")

    def unions(self) -> PackedMasks:
        """The OR of every step's masks, per tensor, kept bit-packed: each step's mask file is read
        once (at the first call), not once per tensor."""
        if self._unions is None:
            u = PackedMasks()
            for step in self.steps:
                u.union_update(PackedMasks.load(self.path / step["mask_file"]))
            self._unions = u
        return self._unions

    def union(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """OR of the masks every earlier step projected for tensor `name` (unpacked, this tensor only)."""
        u = self.unions()
        if name not in u:
            return torch.zeros(shape, dtype=torch.bool)
        if u.shape(name) != tuple(shape):
            raise IntegrityError(f"ledger {self.path}: earlier masks of {name} have shape {list(u.shape(name))}, "
                                 f"this model's is {list(shape)}; use a new --ledger folder for this model")
        return u.get(name)

    def record(self, category: str, masks: PackedMasks, stats: dict, models: dict[str, str],
               output: str, output_sha: str) -> dict:
        idx = len(self.steps)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", category)[:60]
        rel = f"masks/{idx:03d}-{safe}.safetensors"
        masks.save(self.path / rel, meta={"category": category, "step": idx})
        step = {"step": idx, "category": category, "mask_file": rel, "mask_sha256": sha256_file(self.path / rel),
                "output": output, "output_sha256": output_sha, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **stats}
        doc = dict(self.doc)
        doc["models"] = {"base": models["base"], "aligned": models["aligned"],
                         "finetuned_original": self.doc["models"].get("finetuned_original", models["finetuned"]),
                         "current": output_sha}
        doc["steps"] = [*self.steps, step]
        doc["checksum"] = _checksum(doc)
        atomic_write_json(self.file, doc)
        self.doc = doc
        if self._unions is not None:
            self._unions.union_update(masks)  # the new step is part of every later union
        return step
