"""The run manifest written beside every edited checkpoint (`fgsn-manifest.json`), by FGSN and
by every baseline alike, so that reports read them the same way.

It records what was done and to what: options, input paths and sha256, layers, per-module mask
counts, and the share of parameters modified, overall and per category. It holds nothing that
varies between identical runs (timings go to `fgsn/run.json`), so two runs on the same inputs
and seed give byte-identical manifests.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import fgsn

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
                      noop: bool = False, extra_inputs: dict | None = None) -> dict:
    """The manifest document. `modules`: one record per tensor the method considered, with at
    least name, numel, masked (entries set out to modify) and changed (entries whose stored value
    differs from the fine-tuned model's). modified_fraction = masked / all parameters;
    modified_fraction_edited = masked / parameters of the considered tensors."""
    import torch
    import transformers

    from fgsn.locate.run import inputs_json

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
    return {
        "schema_version": SCHEMA_VERSION,
        "method": method,
        "noop": noop,
        "fgsn_version": fgsn.__version__,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
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


# -- the model card and the rerunnable config beside every repaired checkpoint ---------------------
CARD = "README.md"
CONFIG = "fgsn/config.yaml"
# Options that name files or folders: written absolute to the config, so that it reruns from anywhere.
PATH_OPTIONS = ("aligned", "finetuned", "base", "unaligned", "harmful", "task", "benign", "ledger", "locate_run")
# The settings a card always shows per method (the other options: where they differ from the defaults).
KEY_OPTIONS = {"fgsn": ("preset", "score", "projector", "granularity", "q", "p", "budget"),
               "safelora": ("select", "threshold", "k"), "resta": ("beta", "dare", "scope"),
               "wanda": ("q", "target", "group", "granularity", "score")}
WHAT = {
    "fgsn": "the fine-tuning update of the safety neurons in the safety layers is projected onto the safety "
            "direction V = W_aligned - W_base (FGSN)",
    "safelora": "the update of every module far from the safety subspace is projected onto it (SafeLoRA)",
    "resta": "the safety vector (aligned - unaligned) is added back to the fine-tuned weights (RESTA)",
    "wanda": "the weights that matter most on harmful prompts (Wanda scores) are pruned or reset",
}


def _absolute(value: str) -> str:
    """A path (or a prompt spec PATH?query) made absolute when it exists; anything else as given."""
    path, sep, query = value.partition("?")
    if path.startswith("builtin:") or not Path(path).expanduser().exists():
        return value
    return os.path.abspath(Path(path).expanduser()) + sep + query


def rerun_config(opts) -> dict:
    """The options as a YAML `--config` of the same command takes them: every option, paths made
    absolute, without where the output went (the rerun gives its own --out)."""
    d = manifest_options(opts)
    for k in PATH_OPTIONS:
        v = d.get(k)
        if isinstance(v, str):
            d[k] = _absolute(v)
        elif isinstance(v, list):
            d[k] = [_absolute(x) if isinstance(x, str) else x for x in v]
    return d


def model_card(man: dict, opts, command: str) -> str:
    """A short model card (Markdown with Hugging Face metadata) from the manifest: what was repaired,
    how, from which inputs, and how much of the model changed."""
    o = man["options"]
    method = man["method"]
    inputs = man["inputs"]
    layers = man["layers"]
    edited = sum(1 for m in man["modules"] if int(m.get("masked", 0)) > 0)
    adapter = o.get("output_format") == "adapter"
    span = (f"{layers[0]}-{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else
            ", ".join(map(str, layers))) if layers else "none"
    key = [k for k in KEY_OPTIONS.get(method, ()) if k in o]
    others = {k: v for k, v in opts.model_dump(mode="json", exclude_defaults=True).items()
              if k not in (*PATH_OPTIONS, *key, "out", "overwrite")}
    shown = {**{k: o[k] for k in key if o[k] is not None}, **others}
    ft = inputs.get("finetuned", {}).get("path", "?")
    lines = ["---", f"library_name: {'peft' if adapter else 'transformers'}",
             "tags: [fgsn, safety, model-repair]", f"method: {method}", "---", "",
             f"# Safety-repaired `{Path(ft).name}`", "",
             f"The fine-tuned model `{ft}` with its safety repaired without training by fgsn {man['fgsn_version']}: "
             f"{WHAT.get(method, method)}.", ""]
    if man.get("noop"):
        lines += ["This output is a **no-op**: its category was already applied in the ledger, so the weights "
                  "are the input's, unchanged.", ""]
    lines += ["## What changed", "",
              f"- method: `{method}`" + (f"; options: {', '.join(f'`{k}={v}`' for k, v in shown.items())}"
                                        if shown else ", default options"),
              f"- layers: {span}; tensors edited: {edited} of the {len(man['modules'])} considered",
              f"- parameters changed: {man['masked']:,} of {man['total_params']:,} = "
              f"{100 * man['modified_fraction']:.3f}% of all, {100 * man['modified_fraction_edited']:.2f}% of the "
              f"tensors considered"]
    for cat, c in man.get("categories", {}).items():
        if man.get("ledger_step") is not None or cat != "default":
            lines.append(f"- category `{cat}`: {c['masked']:,} newly projected, {c['overlap']:,} already projected "
                         f"by earlier steps" + (f" (ledger step {man['ledger_step']})"
                                                if man.get("ledger_step") is not None else ""))
    lines += ["", "## Inputs", "", "| role | path | sha256 |", "|---|---|---|"]
    lines += [f"| {role} | `{d.get('path')}` | `{d.get('sha256')}` |" for role, d in inputs.items()]
    lines += ["", "## Reproduce", "",
              f"Every option is in `{CONFIG}` (paths absolute); the same inputs give this checkpoint bit for bit:", "",
              "```bash", f"{command} --config {CONFIG} --out NEW_DIR   # run in this folder", "```", ""]
    if o.get("ledger"):
        lines += ["This was a continual step: the rerun needs the ledger as it was before it.", ""]
    lines += [f"`{MANIFEST}` records everything above in full (per-module counts, versions); "
              "`fgsn/run.json` the wall time and memory.", ""]
    return "\n".join(lines)


def write_card(folder: Path, manifest: dict, opts, command: str) -> None:
    """README.md (the model card) and fgsn/config.yaml into an output being written (atomically)."""
    import yaml

    from fgsn.atomic import atomic_write_text

    atomic_write_text(folder / CARD, model_card(manifest, opts, command))
    text = yaml.safe_dump(rerun_config(opts), sort_keys=False, allow_unicode=True)
    atomic_write_text(folder / CONFIG, f"# {command} --config {CONFIG} --out NEW_DIR reproduces this output\n{text}")
