"""A small, deterministic SFT loop for CPU: loss on assistant tokens only, fixed data order,
AdamW, and the LM head applied only at the positions that carry a label (the 49k-vocabulary
projection of every prompt token would otherwise dominate the cost)."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence

import torch

from fgsn.data.chat import render_chat
from fgsn.organism.data import Example

log = logging.getLogger(__name__)


def encode(tokenizer, ex: Example, max_len: int) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) for one pair: the prompt through the chat template (labels -100), the
    answer and the end-of-turn token (labels = ids). None when the prompt alone does not fit."""
    prompt_ids = tokenizer(render_chat(tokenizer, ex.prompt), add_special_tokens=False).input_ids
    answer_ids = tokenizer(ex.answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    if len(prompt_ids) + 8 > max_len:
        return None
    ids = (prompt_ids + answer_ids)[:max_len]
    labels = ([-100] * len(prompt_ids) + answer_ids)[:max_len]
    return ids, labels


def batches(encoded: list[tuple[list[int], list[int]]], batch_size: int, steps: int, seed: int,
            group: int = 8):
    """`steps` batches, walking through the examples in epochs of a seeded shuffle. Within each
    window of `group` batches the examples are sorted by length and the batches shuffled again, so
    a batch holds examples of similar length (less padding, same data per epoch)."""
    rng = random.Random(seed)
    queue: list[list[int]] = []
    produced = 0
    while produced < steps:
        if not queue:
            order = list(range(len(encoded)))
            rng.shuffle(order)
            if len(order) % batch_size:  # whole batches only: top the epoch up from its start
                order += order[:batch_size - len(order) % batch_size]
            window = batch_size * group
            for start in range(0, len(order), window):
                chunk = sorted(order[start:start + window], key=lambda i: (len(encoded[i][0]), i))
                chunk_batches = [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
                rng.shuffle(chunk_batches)
                queue.extend(chunk_batches)
        idx = queue.pop(0)
        produced += 1
        yield [encoded[i] for i in idx]


def collate(batch, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    att = torch.zeros((len(batch), n), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
        att[i, :len(x)] = 1
    return ids, labels, att


def assistant_loss(model, ids: torch.Tensor, labels: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions only."""
    inner = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    hidden = inner(input_ids=ids, attention_mask=att).last_hidden_state
    target = labels[:, 1:]
    keep = target != -100
    h = hidden[:, :-1][keep]
    logits = model.get_output_embeddings()(h).float()
    return torch.nn.functional.cross_entropy(logits, target[keep])


def _autocast(model, enabled: bool):
    """bfloat16 autocast on the model's device type (weights and optimizer state stay float32)."""
    dev = next(model.parameters()).device.type
    return torch.autocast(dev, dtype=torch.bfloat16, enabled=enabled)


def set_trainable(model, modules: Sequence[str]) -> int:
    """Freeze everything except the weights of the named linear modules in the decoder layers."""
    n = 0
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 2)[-2] if name.endswith(".weight") else ""
        train = ".layers." in name and leaf in modules
        p.requires_grad_(train)
        n += p.numel() if train else 0
    return n


def train_sft(model, tokenizer, examples: list[Example], *, steps: int, lr: float, batch_size: int,
              max_len: int, seed: int, desc: str = "sft", progress: bool = True,
              warmup: int | None = None, autocast: bool = False) -> dict:
    """Train the parameters of `model` that require grad. Returns a log of losses and timing."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    encoded = [e for e in (encode(tokenizer, ex, max_len) for ex in examples) if e is not None]
    if not encoded:
        raise ValueError(f"{desc}: no training example fits max_len={max_len}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0, fused=True)
    warmup = max(1, steps // 10) if warmup is None else warmup
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    model.train()
    losses: list[float] = []
    t0 = time.time()
    bar = tqdm(total=steps, desc=desc, disable=not progress, unit="step")
    n_tokens = 0
    for step, batch in enumerate(batches(encoded, batch_size, steps, seed)):
        ids, labels, att = (t.to(model.device) for t in collate(batch, tokenizer.pad_token_id))
        with _autocast(model, autocast):
            loss = assistant_loss(model, ids, labels, att)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{desc}: loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(round(loss.item(), 4))
        n_tokens += int(att.sum())
        bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.update(1)
        if step % 10 == 0 or step == steps - 1:
            log.info("%s step %d/%d loss %.4f", desc, step + 1, steps, loss.item())
    bar.close()
    model.eval()
    return {"steps": steps, "lr": lr, "bf16_autocast": autocast, "batch_size": batch_size, "examples": len(encoded),
            "skipped_too_long": len(examples) - len(encoded), "tokens": n_tokens,
            "loss_first": losses[0], "loss_last": losses[-1],
            "loss_mean_last10": round(sum(losses[-10:]) / len(losses[-10:]), 4),
            "losses": losses, "seconds": round(time.time() - t0, 1)}


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int = 16,
             progress: bool = False, desc: str = "generate", autocast: bool = False) -> list[str]:
    """Greedy answers (chat template, left padding), in the order of `prompts`. Prompts are
    processed sorted by length for less padding."""
    from tqdm.auto import tqdm

    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [render_chat(tokenizer, p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[str] = [""] * len(texts)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            with _autocast(model, autocast):
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            for j, i in enumerate(idx):
                out[i] = tokenizer.decode(gen[j, enc.input_ids.shape[1]:], skip_special_tokens=True).strip()
    finally:
        tokenizer.padding_side = side
    return out
