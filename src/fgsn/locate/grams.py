"""Input Grams of linear modules, accumulated with forward hooks: G = sum over real tokens of x xᵀ.
The activations themselves are never kept: memory is one (in x in) float64 matrix per distinct
module input, whatever the number of tokens. Modules that read the same input tensor (q/k/v,
gate/up) share one product (the hook sees the same tensor object); padding is masked out. Two
ways to run the model, for two kinds of caller:

- `accumulate_grams` (closed-form editors, fgsn.edit.activation_match): one forward pass of the
  whole model per batch on fixed weights, stopped after the last layer anything is needed from
  (no LM head, no logits); each batch's product is taken in float32 and added to a float64 sum.
  Aliased modules record an alias (`GramStats`), so a shared input is stored once. A content-keyed
  disk cache (`gram_key`, `load_grams`, `save_grams`) reuses them across runs.

- `LayerReplay` (the OBS / SparseGPT compensation, fgsn.edit.compensate, on a model that is
  being edited as it goes): the examples run through the model once, up to the first layer
  needed, keeping that layer's input hidden states and the keyword arguments the model passes to
  every decoder layer (masks, position embeddings: captured from the model's own calls, so no
  architecture's signature is hard-coded). Then each layer is replayed on its stored inputs: once
  with hooks that accumulate its modules' Grams (products in float64: the compensation solves
  with them), and, once the caller has edited the layer, once more to produce the next layer's
  inputs. L layers cost 2L layer passes instead of the L(L+1)/2 of a forward pass per layer.
  Examples are teacher-forced like the gradient sums (attribution.py): the chat-rendered prompt
  followed by its answer when it has one.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from fgsn.data.batching import length_batches
from fgsn.locate.attribution import _encode, _left_pad
from fgsn.locate.probes import _StopForward, position_ids
from fgsn.models.loading import input_device
from fgsn.models.shared_prefix import (
    MIN_SHARED_PREFIX,
    cache_kwarg,
    shared_prefix_length,
    supports_shared_prefix,
)


@dataclass
class GramStats:
    """Sums of x xᵀ over the real tokens of a set of sequences, per distinct module input."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)   # canonical key -> (in, in) float64
    alias: dict[str, str] = field(default_factory=dict)           # module key -> canonical key
    n_tokens: int = 0
    n_sequences: int = 0

    def canonical(self, key: str) -> str:
        return self.alias[key]

    def gram(self, key: str) -> torch.Tensor:
        """G = K Kᵀ / n, float64 (in, in)."""
        return self.sums[self.alias[key]] / max(self.n_tokens, 1)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.sums.values())


