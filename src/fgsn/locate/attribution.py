"""Statistics for the scores that need more than input norms (see scores.py):

- `gradient_sums`: dL/dW of target weights, summed over a prompt set, for the `snip` score. The
  loss is the token-summed NLL of an answer (a refusal for harmful prompts, the reference answer
  for task prompts, or the prompt itself when it has none). One backward pass per batch; no
  optimiser step; only target weights require grad.
- `contrast_sums`: per output neuron, the summed squared change of its activation between the
  aligned and the fine-tuned model on the same tokens, for the `contrast` score. Both models run
  batch by batch; only one batch of target-module outputs is held at a time.

Each has a `_streamed` twin over fgsn.models.streamed.StreamedModel that holds one decoder layer
(of each model) at a time and gives the same sums.
"""

from __future__ import annotations

import inspect

import torch
from tqdm.auto import tqdm

from fgsn.data.batching import length_batches
from fgsn.data.chat import render_chat
from fgsn.locate.probes import position_ids
from fgsn.models.loading import input_device
from fgsn.models.streamed import LayerCall, StreamedModel, hidden_of


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


def _logits_kept(labels: torch.Tensor, keeps_logits: bool) -> int:
    """How many final positions' logits predict every label of a left-padded batch (left padding
    puts the answers last): the positions first_label-1 .. width-1, or all when the model cannot
    keep fewer."""
    width = labels.shape[1]
    labelled = (labels != -100).any(0).nonzero()
    return min(width, width - int(labelled[0]) + 1) if len(labelled) and keeps_logits else width


def _answer_batches(tok, prompts: list[str], answers: list[str | None], *, batch_size: int, max_batch_tokens: int,
                    use_chat_template: bool, system: str | None, max_length: int | None, keeps_logits: bool,
                    desc: str):
    """(ids, labels, mask, keep) per batch: left-padded, with `keep` the number of final positions
    whose logits predict every label (`_logits_kept`)."""
    rows = [_encode(tok, p, a, use_chat_template, system, max_length) for p, a in zip(prompts, answers, strict=True)]
    for idx in tqdm(length_batches([len(r[0]) for r in rows], batch_size, max_batch_tokens), desc=desc,
                    unit="batch", leave=False):
        ids, labels, mask = _left_pad([rows[i] for i in idx], tok.pad_token_id)
        yield ids, labels, mask, _logits_kept(labels, keeps_logits)


def answer_loss_sum(model, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, keeps_logits: bool
                    ) -> torch.Tensor:
    """Token-summed NLL of the labelled positions of one left-padded batch (a scalar with its graph).
    Logits are computed only from the first labelled position on: the vocabulary projection of the
    context would be wasted work and memory."""
    dev = input_device(model)
    keep = _logits_kept(labels, keeps_logits)
    kw = {"logits_to_keep": keep} if keeps_logits else {}
    logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                   position_ids=position_ids(mask).to(dev), use_cache=False, **kw).logits
    return _answer_nll(logits, labels, keep)


def _answer_nll(logits: torch.Tensor, labels: torch.Tensor, keep: int) -> torch.Tensor:
    """The token-summed NLL of the labels from the last `keep` positions' logits."""
    logits = logits[:, -keep:]
    width = labels.shape[1]
    return torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                             labels[:, width - keep + 1:].reshape(-1).to(logits.device),
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
        keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        for ids, labels, mask, _ in _answer_batches(
                tok, prompts, answers, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                use_chat_template=use_chat_template, system=system, max_length=max_length,
                keeps_logits=keeps_logits, desc=desc):
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


