"""Activation probes: batched forward passes with hooks that accumulate statistics, never the
activations themselves.

Per decoder layer we keep the sum of the unit-normalised last-token hidden states (enough for
every mean pairwise cosine the layer search needs, see layers.py); per probed linear module the
per-input-feature sum of squares of its inputs over all real (non-pad) tokens, ||X_:,j||^2. The
forward pass stops after the last layer anything is needed from.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from fgsn.data.chat import render_all
from fgsn.errors import InputError
from fgsn.models.loading import input_device

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the hook of the last needed layer to end the forward pass early."""


@dataclass
class ProbeStats:
    n_prompts: int = 0
    n_tokens: int = 0
    unit_sum: torch.Tensor | None = None                 # (num_layers, hidden) float64
    sumsq: dict[str, torch.Tensor] = field(default_factory=dict)  # module key -> (d_in,) float64

    def feature_norms(self, key: str) -> torch.Tensor:
        """||X_:,j||_2 per input feature j."""
        return self.sumsq[key].sqrt().float()


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on each row's first real token: with left padding, the default
    positions would shift every prompt by its padding and change its hidden states."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def run_probes(model, tokenizer, prompts: list[str], *, layers, modules: dict[str, torch.nn.Module] | None = None,
               hidden_states: bool = True, stop_after_layer: int | None = None, batch_size: int = 8,
               use_chat_template: bool = True, system: str | None = None, max_length: int | None = None,
               desc: str = "probe") -> ProbeStats:
    """Run `prompts` through `model` and accumulate ProbeStats.

    `layers` is the model's decoder-layer list; `modules` maps a key (the checkpoint tensor name)
    to a live linear module whose input statistics are wanted.
    """
    modules = modules or {}
    texts = render_all(tokenizer, prompts, system=system, use_chat_template=use_chat_template)
    n_layers = len(layers)
    stats = ProbeStats()
    state: dict[str, torch.Tensor] = {}
    handles = []

    def layer_hook(idx: int):
        def hook(_module, _args, output):
            if hidden_states:
                h = _hidden(output)[:, -1, :].double()
                u = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                acc = stats.unit_sum
                acc[idx] += u.sum(0).to(acc.device)
            if stop_after_layer is not None and idx >= stop_after_layer:
                raise _StopForward
        return hook

    shared: dict[str, torch.Tensor] = {}

    def input_hook(key: str):
        def hook(_module, args):
            x = args[0]
            # q/k/v (and gate/up) read the same input tensor: square and sum it once. Holding x
            # keeps its memory from being reused by another tensor, so `is` cannot be fooled.
            if shared.get("x") is not x:
                m = state["mask"].to(x.device, torch.float32).unsqueeze(-1)
                shared["x"] = x
                shared["s"] = (x.float().pow(2) * m).sum(dim=(0, 1), dtype=torch.float64).cpu()
            s = shared["s"]
            if key in stats.sumsq:
                stats.sumsq[key] += s
            else:
                stats.sumsq[key] = s.clone()
        return hook

    need_layer_hooks = hidden_states or stop_after_layer is not None
    try:
        if need_layer_hooks:
            for i, layer in enumerate(layers):
                handles.append(layer.register_forward_hook(layer_hook(i)))
        for key, mod in modules.items():
            handles.append(mod.register_forward_pre_hook(input_hook(key)))
        hidden = model.config.get_text_config().hidden_size
        if hidden_states:
            stats.unit_sum = torch.zeros(n_layers, hidden, dtype=torch.float64)
        # Shortest first: less padding, same sums (addition order is fixed by the sort).
        order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
        dev = input_device(model)
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
            batch = [texts[i] for i in order[start:start + batch_size]]
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False,
                            truncation=max_length is not None, max_length=max_length)
            limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
            if limit and enc["input_ids"].shape[1] > limit:
                longest = max(batch, key=len)
                raise InputError(f"a prompt is {enc['input_ids'].shape[1]} tokens long, over the model's context "
                                 f"window of {limit} ({longest[:60]!r}...); shorten it or pass --max-length {limit}")
            state["mask"] = enc["attention_mask"]
            with contextlib.suppress(_StopForward):
                model(input_ids=enc["input_ids"].to(dev), attention_mask=enc["attention_mask"].to(dev),
                      position_ids=position_ids(enc["attention_mask"]).to(dev), use_cache=False)
            stats.n_prompts += len(batch)
            stats.n_tokens += int(enc["attention_mask"].sum())
    finally:
        for h in handles:
            h.remove()
        shared.clear()
    return stats
