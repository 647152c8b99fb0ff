"""Input Gram matrices of linear modules, H = sum over tokens of x x^T, layer after layer on a model
that is being edited as it goes (the OBS / SparseGPT compensation, fgsn.edit.compensate).

`LayerReplay` runs the examples through the model once, up to the first layer needed, and keeps
that layer's input hidden states and the keyword arguments the model passes to every decoder
layer (masks, position embeddings: captured from the model's own calls, so no architecture's
signature is hard-coded). Then each layer is replayed on its stored inputs: once with hooks that
accumulate its modules' Grams (float64, never the activations), and, once the caller has edited
the layer, once more to produce the next layer's inputs. L layers cost 2L layer passes instead of
the L(L+1)/2 of a forward pass per layer. Examples are teacher-forced like the gradient sums
(attribution.py): the chat-rendered prompt followed by its answer when it has one. Modules that
read the same input tensor (q/k/v, gate/up) share one product.
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