def gradient_sums_streamed(sm: StreamedModel, tok, prompts: list[str], answers: list[str | None],
                           params: dict[str, tuple[int, str]], *, batch_size: int = 8, use_chat_template: bool = True,
                           system: str | None = None, max_length: int | None = None, desc: str = "gradients",
                           max_batch_tokens: int = 2048, spill_dir: str | None = None) -> dict[str, torch.Tensor]:
    """`gradient_sums` with one decoder layer in memory at a time; `params` maps a key to (layer,
    parameter path inside the layer).

    Backpropagation by recomputation: a forward pass over all layers, layer by layer, saves each
    batch's input to every layer from the lowest target layer up (spilled to a temporary folder,
    one file a layer: they are layers x prompts x tokens x hidden, too much to keep in RAM); the
    loss gradient with respect to the last layer's output comes from the model's own head; then
    from the top layer down each layer is loaded again, re-run on its saved inputs with autograd,
    and given the incoming gradient, which yields its weights' gradients and the gradient passed
    to the layer below. Held at once: one layer, its saved inputs, and the current hidden states
    and their gradients (prompts x tokens x hidden each).
    """
    import tempfile

    keeps_logits = "logits_to_keep" in inspect.signature(sm.model.forward).parameters
    batches = list(_answer_batches(tok, prompts, answers, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                   use_chat_template=use_chat_template, system=system, max_length=max_length,
                                   keeps_logits=keeps_logits, desc=f"{desc} (embed)"))
    top = sm.num_layers - 1
    low = min(layer for layer, _ in params.values())
    sums = {k: None for k in params}
    with tempfile.TemporaryDirectory(prefix="fgsn-grad-", dir=spill_dir) as tmp:
        hidden: list[torch.Tensor] = []
        calls: list[list[LayerCall]] = []
        try:
            for ids, _labels, mask, _keep in batches:
                inputs = sm.capture(ids, mask, position_ids(mask), top)
                hidden.append(inputs.hidden.to("cpu"))
                calls.append(inputs.calls)
        finally:
            sm.release_outer()
        with torch.no_grad():
            for i in tqdm(range(top + 1), desc=f"{desc} (forward)", unit="layer", leave=False):
                if i >= low:
                    torch.save(hidden, f"{tmp}/{i}.pt")
                with sm.layer(i) as layer:
                    hidden = [hidden_of(calls[b][i](layer, h.to(sm.device))).to("cpu") for b, h in enumerate(hidden)]
        grads: list[torch.Tensor] = []
        try:
            for b, (ids, labels, mask, keep) in enumerate(batches):
                last = hidden[b].to(sm.device).requires_grad_(True)
                kw = {"logits_to_keep": keep} if keeps_logits else {}
                logits = sm.logits(ids, mask, position_ids(mask), last, **kw)
                _answer_nll(logits, labels, keep).backward()
                grads.append(last.grad.to("cpu"))
                hidden[b] = None  # type: ignore[call-overload]
        finally:
            sm.release_outer()
        hidden.clear()
        for i in tqdm(range(top, low - 1, -1), desc=f"{desc} (backward)", unit="layer", leave=False):
            mine = {k: path for k, (layer, path) in params.items() if layer == i}
            saved = torch.load(f"{tmp}/{i}.pt", weights_only=True)
            with sm.layer(i, grad=mine.values()) as layer:
                weights = {k: layer.get_parameter(path) for k, path in mine.items()}
                for b, x in enumerate(saved):
                    x = x.to(sm.device).requires_grad_(i > low)
                    out = hidden_of(calls[b][i](layer, x))
                    out.backward(grads[b].to(sm.device))
                    grads[b] = x.grad.to("cpu") if i > low else grads[b]
                    for k, w in weights.items():
                        if w.grad is not None:
                            g = w.grad.float()
                            sums[k] = g if sums[k] is None else sums[k] + g
                            w.grad = None
            saved.clear()
    return {k: (v.cpu() if v is not None else torch.zeros(sm.layers[params[k][0]].get_parameter(params[k][1]).shape))
            for k, v in sums.items()}


class _ContrastHooks:
    """Forward hooks for `contrast`: the aligned module's output is kept until the fine-tuned
    module's output on the same batch arrives, then their squared difference is summed."""

    def __init__(self):
        self.outputs: dict[str, torch.Tensor] = {}
        self.sums: dict[str, torch.Tensor] = {}
        self.mask: torch.Tensor | None = None

    def keep(self, key: str):
        def hook(_m, _a, out):
            self.outputs[key] = out.detach()
        return hook

    def diff(self, key: str):
        def hook(_m, _a, out):
            d = (out.detach().double() - self.outputs.pop(key).to(out.device).double()).pow(2)
            d = (d * self.mask.to(d.device, torch.float64).unsqueeze(-1)).sum(dim=(0, 1)).cpu()
            self.sums[key] = self.sums[key] + d if key in self.sums else d
        return hook


