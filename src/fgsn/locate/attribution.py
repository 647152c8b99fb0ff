"""Statistics for the scores that need more than input norms (see scores.py):

- `gradient_sums`: dL/dW of target weights, summed over a prompt set, for the `snip` score. The
  loss is the token-summed NLL of an answer (a refusal for harmful prompts, the reference answer
  for task prompts, or the prompt itself when it has none). One backward pass per batch; no
  optimiser step; only target weights require grad.
- `contrast_sums`: per output neuron, the summed squared change of its activation between the
  aligned and the fine-tuned model on the same tokens, for the `contrast` score. Both models run
  batch by batch; only one batch of target-module outputs is held at a time.
"""

from __future__ import annotations

import inspect

import torch
from tqdm.auto import tqdm

from fgsn.data.batching import length_batches
from fgsn.data.chat import render_chat
from fgsn.locate.probes import position_ids
from fgsn.models.loading import input_device

DEFAULT_REFUSAL = "I'm sorry, but I can't help with that request."


def _encode(tok, prompt: str, answer: str | None, use_chat_template: bool, system: str | None,
            max_length: int | None) -> tuple[list[int], list[int]]:
    """(input ids, labels) with labels -100 outside the answer."""
    rendered = render_chat(tok, prompt, system=system, use_chat_template=use_chat_template)
    p_ids = tok(rendered, add_special_tokens=False)["input_ids"]
    if answer is None:
        ids, labels = p_ids, list(p_ids)
    else:
        a_ids = tok(answer, add_special_tokens=False)["input_ids"]
        if tok.eos_token_id is not None:
            a_ids = a_ids + [tok.eos_token_id]
        ids, labels = p_ids + a_ids, [-100] * len(p_ids) + a_ids
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[-max_length:], labels[-max_length:]
    return ids, labels


def _left_pad(rows: list[tuple[list[int], list[int]]], pad_id: int):
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, width - len(x):] = torch.tensor(x)
        labels[i, width - len(y):] = torch.tensor(y)
        mask[i, width - len(x):] = 1
    return ids, labels, mask


def answer_loss_sum(model, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, keeps_logits: bool
                    ) -> torch.Tensor:
    """Token-summed NLL of the labelled positions of one left-padded batch (a scalar with its graph).
    Logits are computed only from the first labelled position on: the vocabulary projection of the
    context would be wasted work and memory."""
    dev = input_device(model)
    width = ids.shape[1]
    labelled = (labels != -100).any(0).nonzero()
    # logits at positions first_label-1 .. width-1 predict every label (left padding: answers last)
    keep = min(width, width - int(labelled[0]) + 1) if len(labelled) and keeps_logits else width
    kw = {"logits_to_keep": keep} if keeps_logits else {}
    logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                   position_ids=position_ids(mask).to(dev), use_cache=False, **kw).logits[:, -keep:]
    return torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                             labels[:, width - keep + 1:].reshape(-1).to(dev),
                                             ignore_index=-100, reduction="sum")


def gradient_sums(model, tok, prompts: list[str], answers: list[str | None], params: dict[str, torch.nn.Parameter],
                  *, batch_size: int = 8, use_chat_template: bool = True, system: str | None = None,
                  max_length: int | None = None, desc: str = "gradients", max_batch_tokens: int = 2048
                  ) -> dict[str, torch.Tensor]:
    """Sum over the set of d(answer NLL)/dW for each parameter in `params` (stored layout).

    The sum is linear, so batches are formed for memory, not meaning: at most `batch_size`
    sequences and `max_batch_tokens` padded tokens (activations kept for the backward pass and
    full-vocabulary logits grow with batch x width: 32 x 256-token answers took 16 GB), and
    logits are computed only from the first labelled position on."""
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    # A bfloat16 model's .grad is bfloat16: summing many batches there loses the small ones, so the
    # sum is kept in float32 (a float32 model accumulates in .grad as autograd does).
    acc = {k: torch.zeros(p.shape, dtype=torch.float32, device=p.device)
           for k, p in params.items() if p.dtype != torch.float32}
    try:
        rows = [_encode(tok, p, a, use_chat_template, system, max_length) for p, a in zip(prompts, answers, strict=True)]
        keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        for idx in tqdm(length_batches([len(r[0]) for r in rows], batch_size, max_batch_tokens), desc=desc,
                        unit="batch", leave=False):
            ids, labels, mask = _left_pad([rows[i] for i in idx], tok.pad_token_id)
            answer_loss_sum(model, ids, labels, mask, keeps_logits).backward()
            for k in acc:
                if params[k].grad is not None:
                    acc[k] += params[k].grad.float()
                    params[k].grad = None
        return {k: (acc[k].cpu() if k in acc else p.grad.detach().float().cpu() if p.grad is not None
                    else torch.zeros(p.shape)) for k, p in params.items()}
    finally:
        for n, p in model.named_parameters():
            p.grad = None
            p.requires_grad_(saved[n])


@torch.no_grad()
def contrast_sums(aligned, finetuned, tok, prompts: list[str], modules_aligned: dict[str, torch.nn.Module],
                  modules_finetuned: dict[str, torch.nn.Module], *, transposed: bool = False, batch_size: int = 8,
                  use_chat_template: bool = True, system: str | None = None, max_length: int | None = None,
                  desc: str = "contrast", max_batch_tokens: int = 4096) -> dict[str, torch.Tensor]:
    """Per module key, the per-output-neuron sum over real tokens of (y_ft - y_aligned)^2 (batched
    like `gradient_sums`: the sum does not depend on the batches)."""
    outputs: dict[str, torch.Tensor] = {}
    sums: dict[str, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}

    def keep(key):
        def hook(_m, _a, out):
            outputs[key] = out.detach()
        return hook

    def diff(key):
        def hook(_m, _a, out):
            d = (out.detach().double() - outputs.pop(key).to(out.device).double()).pow(2)
            d = (d * state["mask"].to(d.device, torch.float64).unsqueeze(-1)).sum(dim=(0, 1)).cpu()
            sums[key] = sums[key] + d if key in sums else d
        return hook

    handles = [m.register_forward_hook(keep(k)) for k, m in modules_aligned.items()]
    handles += [m.register_forward_hook(diff(k)) for k, m in modules_finetuned.items()]
    try:
        rows = [_encode(tok, p, None, use_chat_template, system, max_length) for p in prompts]
        for idx in tqdm(length_batches([len(r[0]) for r in rows], batch_size, max_batch_tokens), desc=desc,
                        unit="batch", leave=False):
            ids, _, mask = _left_pad([rows[i] for i in idx], tok.pad_token_id)
            state["mask"] = mask
            for model in (aligned, finetuned):
                dev = input_device(model)
                model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=position_ids(mask).to(dev),
                      use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return sums
