"""Teacher-forced negative log-likelihood of reference answers (answer tokens only).

Why: a repair that keeps refusal rates but damages the language model shows up here first,
without any judge. The context is the chat-templated prompt; the answer follows it; only the
answer's tokens are scored. Context and answer are tokenized separately and concatenated, so the
boundary between them never merges into one token and the answer span is exact.
"""

from __future__ import annotations

import inspect

import torch

from fgsn.data.batching import length_batches


@torch.no_grad()
def answer_nll(model, tokenizer, contexts: list[str], answers: list[str], *, batch_size: int = 8,
               add_special_tokens: bool = False, max_length: int = 2048,
               progress: str | None = None, max_batch_tokens: int = 4096) -> list[tuple[float, int]]:
    """Per item, in input order: (sum of answer-token NLL in nats, number of answer tokens). Items
    are truncated from the left of the context to fit `max_length`; an answer longer than that is
    cut. Batches hold items of similar length (see fgsn.data.batching), at most
    `batch_size` of them and (beyond the first) at most `max_batch_tokens` padded tokens: padding
    is wasted compute."""
    from tqdm.auto import tqdm

    from fgsn.models.loading import input_device

    dev = input_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    seqs: list[tuple[list[int], int]] = []
    for ctx, ans in zip(contexts, answers, strict=True):
        c = tokenizer(ctx, add_special_tokens=add_special_tokens)["input_ids"]
        if not c:  # the first answer token needs something to be predicted from
            c = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else pad]
        a = tokenizer(ans, add_special_tokens=False)["input_ids"]
        if eos is not None:
            a = a + [eos]  # the model should also know where the answer ends
        a = a[: max_length - 1]
        c = c[-(max_length - len(a)):] if len(c) + len(a) > max_length else c
        seqs.append((c + a, len(a)))
    keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    batches = length_batches([len(s) for s, _ in seqs], batch_size, max_batch_tokens)
    out: list[tuple[float, int] | None] = [None] * len(seqs)
    for idx in tqdm(batches, desc=progress or "reference NLL", unit="batch", disable=progress is None,
                    leave=False):
        chunk = [seqs[i] for i in idx]
        width = max(len(s) for s, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, (s, _) in enumerate(chunk):  # left padding, as in generation
            ids[r, width - len(s):] = torch.tensor(s)
            mask[r, width - len(s):] = 1
        # Positions count from each row's first real token, so left padding does not shift them.
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        # Left padding puts every answer at the end: only the last `keep` positions need logits
        # (the vocabulary projection of the context would be wasted work and memory).
        keep = max(n for _, n in chunk) + 1
        kw = {"logits_to_keep": keep} if keeps_logits else {}
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), **kw).logits
        logits = logits[:, -keep:].float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = ids[:, width - keep + 1:].to(logp.device)
        tok_nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        for r, (_s, n_ans) in enumerate(chunk):
            vals = tok_nll[r, keep - 1 - n_ans:]
            out[idx[r]] = (float(vals.sum()), int(n_ans))
    return [o for o in out if o is not None]
