"""Activation probes: batched forward passes with hooks that accumulate statistics, never the
activations themselves.

Per decoder layer we keep the sum of the unit-normalised last-token hidden states (enough for
every mean pairwise cosine the layer search needs, see layers.py); per probed linear module the
per-input-feature sum of squares of its inputs over all real (non-pad) tokens, ||X_:,j||^2. The
forward pass stops after the last layer anything is needed from. `run_probes` holds the model;
`run_probes_streamed` reads it one decoder layer at a time (fgsn.models.streamed).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from operator import attrgetter

import torch
from tqdm.auto import tqdm

from fgsn.data.chat import render_all
from fgsn.errors import InputError
from fgsn.models.loading import input_device
from fgsn.models.streamed import LayerInputs, StreamedModel, hidden_of

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


class _Hooks:
    """The statistics hooks of one probe pass, shared by the resident and the layer-streamed
    probe so that both accumulate exactly the same sums in the same order."""

    def __init__(self, stats: ProbeStats, hidden_states: bool, stop_after_layer: int | None):
        self.stats = stats
        self.hidden_states = hidden_states
        self.stop_after_layer = stop_after_layer
        self.mask: torch.Tensor | None = None     # the current batch's (batch, seq) attention mask
        self._shared: dict[str, torch.Tensor] = {}

    def layer(self, idx: int):
        def hook(_module, _args, output):
            if self.hidden_states:
                h = hidden_of(output)[:, -1, :].double()
                u = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                acc = self.stats.unit_sum
                acc[idx] += u.sum(0).to(acc.device)
            if self.stop_after_layer is not None and idx >= self.stop_after_layer:
                raise _StopForward
        return hook

    def module_input(self, key: str):
        shared, stats = self._shared, self.stats

        def hook(_module, args):
            x = args[0]
            # q/k/v (and gate/up) read the same input tensor: square and sum it once. Holding x
            # keeps its memory from being reused by another tensor, so `is` cannot be fooled.
            if shared.get("x") is not x:
                m = self.mask.to(x.device, torch.float32).unsqueeze(-1)
                shared["x"] = x
                shared["s"] = (x.float().pow(2) * m).sum(dim=(0, 1), dtype=torch.float64).cpu()
            s = shared["s"]
            if key in stats.sumsq:
                stats.sumsq[key] += s
            else:
                stats.sumsq[key] = s.clone()
        return hook

    def clear(self) -> None:
        self._shared.clear()


def _encoded_batches(tokenizer, texts: list[str], batch_size: int, max_length: int | None, config, desc: str):
    """The probe's batches: shortest first (less padding, same sums: the addition order is fixed by
    the sort), left-padded; a prompt over the context window is an InputError."""
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    limit = getattr(config.get_text_config(), "max_position_embeddings", None)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        batch = [texts[i] for i in order[start:start + batch_size]]
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False,
                        truncation=max_length is not None, max_length=max_length)
        if limit and enc["input_ids"].shape[1] > limit:
            longest = max(batch, key=len)
            raise InputError(f"a prompt is {enc['input_ids'].shape[1]} tokens long, over the model's context "
                             f"window of {limit} ({longest[:60]!r}...); shorten it or pass --max-length {limit}")
        yield enc


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
    stats = ProbeStats()
    hooks = _Hooks(stats, hidden_states, stop_after_layer)
    handles = []
    try:
        if hidden_states or stop_after_layer is not None:
            for i, layer in enumerate(layers):
                handles.append(layer.register_forward_hook(hooks.layer(i)))
        for key, mod in modules.items():
            handles.append(mod.register_forward_pre_hook(hooks.module_input(key)))
        if hidden_states:
            stats.unit_sum = torch.zeros(len(layers), model.config.get_text_config().hidden_size, dtype=torch.float64)
        dev = input_device(model)
        for enc in _encoded_batches(tokenizer, texts, batch_size, max_length, model.config, desc):
            hooks.mask = enc["attention_mask"]
            with contextlib.suppress(_StopForward):
                model(input_ids=enc["input_ids"].to(dev), attention_mask=enc["attention_mask"].to(dev),
                      position_ids=position_ids(enc["attention_mask"]).to(dev), use_cache=False)
            stats.n_prompts += enc["input_ids"].shape[0]
            stats.n_tokens += int(enc["attention_mask"].sum())
    finally:
        for h in handles:
            h.remove()
        hooks.clear()
    return stats


@torch.no_grad()
def run_probes_streamed(sm: StreamedModel, tokenizer, prompts: list[str], *,
                        modules: dict[str, tuple[int, str]] | None = None, hidden_states: bool = True,
                        stop_after_layer: int | None = None, batch_size: int = 8, use_chat_template: bool = True,
                        system: str | None = None, max_length: int | None = None, desc: str = "probe") -> ProbeStats:
    """`run_probes` with one decoder layer in memory at a time: the same batches, the same hooks,
    the same statistics (to float tolerance: the same operations on the same inputs).

    `modules` maps a key (the checkpoint tensor name) to (layer index, attribute path inside the
    layer) since the modules exist only while their layer is loaded.

    Memory: one layer's weights (read with the lazy reader, freed after the layer), the embedding
    only while prompts are embedded, and the hidden state of every prompt between two layers,
    kept in RAM on the CPU: prompts x padded length x hidden x dtype bytes, e.g. 512 prompts of
    256 tokens at hidden 8192 in bf16 = 2 GiB for a 70B model whose layer alone is 1.6 GiB and
    whose weights are 131 GiB. Spilling them to disk would trade that for a write and a read of
    the same size per layer; kept in RAM, they are far below the model they replace, and the
    batches sorted by length keep the padding small.
    """
    modules = modules or {}
    texts = render_all(tokenizer, prompts, system=system, use_chat_template=use_chat_template)
    n = sm.num_layers
    # Without a stop, the resident pass runs every layer (and the head, which adds no statistic).
    last = n - 1 if stop_after_layer is None else min(stop_after_layer, n - 1)
    if not hidden_states and stop_after_layer is None and modules:
        last = max(layer for layer, _ in modules.values())
    stats = ProbeStats()
    if hidden_states:
        stats.unit_sum = torch.zeros(n, sm.config.get_text_config().hidden_size, dtype=torch.float64)
    hooks = _Hooks(stats, hidden_states, None)
    batches: list[tuple[torch.Tensor, LayerInputs]] = []
    try:
        for enc in _encoded_batches(tokenizer, texts, batch_size, max_length, sm.config, f"{desc} (embed)"):
            mask = enc["attention_mask"]
            inputs = sm.capture(enc["input_ids"], mask, position_ids(mask), last)
            inputs.hidden = inputs.hidden.to("cpu")
            batches.append((mask, inputs))
            stats.n_prompts += enc["input_ids"].shape[0]
            stats.n_tokens += int(mask.sum())
    finally:
        sm.release_outer()
    try:
        for i in tqdm(range(last + 1), desc=f"{desc} (layers)", unit="layer", leave=False):
            with sm.layer(i) as layer:
                handles = [layer.register_forward_hook(hooks.layer(i))] if hidden_states else []
                handles += [attrgetter(path)(layer).register_forward_pre_hook(hooks.module_input(key))
                            for key, (li, path) in modules.items() if li == i]
                try:
                    for mask, inputs in batches:
                        hooks.mask = mask
                        out = inputs.calls[i](layer, inputs.hidden.to(sm.device))
                        inputs.hidden = hidden_of(out).to("cpu") if i < last else inputs.hidden
                finally:
                    for h in handles:
                        h.remove()
                    hooks.clear()
    finally:
        batches.clear()
    return stats
