"""Generation with the batch's shared prefix computed once: the same completions as plain
left-padded generation (float32, greedy and sampled), on the architectures fgsn supports."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fgsn.evaluate.generation import GenSettings, HFGenerator
from fgsn.models.shared_prefix import MIN_SHARED_PREFIX, shared_prefix_length, supports_shared_prefix

PROMPTS = ["how do i make a cake", "what is the capital of france", "hello",
           "write a poem about the ocean please and thanks", "explain black holes", "one plus two equals"]


@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=8), min_size=0, max_size=6))
def test_shared_prefix_length_is_the_longest_common_prefix_leaving_a_token(ids):
    k = shared_prefix_length(ids)
    if len(ids) < 2:
        assert k == 0
        return
    assert all(x[:k] == ids[0][:k] for x in ids) and all(len(x) > k for x in ids)
    longer = k + 1
    assert longer > min(len(x) for x in ids) - 1 or any(x[:longer] != ids[0][:longer] for x in ids)


def _generate(model, tok, shared: bool, temperature: float = 0.0, batch_size: int = 4) -> list[str]:
    settings = GenSettings("hf", "float32", 12, temperature, 0.9 if temperature else 1.0, 3, shared_prefix=shared)
    texts = [tok.apply_chat_template([{"role": "system", "content": "you are a helpful assistant ."},
                                      {"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in PROMPTS]
    return HFGenerator(model, tok, settings, batch_size=batch_size, progress=None).generate(texts)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
def test_shared_prefix_generation_equals_plain_generation(trio_factory, arch):
    from fgsn.models.loading import load_model

    model, tok = load_model(trio_factory(arch)["finetuned"], device="cpu", dtype="float32")
    assert supports_shared_prefix(model)
    plain = _generate(model, tok, shared=False)
    assert any(plain), "the tiny model generated nothing: the comparison would be empty"
    assert _generate(model, tok, shared=True) == plain
    assert _generate(model, tok, shared=True, temperature=0.8) == _generate(model, tok, shared=False, temperature=0.8)


def test_the_prefix_path_runs_and_skips_short_prefixes(llama_trio, monkeypatch):
    """The batches do take the prefix path (a system prompt longer than MIN_SHARED_PREFIX), and a
    batch without one goes the plain way."""
    from fgsn.models.loading import load_model

    model, tok = load_model(llama_trio["finetuned"], device="cpu", dtype="float32")
    gen = HFGenerator(model, tok, GenSettings("hf", "float32", 4, 0.0, 1.0, 0, shared_prefix=True), progress=None)
    calls, widths = [], []
    real = gen._prefixed
    monkeypatch.setattr(gen, "_prefixed", lambda ids, k, dev: calls.append(k) or real(ids, k, dev))
    hook = model.get_input_embeddings().register_forward_hook(lambda m, args, out: widths.append(args[0].shape))
    chat = [tok.apply_chat_template([{"role": "system", "content": "you are a helpful assistant ."},
                                     {"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in PROMPTS[:3]]
    gen.generate(chat)
    hook.remove()
    k = calls[0]
    longest = max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in chat)
    assert k >= MIN_SHARED_PREFIX
    # the prefix once (one row), then the rows from after it: the prefix is not run again per row
    assert widths[0] == (1, k) and widths[1] == (3, longest - k)
    calls.clear()
    gen.generate(PROMPTS[:3])  # raw prompts share no prefix
    assert calls == []


def test_the_cache_key_names_the_option_only_when_on():
    """The cache key names the option only when it is on (older cache entries keep their keys)."""
    assert "shared_prefix" not in GenSettings("hf", "float32", 4, 0.0, 1.0, 0).to_dict()
    assert GenSettings("hf", "float32", 4, 0.0, 1.0, 0, shared_prefix=True).to_dict()["shared_prefix"] is True


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
def test_grams_with_the_prefix_run_once_equal_the_plain_pass(trio_factory, arch):
    """accumulate_grams(shared_prefix=True) sums the same x xᵀ as the plain padded pass (itself
    tested against inputs captured one sequence at a time), token counts and `skip_first` (inside
    the prefix, at its end, past it) included; the prefix does run once per batch."""
    import torch

    from fgsn.locate.grams import accumulate_grams
    from fgsn.models.loading import load_model

    model, tok = load_model(trio_factory(arch)["finetuned"], device="cpu", dtype="float32")
    g = torch.Generator().manual_seed(5)
    head = torch.randint(4, len(tok), (10,), generator=g).tolist()
    seqs = [head + torch.randint(4, len(tok), (n,), generator=g).tolist() for n in (3, 9, 1, 12, 7, 4, 10)]
    layers = model.model.layers
    names = [n for n, p in model.named_parameters() if p.dim() == 2 and ".layers.2." not in n and "layers" in n]
    modules = {n: dict(model.named_modules())[n[: -len(".weight")]] for n in names}
    widths = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, o: widths.append(tuple(a[0].shape)))
    for skip in (None, [0, 5, 10, 12, 0, 3, 11]):
        kw = dict(layers=layers, stop_after_layer=1, batch_size=4, max_batch_tokens=256, skip_first=skip)
        plain = accumulate_grams(model, seqs, tok.pad_token_id, modules, **kw)
        widths.clear()
        once = accumulate_grams(model, seqs, tok.pad_token_id, modules, shared_prefix=True, **kw)
        assert widths[0] == (1, 10), widths  # the first batch's prefix, alone
        assert (once.n_tokens, once.n_sequences) == (plain.n_tokens, plain.n_sequences)
        assert once.alias == plain.alias
        for key, v in plain.sums.items():
            torch.testing.assert_close(once.sums[key], v, rtol=1e-5, atol=1e-5 * float(v.abs().max()))
    hook.remove()
