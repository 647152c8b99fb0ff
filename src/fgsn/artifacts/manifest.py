"""The edit manifest written beside every edited checkpoint (`fgsn-manifest.json`), by FGSN and
by every baseline alike, so that reports read them the same way: its schema (`assemble_manifest`),
its reader, and the check that an output is complete.

It records what was done and to what: options, input paths and sha256, layers, per-module mask
counts, and the share of parameters modified, overall and per category. It holds nothing that
varies between identical runs (timings go to `fgsn/run.json`), so two runs on the same inputs
and seed give byte-identical manifests.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import fgsn
from fgsn.artifacts.provenance import inputs_json, software_versions

log = logging.getLogger(__name__)

MANIFEST = "fgsn-manifest.json"
SCHEMA_VERSION = 1
# Options that say where and how a run went, not what it did: kept out of the manifest (the edit's
# device and prefetch are in fgsn/run.json), so the manifest does not change with them.
NOT_IN_MANIFEST = ("overwrite", "out", "edit_device", "prefetch")


def manifest_options(opts) -> dict:
    """The options as a manifest records them: where the output went, whether it replaced an older
    one and how the arithmetic was scheduled (NOT_IN_MANIFEST) are not part of what was done."""
    d = opts.model_dump(mode="json")
    for k in NOT_IN_MANIFEST:
        d.pop(k, None)
    return d


def is_complete(out: str | Path, method: str, opts) -> bool:
    """`out` holds a finished output of `method` made with options `opts` (a validated options
    object), so that a resumed run (`fgsn compare`, `fgsn sweep`) may reuse it: the folder exists
    (atomic: then it is whole), its manifest names this method, is no no-op, and records exactly
    these options. Anything else (other options, a damaged manifest) means: run it again."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return False
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    if not isinstance(man, dict) or man.get("method") != method or man.get("noop"):
        return False
    from fgsn.atomic import dumps_json

    return man.get("options") == json.loads(dumps_json(manifest_options(opts)))


def assemble_manifest(*, method: str, opts, trio, modules: list[dict], edited_params: int, layers: list[int],
                      layer_search: dict | None = None, prompt_counts: dict | None = None,
                      category: str = "default", cat_stats: dict | None = None, ledger_step: int | None = None,
                      noop: bool = False, extra_inputs: dict | None = None, extra: dict | None = None) -> dict:
    """The manifest document. `modules`: one record per tensor the method considered, with at
    least name, numel, masked (entries set out to modify) and changed (entries whose stored value
    differs from the fine-tuned model's). modified_fraction = masked / all parameters;
    modified_fraction_edited = masked / parameters of the considered tensors. `extra`: the
    method's own top-level sections (e.g. `safelora`, `revert`), added after the shared fields."""
    cat_stats = cat_stats or {}
    total = trio.aligned.total_params
    masked = sum(int(m.get("masked", 0)) for m in modules)
    changed = sum(int(m.get("changed", 0)) for m in modules)
    frac = masked / total if total else 0.0
    frac_edited = masked / edited_params if edited_params else 0.0
    opts_json = manifest_options(opts)
    inputs = inputs_json(trio)
    inputs.update(extra_inputs or {})
    cat = {"masked": masked, "masked_total": cat_stats.get("masked_total", masked),
           "overlap": cat_stats.get("overlap", 0), "modified_fraction": frac, "modified_fraction_edited": frac_edited}
    doc = {
        "schema_version": SCHEMA_VERSION,
        "method": method,
        "noop": noop,
        "fgsn_version": fgsn.__version__,
        "versions": software_versions(),
        "options": opts_json,
        "inputs": inputs,
        "architecture": trio.arch.name,
        "layers": layers,
        "layer_search": layer_search,
        "prompt_counts": prompt_counts or {},
        "modules": modules,
        "total_params": total,
        "edited_params": edited_params,
        "masked": masked,
        "changed": changed,
        "modified_fraction": frac,
        "modified_fraction_edited": frac_edited,
        "changed_fraction": changed / total if total else 0.0,
        "categories": {category: cat},
        "ledger_step": ledger_step,
        "seed": getattr(opts, "seed", None),
    }
    doc.update(extra or {})
    return doc


def build_manifest(*, opts, trio, loc, edits: dict, category: str, cat_stats: dict, ledger_step: int | None,
                   noop: bool = False) -> dict:
    """The manifest of an FGSN projection (`loc` None for a no-op re-run of a recorded category)."""
    targets = loc.targets if loc is not None else []
    target_names = [t.tensor for t in targets]
    modules = []
    for t in targets:
        e = edits.get(t.tensor)
        modules.append(e.to_json() if e is not None else
                       {"name": t.tensor, "layer": t.layer, "module": t.spec.name,
                        "numel": trio.aligned.numel(t.tensor), "masked": 0, "changed": 0})
    return assemble_manifest(
        method="fgsn", opts=opts, trio=trio, modules=modules,
        edited_params=sum(trio.aligned.numel(n) for n in target_names),
        layers=loc.layers if loc is not None else [],
        layer_search=loc.layer_search.to_json() if loc is not None and loc.layer_search is not None else None,
        prompt_counts=loc.prompt_counts if loc is not None else {}, category=category, cat_stats=cat_stats,
        ledger_step=ledger_step, noop=noop)


def read_manifest(model_path: str | Path) -> dict[str, Any] | None:
    """The edit manifest of a checkpoint folder, or None (not an fgsn output, or unreadable)."""
    path = Path(model_path) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        log.warning("manifest %s unreadable (%s); its model's modified share is reported as null", path, e)
        return None
    return data if isinstance(data, dict) else None
