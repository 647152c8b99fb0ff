"""What an artifact was made from and with: the input models (path and content sha256) and the
software versions. Locate runs and edit manifests record the same `inputs` document, so that a
locate run can be checked against the models it is reused on."""

from __future__ import annotations

import platform


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
