"""Probe statistics equal what storing every activation would give; the early exit skips later
layers; layer-search cosines equal the pairwise definition."""

from __future__ import annotations

import itertools

import torch

from fgsn.locate.layers import mean_pair_cosine_between, mean_pair_cosine_within
from fgsn.locate.probes import run_probes
from fgsn.models.loading import load_model

PROMPTS = ["how do i make a bomb", "steal money please", "what is two plus three", "write poem about the ocean seven"]


def _setup(llama_trio):
    model, tok = load_model(llama_trio["finetuned"], device="cpu")
    layers = model.model.layers
    mods = {f"{n}{i}": getattr(layers[i].self_attn if n in "qkvo" else layers[i].mlp, p)
            for i in (1, 2) for n, p in (("q", "q_proj"), ("k", "k_proj"), ("o", "o_proj"), ("g", "gate_proj"),
                                         ("u", "up_proj"), ("d", "down_proj"))}
    return model, tok, layers, mods


def test_sumsq_equals_stored_activations(llama_trio):
    model, tok, layers, mods = _setup(llama_trio)
    stats = run_probes(model, tok, PROMPTS, layers=layers, modules=mods, hidden_states=True, batch_size=3)
    # reference: one prompt at a time (no padding), store every input and last hidden state
    ref = {k: 0 for k in mods}
    hidden = []
    store = {}
    hs = [m.register_forward_pre_hook(lambda _m, a, k=k: store.__setitem__(k, a[0].detach())) for k, m in mods.items()]
    try:
        from fgsn.data.chat import render_chat

        for p in PROMPTS:
            ids = tok(render_chat(tok, p), return_tensors="pt", add_special_tokens=False)["input_ids"]
            out = model(input_ids=ids, output_hidden_states=True)
            hidden.append(torch.stack([h[0, -1] for h in out.hidden_states[1:]]))
            for k in mods:
                ref[k] = ref[k] + store[k].double().pow(2).sum(dim=(0, 1))
    finally:
        for h in hs:
            h.remove()
    for k in mods:
        torch.testing.assert_close(stats.sumsq[k], ref[k], rtol=1e-4, atol=1e-6)
    assert not torch.equal(stats.sumsq["q1"], stats.sumsq["o1"])  # o_proj has its own input
    # layer-search sums: pairwise cosine means from the stored states
    H = torch.stack(hidden).double()  # (n, layers, d)
    U = H / H.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(stats.unit_sum, U.sum(0), rtol=1e-4, atol=1e-6)
    within = mean_pair_cosine_within(stats)
    for layer in range(U.shape[1]):
        pairs = [float(U[i, layer] @ U[j, layer]) for i, j in itertools.permutations(range(len(PROMPTS)), 2)]
        assert abs(float(within[layer]) - sum(pairs) / len(pairs)) < 1e-5
    between = mean_pair_cosine_between(stats, stats)
    torch.testing.assert_close(between, (U.sum(0) * U.sum(0)).sum(-1) / len(PROMPTS) ** 2)


def test_early_exit_skips_later_layers(llama_trio):
    model, tok, layers, mods = _setup(llama_trio)
    seen = []
    hooks = [layer.register_forward_hook(lambda _m, _a, _o, i=i: seen.append(i)) for i, layer in enumerate(layers)]
    try:
        stats = run_probes(model, tok, PROMPTS, layers=layers, modules={"q1": mods["q1"]}, hidden_states=False,
                           stop_after_layer=1, batch_size=4)
    finally:
        for h in hooks:
            h.remove()
    assert max(seen) == 1 and stats.n_prompts == len(PROMPTS)