@torch.no_grad()
def accumulate_grams(model, sequences: list[list[int]], pad_id: int, modules: dict[str, torch.nn.Module], *,
                     layers=None, stop_after_layer: int | None = None, batch_size: int = 8,
                     max_batch_tokens: int = 4096, skip_first: list[int] | None = None,
                     desc: str = "grams", shared_prefix: bool = False) -> GramStats:
    """Run token `sequences` (already encoded, chat template applied) through `model` and sum
    x xᵀ of each module's input over every non-pad token but sequence i's first `skip_first[i]`
    (they still run: later tokens attend to them). `modules` maps a key (the checkpoint tensor
    name) to a live linear module; `layers` (the decoder-layer list) and `stop_after_layer` end
    the forward pass early. `shared_prefix`: the tokens every sequence of a batch begins with (the
    chat template's head: 24 of a short SmolLM2 harmful prompt's 37 tokens) have the same module
    inputs in every row (causal attention, the same positions), so they run once, their products
    weighted by the rows that count them, and the rows continue from their keys and values
    (generation does the same: fgsn.models.shared_prefix); the same sums up to rounding."""
    stats = GramStats()
    state: dict[str, torch.Tensor] = {}
    shared: dict[str, object] = {}
    shared_prefix = shared_prefix and supports_shared_prefix(model)

    def pre_hook(key: str):
        def hook(_module, args):
            x = args[0]
            if shared.get("x") is x:  # the same input tensor as the previous module: one Gram
                canon = shared["key"]
            else:
                canon = key
                m = state["mask"].to(x.device)
                xs = x[m.bool()].float()                            # (real tokens, in)
                w = m[m.bool()].float()                             # each token's count (1, or its rows)
                g = ((xs.T * w) @ xs if bool((w != 1).any()) else xs.T @ xs).to(device="cpu", dtype=torch.float64)
                if canon in stats.sums:
                    stats.sums[canon] += g
                else:
                    stats.sums[canon] = g
                # holding x keeps its memory from being reused, so `is` cannot be fooled
                shared["x"], shared["key"] = x, canon
            prev = stats.alias.setdefault(key, canon)
            if prev != canon:  # pragma: no cover - a model whose modules share inputs differently per batch
                raise RuntimeError(f"{key}: its input was shared with {prev} in one batch and {canon} in another")
        return hook

    def stop_hook(_module, _args, _output):
        raise _StopForward

    handles = [mod.register_forward_pre_hook(pre_hook(k)) for k, mod in modules.items()]
    if layers is not None and stop_after_layer is not None:
        handles.append(layers[stop_after_layer].register_forward_hook(stop_hook))
    dev = input_device(model)
    try:
        for idx in tqdm(length_batches([len(s) for s in sequences], batch_size, max_batch_tokens), desc=desc,
                        unit="batch", leave=False):
            batch = [sequences[i] for i in idx]
            skip = torch.tensor([skip_first[i] for i in idx] if skip_first is not None else [0] * len(idx))
            k = shared_prefix_length(batch) if shared_prefix else 0
            if k >= MIN_SHARED_PREFIX:
                counted = _prefixed_pass(model, batch, k, skip, pad_id, dev, state, shared)
            else:
                ids, _, mask = _left_pad([(x, x) for x in batch], pad_id)
                counted = mask * (mask.cumsum(1) > skip.unsqueeze(1))
                state["mask"] = counted
                with contextlib.suppress(_StopForward):
                    model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                          position_ids=position_ids(mask).to(dev), use_cache=False)
                counted = int(counted.sum())
            shared.clear()
            stats.n_sequences += len(idx)
            stats.n_tokens += counted
    finally:
        for h in handles:
            h.remove()
        shared.clear()
    return stats


def _prefixed_pass(model, batch: list[list[int]], k: int, skip: torch.Tensor, pad_id: int, dev,
                   state: dict, shared: dict) -> int:
    """One batch whose rows share their first `k` tokens: the prefix runs once (a token counted by
    r rows weighs r), then the rows, padded between the prefix and their own tokens, from its
    keys and values. Returns the tokens counted."""
    from transformers import DynamicCache

    kw = cache_kwarg(model)
    n = len(batch)
    cache = DynamicCache(config=model.config)
    head_counts = (torch.arange(k).unsqueeze(0) >= skip.unsqueeze(1)).sum(0)       # rows counting each position
    state["mask"] = head_counts.unsqueeze(0)
    with contextlib.suppress(_StopForward):  # the cache keeps the layers it reached, all the rows need
        model(input_ids=torch.tensor([batch[0][:k]], device=dev), position_ids=torch.arange(k, device=dev)[None],
              use_cache=True, **{kw: cache})
    shared.clear()
    cache.batch_repeat_interleave(n)
    width = max(len(x) for x in batch) - k
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    body = torch.zeros((n, width), dtype=torch.long)
    for r, x in enumerate(batch):
        ids[r, width - len(x) + k:] = torch.tensor(x[k:])
        body[r, width - len(x) + k:] = 1
    full = torch.cat([torch.ones((n, k), dtype=torch.long), body], 1)
    own = body.cumsum(1) + k                                   # 1-based index of each token in its sequence
    counted = body * (own > skip.unsqueeze(1))
    state["mask"] = counted
    with contextlib.suppress(_StopForward):
        model(input_ids=ids.to(dev), attention_mask=full.to(dev), position_ids=position_ids(full)[:, k:].to(dev),
              use_cache=True, **{kw: cache})
    return int(head_counts.sum()) + int(counted.sum())


# -- a content-keyed disk cache, one entry per (model, sequences, layer) ------------------------------
# Why: the Grams do not depend on lambda, mu or the form, so a sweep over them (or `fgsn compare`
# with several presets, each edit in its own process) takes them once. Entries are big (in x in
# float64 per distinct input), so the caller decides whether a run is small enough to cache.
def gram_key(**parts) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def sequences_digest(sequences: list[list[int]]) -> str:
    import hashlib

    h = hashlib.sha256()
    for s in sequences:
        h.update(b",".join(str(i).encode() for i in s) + b";")
    return h.hexdigest()


