"""Losses of the iterative reversion and their gradients (beside attribution.gradient_sums, the
refusal NLL's):

- `example_nll`: the token-mean NLL of answers (or of the prompt itself where there is none),
  teacher-forced exactly like gradient_sums, with no graph: the task-loss floor of the rollback.
- `last_token_mean`: the mean over prompts of the last-token hidden state at `hidden_states[index]`
  (transformers' numbering: 0 = the embeddings, k = the output of decoder layer k-1, before any
  final norm when k < L), from a hook that ends the forward pass there.
- `cosine_gradients`: l = -cos(m, r) with m that mean on the current model and r a fixed
  reference (SGDG's loss, r the aligned model's mean on harmful prompts), and dl/dW. The mean
  couples all prompts, so it takes two passes: the first computes m and v = dl/dm in closed form,
  the second backpropagates sum_i v . h_i / n batch by batch, whose gradient is exactly dl/dW.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import torch
from tqdm.auto import tqdm

from fgsn.data.batching import length_batches
from fgsn.errors import InputError
from fgsn.locate.attribution import _encode, _left_pad, answer_loss_sum
from fgsn.locate.probes import _StopForward, position_ids
from fgsn.models.loading import input_device


@torch.no_grad()
def example_nll(model, tok, prompts: list[str], answers: list[str | None], *, batch_size: int = 8,
                use_chat_template: bool = True, system: str | None = None, max_length: int | None = None,
                max_batch_tokens: int = 4096) -> float:
    """Mean NLL per labelled token (nats) over the examples."""
    rows = [_encode(tok, p, a, use_chat_template, system, max_length) for p, a in zip(prompts, answers, strict=True)]
    keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    total, n = 0.0, 0
    for idx in length_batches([len(r[0]) for r in rows], batch_size, max_batch_tokens):
        ids, labels, mask = _left_pad([rows[i] for i in idx], tok.pad_token_id)
        total += float(answer_loss_sum(model, ids, labels, mask, keeps_logits))
        # the first token of a sequence predicts nothing (it has no context)
        n += int((labels[:, 1:] != -100).sum())
    if n == 0:
        raise InputError("no answer token to score: the task examples are empty")
    return total / n


def check_hidden_index(index: int, num_layers: int) -> None:
    if not 1 <= index <= num_layers:
        raise InputError(f"--cosine-layer {index}: the model's hidden states are numbered 1-{num_layers} "
                         "(k = the output of decoder layer k-1)")


def _last_token_batches(model, tok, prompts: list[str], layers, index: int, *, batch_size: int,
                        use_chat_template: bool, system: str | None, max_length: int | None,
                        desc: str) -> Iterator[tuple[torch.Tensor, int]]:
    """Per batch of prompts, (last-token hidden states at hidden_states[index] (B, hidden), B), in a
    fixed order; the forward pass ends at that layer. With grad enabled the states keep their graph."""
    check_hidden_index(index, len(layers))
    rows = [_encode(tok, p, None, use_chat_template, system, max_length) for p in prompts]
    captured: dict[str, torch.Tensor] = {}

    def hook(_m, _a, out):
        captured["h"] = out[0] if isinstance(out, tuple) else out
        raise _StopForward

    handle = layers[index - 1].register_forward_hook(hook)
    dev = input_device(model)
    try:
        for idx in tqdm(length_batches([len(r[0]) for r in rows], batch_size, 1 << 30), desc=desc, unit="batch",
                        leave=False):
            ids, _, mask = _left_pad([rows[i] for i in idx], tok.pad_token_id)
            with contextlib.suppress(_StopForward):
                model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=position_ids(mask).to(dev),
                      use_cache=False)
            yield captured.pop("h")[:, -1, :], len(idx)  # left padding: the last position is the last token
    finally:
        handle.remove()


def last_token_mean(model, tok, prompts: list[str], layers, index: int, *, batch_size: int = 8,
                    use_chat_template: bool = True, system: str | None = None, max_length: int | None = None,
                    desc: str = "hidden mean") -> torch.Tensor:
    """(hidden,) float64 on CPU: the mean last-token hidden state at hidden_states[index]."""
    if not prompts:
        raise InputError("no prompts to take the mean hidden state of")
    total = None
    with torch.no_grad():
        for h, _ in _last_token_batches(model, tok, prompts, layers, index, batch_size=batch_size,
                                        use_chat_template=use_chat_template, system=system, max_length=max_length,
                                        desc=desc):
            s = h.double().sum(0).cpu()
            total = s if total is None else total + s
    return total / len(prompts)


def cosine_loss(m: torch.Tensor, r: torch.Tensor) -> float:
    return -float(torch.nn.functional.cosine_similarity(m.double(), r.double(), dim=0))


def cosine_gradients(model, tok, prompts: list[str], reference: torch.Tensor, params: dict[str, torch.nn.Parameter],
                     layers, index: int, *, batch_size: int = 8, use_chat_template: bool = True,
                     system: str | None = None, max_length: int | None = None, desc: str = "cosine gradients"
                     ) -> tuple[float, dict[str, torch.Tensor]]:
    """(l, {name: dl/dW (stored layout, float32, CPU)}) for l = -cos(mean last-token state, reference)."""
    kw = dict(batch_size=batch_size, use_chat_template=use_chat_template, system=system, max_length=max_length)
    m = last_token_mean(model, tok, prompts, layers, index, desc=f"{desc} (mean)", **kw)
    r = reference.double().cpu()
    nm, nr = float(m.norm()), float(r.norm())
    if nm == 0.0 or nr == 0.0:
        raise InputError("the mean hidden state or its reference is zero; the cosine loss is undefined")
    loss = -float(m @ r) / (nm * nr)
    v = -(r / (nm * nr) - float(m @ r) * m / (nm ** 3 * nr))          # dl/dm
    n = len(prompts)
    with _grads_of(model, params) as acc:
        for h, _ in _last_token_batches(model, tok, prompts, layers, index, desc=desc, **kw):
            ((h.double() @ v.to(h.device)).sum() / n).backward()
            acc()
        grads = acc.result()
    return loss, grads


class _grads_of(contextlib.AbstractContextManager):
    """Only `params` require grad inside; `acc()` after each backward adds their .grad to a float32
    sum (a bfloat16 .grad would lose small batches); everything is restored on exit."""

    def __init__(self, model, params: dict[str, torch.nn.Parameter]):
        self.model, self.params = model, params

    def __enter__(self):
        self.saved = {n: p.requires_grad for n, p in self.model.named_parameters()}
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.sums = {k: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for k, p in self.params.items()}
        for p in self.params.values():
            p.requires_grad_(True)
            p.grad = None
        return self

    def __call__(self) -> None:
        for k, p in self.params.items():
            if p.grad is not None:
                self.sums[k] += p.grad.float()
                p.grad = None

    def result(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.sums.items()}

    def __exit__(self, *exc):
        for n, p in self.model.named_parameters():
            p.grad = None
            p.requires_grad_(self.saved[n])
        return False
