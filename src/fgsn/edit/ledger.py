"""The continual ledger (method.md step 5): one folder that records, per safety dimension
(category), what its step edited, its overlap with earlier steps, and the models it applies to.

    LEDGER/ledger.json                 steps, model hashes, the editor, a checksum of its own content
    LEDGER/masks/NNN-CAT.safetensors   per step, bit-packed: the entries it projected (`fgsn project`)
                                       or the output rows it changed (`fgsn activation-match`)
    LEDGER/prompts/NNN-CAT.jsonl       per step of `fgsn activation-match`: the harmful prompts (and the
                                       answers that followed them) its Grams were taken on, so that a
                                       later step can keep those outputs
    LEDGER/.lock                       held (flock) by the run that writes

One ledger follows one editor (`editor`: project or activation-match). A new step's --finetuned
must be the output of the latest step (the ledger refuses any other model, by sha256). `fgsn
project` projects only weights no earlier step projected; `fgsn activation-match` keeps the
outputs earlier steps restored (fgsn.edit.activation_match_ledger).

Schema: version 2 adds `editor` (absent in version 1, which only `fgsn project` wrote: read as
editor project), `paths` (where the original fine-tuned model was) and the per-step prompts
file; version-1 ledgers are read as they are and written as version 2 at their next step.
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
from fgsn.atomic import atomic_write_json, atomic_write_jsonl, dumps_json, read_jsonl, sha256_file
from fgsn.errors import IntegrityError, LedgerError

VERSION = 2
READABLE = (1, 2)


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
        if doc.get("version") not in READABLE:
            raise LedgerError(f"ledger {self.file} has version {doc.get('version')}; this fgsn reads "
                              f"{', '.join(map(str, READABLE))}")
        self._unions = None
        for step in doc["steps"]:
            for kind, key in (("mask", "mask_file"), ("prompts", "prompts_file")):
                if key not in step:
                    continue
                f = self.path / step[key]
                if not f.is_file() or sha256_file(f) != step[f"{kind}_sha256"]:
                    raise IntegrityError(f"ledger {kind} file {f} is missing or does not match its recorded sha256")
        self.doc = doc

    @property
    def steps(self) -> list[dict]:
        return self.doc["steps"]

    def categories(self) -> list[str]:
        return [s["category"] for s in self.steps]

    def step_of(self, category: str) -> dict | None:
        return next((s for s in self.steps if s["category"] == category), None)

    @property
    def editor(self) -> str | None:
        """The command that writes this ledger's steps (None while it has none)."""
        return self.doc.get("editor", "project") if self.steps else None

    def check_editor(self, editor: str) -> None:
        """One ledger follows one editor: what a step records (masks of entries, or of rows, and the
        statistics a later step reuses) differs between them."""
        if self.editor is not None and self.editor != editor:
            raise LedgerError(f"ledger {self.path} holds steps of `fgsn {self.editor}`, not `fgsn {editor}`: a ledger "
                              f"follows one editor; give `fgsn {editor}` a new --ledger folder")

    def prompts(self, step: dict) -> list[dict]:
        """The prompts a step recorded (activation-match), one dict a line as written."""
        return read_jsonl(self.path / step["prompts_file"])

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

    def check_models(self, base_sha: str | None, aligned_sha: str, finetuned_sha: str) -> None:
        """Refuse a ledger made for other models, or a --finetuned that is not the latest step."""
        models = self.doc["models"]
        if not models:
            return
        for role, sha in (("base", base_sha), ("aligned", aligned_sha)):
            if role == "base" and (sha is None or models.get(role) is None):
                continue  # activation-match needs no base model: nothing to compare
            if models.get(role) != sha:
                raise LedgerError(f"ledger {self.path} was made for another {role} model (sha256 "
                                  f"{str(models.get(role))[:12]}..., given {sha[:12]}...); use a new --ledger folder")
        expected = models["current"]
        if finetuned_sha != expected:
            where = self.steps[-1]["output"] if self.steps else "the original fine-tuned model"
            raise LedgerError(f"ledger {self.path} continues from {where} (sha256 {expected[:12]}...), but "
                              f"--finetuned has sha256 {finetuned_sha[:12]}...; pass the latest step's output")

    def check_new_step(self, editor: str, category: str, base_sha: str | None, aligned_sha: str,
                       finetuned_sha: str) -> None:
        """Refuse a run (activation-match, revert) that does not continue this ledger with a new
        step: another editor's ledger, a category it already holds, other models, or a --finetuned
        that is not the latest step's output. (`fgsn project` re-runs a recorded category as a no-op.)"""
        self.check_editor(editor)
        done = self.step_of(category)
        if done is not None:
            raise LedgerError(f"category {category!r} is already step {done['step']} of ledger {self.path} (output "
                              f"{done['output']}); give this run a new --category, or a new --ledger folder to start "
                              "over from the fine-tuned model")
        self.check_models(base_sha, aligned_sha, finetuned_sha)

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

    def record(self, category: str, masks: PackedMasks, stats: dict, models: dict[str, str | None],
               output: str, output_sha: str, *, editor: str = "project", prompts: list[dict] | None = None,
               paths: dict[str, str] | None = None) -> dict:
        """Append a step (after its output is complete). `prompts` (activation-match): the harmful
        prompts and answers of the step, kept for later steps; `paths`: where the models of the
        first step were (kept from the first step on)."""
        self.check_editor(editor)
        idx = len(self.steps)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", category)[:60]
        rel = f"masks/{idx:03d}-{safe}.safetensors"
        masks.save(self.path / rel, meta={"category": category, "step": idx})
        step = {"step": idx, "category": category, "mask_file": rel, "mask_sha256": sha256_file(self.path / rel),
                "output": output, "output_sha256": output_sha, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **stats}
        if prompts is not None:
            prel = f"prompts/{idx:03d}-{safe}.jsonl"
            atomic_write_jsonl(self.path / prel, prompts, sort_keys=True)
            step.update(prompts_file=prel, prompts_sha256=sha256_file(self.path / prel))
        doc = dict(self.doc)
        doc["version"] = VERSION
        doc["editor"] = editor
        doc["models"] = {"base": models.get("base"), "aligned": models["aligned"],
                         "finetuned_original": self.doc["models"].get("finetuned_original", models["finetuned"]),
                         "current": output_sha}
        if paths is not None or "paths" in self.doc:
            doc["paths"] = self.doc.get("paths", paths)
        doc["steps"] = [*self.steps, step]
        doc["checksum"] = _checksum(doc)
        atomic_write_json(self.file, doc)
        self.doc = doc
        if self._unions is not None:
            self._unions.union_update(masks)  # the new step is part of every later union
        return step