def _gram_path(key: str):
    from fgsn.models.hashing import cache_root

    return cache_root() / "grams" / f"{key}.safetensors"


def split_by_layer(stats: GramStats, layer_of: dict[str, int]) -> dict[int, GramStats]:
    """One GramStats per layer (the modules of a layer share no input with another layer's)."""
    out: dict[int, GramStats] = {}
    for key, canon in stats.alias.items():
        part = out.setdefault(layer_of[key], GramStats(n_tokens=stats.n_tokens, n_sequences=stats.n_sequences))
        part.alias[key] = canon
        part.sums[canon] = stats.sums[canon]
    return out


def merge(parts: list[GramStats]) -> GramStats:
    out = GramStats(n_tokens=parts[0].n_tokens, n_sequences=parts[0].n_sequences)
    for p in parts:
        out.sums.update(p.sums)
        out.alias.update(p.alias)
    return out


def add(parts: list[GramStats]) -> GramStats:
    """The Grams of the union of disjoint sequence sets (the same modules): sums and counts added."""
    out = GramStats(sums={k: v.clone() for k, v in parts[0].sums.items()}, alias=dict(parts[0].alias),
                    n_tokens=parts[0].n_tokens, n_sequences=parts[0].n_sequences)
    for p in parts[1:]:
        if p.alias != out.alias:
            raise ValueError("Gram sets of different modules (or input sharing) cannot be added")
        for k, v in p.sums.items():
            out.sums[k] += v
        out.n_tokens += p.n_tokens
        out.n_sequences += p.n_sequences
    return out


def load_grams(key: str) -> GramStats | None:
    import json

    from safetensors import SafetensorError, safe_open

    path = _gram_path(key)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["fgsn"])
            sums = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, KeyError, ValueError):
        return None  # a damaged entry is recomputed, never trusted
    with contextlib.suppress(OSError):
        os.utime(path)  # used now: the last to be pruned
    return GramStats(sums=sums, alias=meta["alias"], n_tokens=int(meta["n_tokens"]),
                     n_sequences=int(meta["n_sequences"]))


# The Gram cache holds (in x in) float64 matrices per (model, prompts, layer): about 0.8 GB per
# prompt set on the SmolLM2 organism, so a few demos would fill a laptop's disk. After every write
# the least recently used entries go until the cache is within this size (one demo needs ~5 GB).
GRAM_CACHE_ENV = "FGSN_GRAM_CACHE_GB"
DEFAULT_GRAM_CACHE_GB = 8.0


def gram_cache_limit() -> int:
    from fgsn.errors import InputError

    raw = os.environ.get(GRAM_CACHE_ENV, "").strip()
    try:
        gb = float(raw) if raw else DEFAULT_GRAM_CACHE_GB
    except ValueError:
        gb = -1.0
    if gb < 0:
        raise InputError(f"{GRAM_CACHE_ENV}={raw!r}: give the Gram cache's size limit in GB (a number >= 0; 0 keeps "
                         f"only the entry just written), or unset it for the default {DEFAULT_GRAM_CACHE_GB:g}")
    return int(gb * 1024**3)


def prune_gram_cache(limit: int | None = None, keep: str | None = None) -> int:
    """Delete the least recently used Gram cache entries until the cache holds at most `limit`
    bytes (default: gram_cache_limit()), never the entry `keep` (the one just written). Returns
    the bytes freed."""
    limit = gram_cache_limit() if limit is None else limit
    root = _gram_path("x").parent
    if not root.is_dir():
        return 0
    entries = []
    for f in root.glob("*.safetensors"):
        with contextlib.suppress(OSError):
            st = f.stat()
            entries.append((st.st_mtime, st.st_size, f))
    total, freed = sum(e[1] for e in entries), 0
    for _, size, f in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if keep is not None and f.name == f"{keep}.safetensors":
            continue
        with contextlib.suppress(OSError):
            f.unlink()
            total -= size
            freed += size
    return freed


