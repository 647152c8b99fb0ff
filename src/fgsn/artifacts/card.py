"""The model card (`README.md`) and the rerunnable config (`fgsn/config.yaml`) beside every
repaired checkpoint, both rendered from its manifest and options: what was repaired, with which
method and options, from which inputs, and the command that reproduces it bit for bit."""

from __future__ import annotations

import os
from pathlib import Path

from fgsn.artifacts.manifest import MANIFEST, manifest_options

CARD = "README.md"
CONFIG = "fgsn/config.yaml"
# Options that name files or folders: written absolute to the config, so that it reruns from anywhere.
PATH_OPTIONS = ("aligned", "finetuned", "base", "unaligned", "harmful", "task", "benign", "ledger", "locate_run",
                "original_finetuned")
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
    "activation-match": "each linear module is changed in closed form to reproduce the aligned model's outputs on "
                        "harmful inputs and the fine-tune's on task inputs (activation matching)",
    "revert": "the fine-tuned entries whose return to the aligned value lowers a safety loss are reverted, round "
              "after round, with a rollback on the task (iterative reversion)",
}
# What a ledger category's counts are (manifest `categories`: masked, overlap), per editor: a
# projection's entries, activation matching's changed entries and the rows earlier steps changed,
# a reversion's reverted entries (earlier steps' are frozen, so their overlap is zero).
CATEGORY_COUNTS = {
    "fgsn": "{masked:,} newly projected, {overlap:,} already projected by earlier steps",
    "activation-match": "{masked:,} entries changed, {overlap:,} of them in rows earlier steps had changed",
    "revert": "{masked:,} entries reverted to the aligned value, {overlap:,} of them reverted by earlier steps",
    "sgdg": "{masked:,} entries reverted to the aligned value, {overlap:,} of them reverted by earlier steps",
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
            counts = CATEGORY_COUNTS.get(method, "{masked:,} entries edited, {overlap:,} of them by earlier steps")
            lines.append(f"- category `{cat}`: {counts.format(masked=c['masked'], overlap=c['overlap'])}"
                         + (f" (ledger step {man['ledger_step']})" if man.get("ledger_step") is not None else ""))
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
