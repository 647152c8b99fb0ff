"""The run manifest written beside every edited checkpoint (`fgsn-manifest.json`).

It records what was done and to what: options, input paths and sha256, layers, per-module mask
counts, and the share of parameters modified, overall and per category. It holds nothing that
varies between identical runs (timings go to `fgsn/run.json`), so two runs on the same inputs
and seed give byte-identical manifests.
"""

from __future__ import annotations

import platform

import torch

import fgsn

MANIFEST = "fgsn-manifest.json"
SCHEMA_VERSION = 1


def build_manifest(*, opts, trio, loc, edits: dict, category: str, cat_stats: dict, ledger_step: int | None,
                   noop: bool = False) -> dict:
    import transformers

    from fgsn.locate.run import inputs_json

    total = trio.aligned.total_params
    target_names = [t.tensor for t in loc.targets] if loc is not None else []
    edited_params = sum(trio.aligned.numel(n) for n in target_names)
    modules = []
    for name in target_names:
        e = edits.get(name)
        modules.append(e.to_json() if e is not None else
                       {"name": name, "numel": trio.aligned.numel(name), "masked": 0, "changed": 0})
    masked = sum(m["masked"] for m in modules)
    changed = sum(m.get("changed", 0) for m in modules)
    frac = masked / total if total else 0.0
    cat = {"masked": masked, "masked_total": cat_stats.get("masked_total", masked),
           "overlap": cat_stats.get("overlap", 0), "modified_fraction": frac,
           "modified_fraction_edited": masked / edited_params if edited_params else 0.0}
    opts_json = opts.model_dump(mode="json")
    for k in ("overwrite", "out"):
        opts_json.pop(k, None)
    return {
        "schema_version": SCHEMA_VERSION,
        "method": "fgsn",
        "noop": noop,
        "fgsn_version": fgsn.__version__,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "options": opts_json,
        "inputs": inputs_json(trio),
        "architecture": trio.arch.name,
        "layers": loc.layers if loc is not None else [],
        "layer_search": loc.layer_search.to_json() if loc is not None and loc.layer_search is not None else None,
        "prompt_counts": loc.prompt_counts if loc is not None else {},
        "modules": modules,
        "total_params": total,
        "edited_params": edited_params,
        "masked": masked,
        "changed": changed,
        "modified_fraction": frac,
        "modified_fraction_edited": masked / edited_params if edited_params else 0.0,
        "changed_fraction": changed / total if total else 0.0,
        "categories": {category: cat},
        "ledger_step": ledger_step,
        "seed": opts.seed,
    }
