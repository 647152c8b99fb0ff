"""Input Gram matrices of linear modules, H = sum over tokens of x x^T, for the OBS / SparseGPT
compensation (fgsn.edit.compensate) and any other closed-form edit that needs second moments of a
module's inputs.

Accumulated with forward pre-hooks batch by batch (float64), never storing activations: one
(d_in x d_in) matrix per probed module. Examples are teacher-forced like the gradient sums
(attribution.py): the chat-rendered prompt followed by its answer when it has one, so the
statistics cover the tokens the task is about. Modules that read the same input tensor (q/k/v,
gate/up) share one product. The forward pass stops after `stop_after_layer` when given.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from fgsn.data.batching import length_batches
from fgsn.locate.attribution import _encode, _left_pad
from fgsn.locate.probes import _StopForward, position_ids
from fgsn.models.loading import input_device


@dataclass
class Gram:
    """sum_t x_t x_t^T over `n_tokens` real tokens, float64 on CPU."""

    H: torch.Tensor
    n_tokens: int


@torch.no_grad()
def input_grams(model, tok, prompts: list[str], answers: list[str | None], modules: dict[str, torch.nn.Module], *,
                layers=None, stop_after_layer: int | None = None, batch_size: int = 8, use_chat_template: bool = True,
                system: str | None = None, max_length: int | None = None, max_batch_tokens: int = 4096,
                desc: str = "task grams") -> dict[str, Gram]:
    """Per module key, the Gram of its inputs over every real token of the examples. `layers` (the
    model's decoder-layer list) is needed with `stop_after_layer`."""
    sums: dict[str, torch.Tensor] = {}
    count = {"n": 0}
    state: dict[str, torch.Tensor] = {}
    shared: dict[str, torch.Tensor] = {}

    def hook(key: str):
        def pre(_module, args):
            x = args[0]
            if shared.get("x") is not x:  # holding x keeps its memory from being reused: `is` is safe
                m = state["mask"].to(x.device).bool()
                xs = x[m].double()
                shared["x"] = x
                shared["g"] = xs.T @ xs
            g = shared["g"]
            sums[key] = sums[key] + g if key in sums else g.clone()
        return pre

    def stop(_module, _args, _output):
        raise _StopForward

    handles = [m.register_forward_pre_hook(hook(k)) for k, m in modules.items()]
    if stop_after_layer is not None:
        handles.append(layers[stop_after_layer].register_forward_hook(stop))
    try:
        rows = [_encode(tok, p, a, use_chat_template, system, max_length) for p, a in zip(prompts, answers, strict=True)]
        dev = input_device(model)
        for idx in tqdm(length_batches([len(r[0]) for r in rows], batch_size, max_batch_tokens), desc=desc,
                        unit="batch", leave=False):
            ids, _, mask = _left_pad([rows[i] for i in idx], tok.pad_token_id)
            state["mask"] = mask
            with contextlib.suppress(_StopForward):
                model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=position_ids(mask).to(dev),
                      use_cache=False)
            shared.clear()
            count["n"] += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
        shared.clear()
    return {k: Gram(v.cpu(), count["n"]) for k, v in sums.items()}
