"""A batch's shared token prefix: how long it is and whether a model can run it once.

Generation (fgsn.evaluate.generation) and the Gram passes (fgsn.locate.grams) both run the chat
template's head once per batch and continue every row from its keys and values; the rules for
when that is exact live here, below both stages."""

from __future__ import annotations

import inspect

# a batch's common prefix shorter than this is not worth a separate forward pass
MIN_SHARED_PREFIX = 8


def shared_prefix_length(ids: list[list[int]]) -> int:
    """Length of the token prefix every row shares, leaving each row at least one token of its
    own (the first generated token is computed from the row's last prompt token)."""
    if len(ids) < 2:
        return 0
    first, k = ids[0], 0
    limit = min(len(x) for x in ids) - 1
    while k < limit and all(x[k] == first[k] for x in ids):
        k += 1
    return k


def supports_shared_prefix(model) -> bool:
    """A decoder-only model whose cache is plain full attention: one that takes a Cache and has no
    sliding window or recurrent state, where a batch-expanded prefix cache means what it says."""
    cfg = model.config
    if getattr(cfg, "is_encoder_decoder", False) or getattr(cfg, "sliding_window", None):
        return False
    if getattr(cfg, "layer_types", None) and set(cfg.layer_types) != {"full_attention"}:
        return False
    return cache_kwarg(model) is not None


def cache_kwarg(model) -> str | None:
    """The name under which `model.forward` takes a key/value cache, or None if it takes none."""
    params = inspect.signature(model.forward).parameters
    return next((k for k in ("cache", "past_key_values") if k in params), None)