def save_grams(key: str, stats: GramStats) -> None:
    import json

    from safetensors.torch import save

    from fgsn.atomic import atomic_write_bytes

    meta = {"fgsn": json.dumps({"alias": stats.alias, "n_tokens": stats.n_tokens, "n_sequences": stats.n_sequences},
                               sort_keys=True)}
    with contextlib.suppress(OSError):  # caching is an optimisation; a full disk must not fail the run
        atomic_write_bytes(_gram_path(key), save({k: v.contiguous() for k, v in sorted(stats.sums.items())},
                                                 metadata=meta))
    prune_gram_cache(keep=key)


# -- layer-by-layer replay on a model edited as it goes (fgsn.edit.compensate) ----------------------
@dataclass
class Gram:
    """sum_t x_t x_t^T over `n_tokens` real tokens, float64 on CPU."""

    H: torch.Tensor
    n_tokens: int


@dataclass
class _Batch:
    mask: torch.Tensor          # (B, T) attention mask: which tokens are real
    hidden: torch.Tensor        # the current layer's input hidden states
    rest: tuple                 # the layer's other positional arguments
    kwargs: dict[int, dict]     # per layer, the keyword arguments the model passed it


def _hidden(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


class LayerReplay:
    """Decoder layers `first`..`last` of `model` replayed on the examples (module doc)."""

    @torch.no_grad()
    def __init__(self, model, tok, layers, prompts: list[str], answers: list[str | None], first: int, last: int, *,
                 batch_size: int = 8, use_chat_template: bool = True, system: str | None = None,
                 max_length: int | None = None, max_batch_tokens: int = 4096, desc: str = "task inputs"):
        self.layers, self.next, self.last = layers, first, last
        self.batches: list[_Batch] = []
        rows = [_encode(tok, p, a, use_chat_template, system, max_length) for p, a in zip(prompts, answers, strict=True)]
        dev = input_device(model)
        seen: dict[str, object] = {}

        def capture(i: int):
            def pre(_m, args, kwargs):
                seen.setdefault("kwargs", {})[i] = dict(kwargs)
                if i == first:
                    seen["hidden"], seen["rest"] = args[0], tuple(args[1:])
                if i == last:
                    raise _StopForward
            return pre

        handles = [layers[i].register_forward_pre_hook(capture(i), with_kwargs=True) for i in range(first, last + 1)]
        try:
            for idx in tqdm(length_batches([len(r[0]) for r in rows], batch_size, max_batch_tokens), desc=desc,
                            unit="batch", leave=False):
                ids, _, mask = _left_pad([rows[i] for i in idx], tok.pad_token_id)
                seen.clear()
                with contextlib.suppress(_StopForward):
                    model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                          position_ids=position_ids(mask).to(dev), use_cache=False)
                self.batches.append(_Batch(mask, seen["hidden"], seen["rest"], seen["kwargs"]))
        finally:
            for h in handles:
                h.remove()
        self.n_tokens = sum(int(b.mask.sum()) for b in self.batches)

    @torch.no_grad()
    def grams(self, layer: int, modules: dict[str, torch.nn.Module]) -> dict[str, Gram]:
        """The Grams of `modules` (inside decoder layer `layer`, the next one to replay) on its inputs."""
        if layer != self.next:
            raise ValueError(f"layer {layer} asked for, the replay stands at layer {self.next}")
        sums: dict[str, torch.Tensor] = {}
        shared: dict[str, torch.Tensor] = {}
        state: dict[str, torch.Tensor] = {}

        def hook(key: str):
            def pre(_module, args):
                x = args[0]
                if shared.get("x") is not x:  # holding x keeps its memory from being reused: `is` is safe
                    xs = x[state["mask"].to(x.device).bool()].double()
                    shared["x"], shared["g"] = x, xs.T @ xs
                sums[key] = sums[key] + shared["g"] if key in sums else shared["g"].clone()
            return pre

        handles = [m.register_forward_pre_hook(hook(k)) for k, m in modules.items()]
        try:
            for b in self.batches:
                state["mask"] = b.mask
                self.layers[layer](b.hidden, *b.rest, **b.kwargs[layer])
                shared.clear()
        finally:
            for h in handles:
                h.remove()
        return {k: Gram(v.cpu(), self.n_tokens) for k, v in sums.items()}

    @torch.no_grad()
    def advance(self) -> None:
        """Run the next layer, as it is now, on its inputs: they become the following layer's."""
        layer = self.next
        for b in self.batches:
            b.hidden = _hidden(self.layers[layer](b.hidden, *b.rest, **b.kwargs[layer]))
        self.next += 1