def _plain_batches(tok, prompts: list[str], *, batch_size: int, max_batch_tokens: int, use_chat_template: bool,
                   system: str | None, max_length: int | None, desc: str):
    rows = [_encode(tok, p, None, use_chat_template, system, max_length) for p in prompts]
    for idx in tqdm(length_batches([len(r[0]) for r in rows], batch_size, max_batch_tokens), desc=desc,
                    unit="batch", leave=False):
        ids, _, mask = _left_pad([rows[i] for i in idx], tok.pad_token_id)
        yield ids, mask


@torch.no_grad()
def contrast_sums(aligned, finetuned, tok, prompts: list[str], modules_aligned: dict[str, torch.nn.Module],
                  modules_finetuned: dict[str, torch.nn.Module], *, transposed: bool = False, batch_size: int = 8,
                  use_chat_template: bool = True, system: str | None = None, max_length: int | None = None,
                  desc: str = "contrast", max_batch_tokens: int = 4096) -> dict[str, torch.Tensor]:
    """Per module key, the per-output-neuron sum over real tokens of (y_ft - y_aligned)^2 (batched
    like `gradient_sums`: the sum does not depend on the batches)."""
    hooks = _ContrastHooks()
    handles = [m.register_forward_hook(hooks.keep(k)) for k, m in modules_aligned.items()]
    handles += [m.register_forward_hook(hooks.diff(k)) for k, m in modules_finetuned.items()]
    try:
        for ids, mask in _plain_batches(tok, prompts, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                        use_chat_template=use_chat_template, system=system, max_length=max_length,
                                        desc=desc):
            hooks.mask = mask
            for model in (aligned, finetuned):
                dev = input_device(model)
                model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=position_ids(mask).to(dev),
                      use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return hooks.sums


@torch.no_grad()
def contrast_sums_streamed(aligned: StreamedModel, finetuned: StreamedModel, tok, prompts: list[str],
                           modules: dict[str, tuple[int, str]], *, batch_size: int = 8, use_chat_template: bool = True,
                           system: str | None = None, max_length: int | None = None, desc: str = "contrast",
                           max_batch_tokens: int = 4096) -> dict[str, torch.Tensor]:
    """`contrast_sums` with one decoder layer of each model in memory at a time; `modules` maps a
    key to (layer, module path inside the layer). Each model's hidden states are kept between
    layers (see `run_probes_streamed`)."""
    from operator import attrgetter

    hooks = _ContrastHooks()
    top = max(layer for layer, _ in modules.values())
    masks, states = [], []
    try:
        for ids, mask in _plain_batches(tok, prompts, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                        use_chat_template=use_chat_template, system=system, max_length=max_length,
                                        desc=f"{desc} (embed)"):
            masks.append(mask)
            pair = [sm.capture(ids, mask, position_ids(mask), top) for sm in (aligned, finetuned)]
            for inputs in pair:
                inputs.hidden = inputs.hidden.to("cpu")
            states.append(pair)
    finally:
        aligned.release_outer()
        finetuned.release_outer()
    for i in tqdm(range(top + 1), desc=f"{desc} (layers)", unit="layer", leave=False):
        with aligned.layer(i) as la, finetuned.layer(i) as lf:
            handles = []
            for key, (li, path) in modules.items():
                if li == i:
                    handles.append(attrgetter(path)(la).register_forward_hook(hooks.keep(key)))
                    handles.append(attrgetter(path)(lf).register_forward_hook(hooks.diff(key)))
            try:
                for mask, pair in zip(masks, states, strict=True):
                    hooks.mask = mask
                    for sm, layer, inputs in zip((aligned, finetuned), (la, lf), pair, strict=True):
                        out = hidden_of(inputs.calls[i](layer, inputs.hidden.to(sm.device)))
                        inputs.hidden = out.to("cpu") if i < top else inputs.hidden
            finally:
                for h in handles:
                    h.remove()
    return hooks.sums
