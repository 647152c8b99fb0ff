"""What an artifact was made from and with: the input models (path and content sha256) and the
software versions. Locate runs and edit manifests record the same `inputs` document, so that a
locate run can be checked against the models it is reused on."""

from __future__ import annotations

import json
import platform
from pathlib import Path


def inputs_json(trio) -> dict:
    """{role: {path, sha256[, kind]}} of a `fgsn.models.trio.Trio` (base only when it has one)."""
    d = {"aligned": {"path": str(trio.aligned.path), "sha256": trio.aligned.sha256},
         "finetuned": {"path": str(trio.finetuned.path), "sha256": trio.finetuned.sha256, "kind": trio.finetuned.kind}}
    if trio.base is not None:
        d["base"] = {"path": str(trio.base.path), "sha256": trio.base.sha256}
    return d


def software_versions() -> dict:
    """torch, transformers and Python versions (imported here, not at module load: reading an
    artifact must not cost torch's import)."""
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def selected_on(model: str | Path) -> dict | None:
    """Which prompts chose the model at `model` (results.json's `selected_on`): the search split of
    `fgsn repair` (files, sha256, counts, the winning trial) when its `fgsn/repair.json` is there;
    None for a model with fixed settings, of which nothing was chosen from data."""
    path = Path(model) / "fgsn" / "repair.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("selected_on")
