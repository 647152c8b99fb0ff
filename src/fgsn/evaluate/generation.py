"""Batched generation: Hugging Face `generate` (default) or vLLM (`--backend vllm`, GPU, optional).

Prompts arrive already rendered (chat template applied), so both backends see exactly the same
text and the cache key (the rendered text) means the same thing for both. Batches are formed
from prompts sorted by length (less padding; the longest batch first, so an out-of-memory error
comes at once) and results are handed to `on_batch` as they come, which is how the cache
checkpoints a long run.

Shared prefix (`GenSettings.shared_prefix`, on by default for `hf`): chat-templated prompts begin
with the same tokens (SmolLM2: its 24-token system prompt and user header, half the tokens of a
short harmful prompt), whose keys and values are the same in every row of a batch. They are
computed once per batch and the rows continue from them, padded between the prefix and their own
tokens (positions come from the attention mask, so every token keeps the position it has in the
plain left-padded batch). Exact in float32 (test). On the SmolLM2 organism's aligned model, 100
HarmBench/StrongREJECT prompts, one thread (benchmarks/prefix_generation.py): 23% less time in
float32, 16% in bfloat16, where the other summation order changes 11 of the 100 completions and
2 keyword verdicts (batch size 32 instead of 64 changes 5 and 0).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from fgsn.errors import InputError
from fgsn.models.shared_prefix import (
    MIN_SHARED_PREFIX,
    cache_kwarg,
    shared_prefix_length,
    supports_shared_prefix,
)

log = logging.getLogger(__name__)

OnBatch = Callable[[list[int], list[str]], None]


@dataclass(frozen=True)
class GenSettings:
    """What determines a completion (part of the cache key)."""

    backend: str
    dtype: str
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    shared_prefix: bool = False  # hf: the batch's common prefix computed once (module doc)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["shared_prefix"]:  # absent when off: cache keys written before the option stay valid
            del d["shared_prefix"]
        return d


DEFAULT_MAX_BATCH_TOKENS = 8192


def budget_batches(order: list[int], lengths: list[int], size: int, max_tokens: int) -> list[list[int]]:
    """`order` (longest first) cut into batches of at most `size` prompts and, while the prompts are
    long, at most `max_tokens` padded prompt tokens; once `size` of them fit, equal-size batches
    (`_batches`). Why: a batch is padded to its longest prompt, so 60 jailbreak-wrapped prompts
    of up to 1,275 tokens in one batch of 64 cost 80,000 padded tokens for 28,000 real ones."""
    out, i = [], 0
    while i < len(order):
        fit = max(1, min(size, max_tokens // max(lengths[order[i]], 1)))
        if fit >= min(size, len(order) - i):
            break
        out.append(order[i:i + fit])
        i += fit
    return out + _batches(order[i:], size)


def _batches(order: list[int], size: int) -> list[list[int]]:
    """Consecutive batches of at most `size`, as few as possible and of equal size (+-1): 100
    prompts at size 64 are two batches of 50, not 64 + 36, and at size 32 four of 25, not a last
    batch of 4 that costs as many decoding steps as a full one."""
    if not order:
        return []
    n = -(-len(order) // size)
    base, extra = divmod(len(order), n)
    out, start = [], 0
    for b in range(n):
        end = start + base + (1 if b < extra else 0)
        out.append(order[start:end])
        start = end
    return out


class HFGenerator:
    """Left-padded batched `model.generate`; halves the batch on CUDA out-of-memory."""

    def __init__(self, model, tokenizer, settings: GenSettings, batch_size: int = 8,
                 add_special_tokens: bool = False, progress: str | None = "generate",
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS):
        self.model = model
        self.tok = tokenizer
        self.settings = settings
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.add_special_tokens = add_special_tokens
        self.progress = progress
        if self.tok.padding_side != "left":
            self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.shared_prefix = settings.shared_prefix and supports_shared_prefix(model)
        self._cache_kw = cache_kwarg(model) if self.shared_prefix else None

    def _generation_config(self):
        from transformers import GenerationConfig

        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.tok.eos_token_id
        kw: dict[str, Any] = dict(max_new_tokens=self.settings.max_new_tokens, pad_token_id=self.tok.pad_token_id,
                                  eos_token_id=eos, do_sample=not self.settings.greedy)
        if not self.settings.greedy:
            kw.update(temperature=self.settings.temperature, top_p=self.settings.top_p)
        return GenerationConfig(**kw)

    @torch.no_grad()
    def _run(self, texts: list[str], batch_no: int) -> list[str]:
        from fgsn.models.loading import input_device

        dev = input_device(self.model)
        ids = [self.tok(t, add_special_tokens=self.add_special_tokens)["input_ids"] for t in texts]
        k = shared_prefix_length(ids) if self.shared_prefix else 0
        if k >= MIN_SHARED_PREFIX:
            enc = self._prefixed(ids, k, dev)
        else:
            enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=self.add_special_tokens)
            enc = {k: v.to(dev) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        if not self.settings.greedy:
            torch.manual_seed(self.settings.seed + batch_no)
        out = self.model.generate(**enc, generation_config=self._generation_config())
        new = out[:, enc["input_ids"].shape[1]:]
        return [t.strip() for t in self.tok.batch_decode(new, skip_special_tokens=True)]

    def _prefixed(self, ids: list[list[int]], k: int, dev) -> dict[str, Any]:
        """generate()'s inputs with the rows' common first `k` tokens already in a cache: each row is
        prefix + padding + its own tokens, the cache holds the prefix's keys and values once per row."""
        n, width = len(ids), k + max(len(x) - k for x in ids)
        input_ids = torch.full((n, width), self.tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        input_ids[:, :k] = torch.tensor(ids[0][:k])
        mask[:, :k] = 1
        for i, x in enumerate(ids):
            input_ids[i, width - len(x) + k:] = torch.tensor(x[k:])
            mask[i, width - len(x) + k:] = 1
        out = self.model(input_ids=input_ids[:1, :k].to(dev), use_cache=True)
        cache = out.cache if "cache" in out else out.past_key_values
        cache.batch_repeat_interleave(n)
        return {"input_ids": input_ids.to(dev), "attention_mask": mask.to(dev), self._cache_kw: cache}

    def generate(self, texts: list[str], on_batch: OnBatch | None = None) -> list[str]:
        from tqdm.auto import tqdm

        results: list[str | None] = [None] * len(texts)
        lengths = [len(self.tok(t, add_special_tokens=self.add_special_tokens)["input_ids"]) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        pending = budget_batches(order, lengths, self.batch_size, self.max_batch_tokens)
        bar = tqdm(total=len(texts), desc=self.progress, unit="prompt", disable=self.progress is None,
                   leave=False)
        batch_no = 0
        while pending:
            idx = pending.pop(0)
            try:
                outs = self._run([texts[i] for i in idx], batch_no)
            except torch.cuda.OutOfMemoryError:
                if len(idx) == 1:
                    raise InputError("out of GPU memory generating a single prompt; lower --max-new-tokens, "
                                     "use --dtype bfloat16, or a bigger GPU") from None
                torch.cuda.empty_cache()
                half = len(idx) // 2
                log.warning("CUDA out of memory at batch size %d; retrying with %d", len(idx), half)
                self.batch_size = max(1, half)
                pending[:0] = [idx[:half], idx[half:]]
                continue
            batch_no += 1
            for i, o in zip(idx, outs, strict=True):
                results[i] = o
            if on_batch is not None:
                on_batch(idx, outs)
            bar.update(len(idx))
        bar.close()
        return [r if r is not None else "" for r in results]


class VLLMGenerator:
    """vLLM offline engine; imported only when asked for."""

    CHUNK = 256  # prompts per vLLM call, so the cache checkpoints long runs

    def __init__(self, path: str, settings: GenSettings, trust_remote_code: bool = False,
                 tensor_parallel: int | None = None):
        try:
            import vllm
        except ImportError:
            raise InputError("--backend vllm needs vLLM, which is not installed; run: pip install 'fgsn[vllm]' "
                             "(Linux with a CUDA GPU), or use the default --backend hf") from None
        self._vllm = vllm
        self.settings = settings
        if tensor_parallel is None:  # a 70B model needs several GPUs: use every visible one
            import torch

            tensor_parallel = max(1, torch.cuda.device_count())
        self.llm = vllm.LLM(model=str(path), dtype=settings.dtype, seed=settings.seed,
                            trust_remote_code=trust_remote_code, tensor_parallel_size=tensor_parallel)

    def generate(self, texts: list[str], on_batch: OnBatch | None = None) -> list[str]:
        params = self._vllm.SamplingParams(temperature=self.settings.temperature,
                                           top_p=self.settings.top_p if not self.settings.greedy else 1.0,
                                           max_tokens=self.settings.max_new_tokens, seed=self.settings.seed)
        results: list[str] = [""] * len(texts)
        for idx in _batches(list(range(len(texts))), self.CHUNK):
            outs = self.llm.generate([texts[i] for i in idx], params, use_tqdm=True)
            decoded = [o.outputs[0].text.strip() for o in outs]
            for i, o in zip(idx, decoded, strict=True):
                results[i] = o
            if on_batch is not None:
                on_batch(idx, decoded)
        return results

    def close(self) -> None:
        del self.llm
