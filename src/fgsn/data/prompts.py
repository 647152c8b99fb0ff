"""Prompt sources: `load_prompts` turns a source spec into a PromptSet (fgsn.data.promptset).

A source is a path (`.jsonl`, `.csv`, `.txt`) or `builtin:NAME`, optionally followed by a query
that filters it: `builtin:advbench?split=train&category=Physical&limit=64`, `builtin:strongreject?sample=50`
(a fixed pseudo-random subset by text hash),
`my.jsonl?category=fraud`; `builtin:jailbreak?wrap=harmbench-standard&templates=dan&split=test` wraps
harmful prompts in jailbreak templates (`jailbreak.py`); builtin names are the benchmarks that ship
in PyPI packages and the files under data/files (`benchmarks.py`). Splits are made by hashing the
prompt text, so they do not depend on file order and never leak a prompt between `train` and `test`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

from fgsn.data.promptset import QUERY_KEYS, PromptSet, read_prompt_file
from fgsn.errors import InputError


def load_prompts(source: str | Path | PromptSet, *, name: str | None = None, min_count: int = 1) -> PromptSet:
    """Load a prompt source (see module doc) and refuse it if fewer than `min_count` remain."""
    if isinstance(source, PromptSet):
        return source.require(min_count)
    spec = str(source)
    base, _, query = spec.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    if base == "builtin:jailbreak":  # the filters select the prompts to wrap, before the templates
        from fgsn.data.jailbreak import load_jailbreak

        pset = load_jailbreak(spec, params, load_prompts)
        return (pset.with_name(name) if name else pset).require(min_count)
    unknown = set(params) - QUERY_KEYS
    if unknown:
        raise InputError(f"{spec}: unknown filter {sorted(unknown)}; known: {sorted(QUERY_KEYS)}"
                         + (" (wrap/templates/per_prompt are keys of builtin:jailbreak)"
                            if unknown & {"wrap", "templates", "per_prompt"} else ""))
    if base.startswith("builtin:"):
        from fgsn.data.benchmarks import load_builtin

        pset = load_builtin(base[len("builtin:"):])
    else:
        path = Path(base).expanduser()
        pset = PromptSet(name or path.stem, read_prompt_file(path))
    try:
        limit = int(params["limit"]) if "limit" in params else None
        frac = float(params.get("train_fraction", 0.5))
    except ValueError as e:
        raise InputError(f"{spec}: limit must be an integer and train_fraction a number ({e})") from e
    cats = params["category"].split(",") if params.get("category") else None
    excl = params["exclude_category"].split(",") if params.get("exclude_category") else None
    pset = pset.filter(category=cats, split=params.get("split", "all"), train_fraction=frac, limit=limit,
                       exclude_category=excl)
    if "sample" in params:
        try:
            n = int(params["sample"])
        except ValueError as e:
            raise InputError(f"{spec}: sample must be an integer ({e})") from e
        # a fixed pseudo-random subset (by text hash), so that a file sorted by category still
        # gives every category its share; the file order is kept within the subset
        keep = set(sorted(pset.prompts, key=lambda p: p.uid)[:n])
        pset = PromptSet(pset.name, [p for p in pset.prompts if p in keep])
    if name:
        pset = pset.with_name(name)
    return pset.require(min_count)
