"""The projection equals the dense textbook formula (method.md steps 3-4), for both projectors,
both granularities, full and LoRA updates; only masked entries change."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fgsn.direction import Projector, dense_matrix
from fgsn.edit.projection import ProjectionSettings, project_tensor
from fgsn.locate.masks import safety_mask, top_fraction
from fgsn.models.lora import LoraFactors

shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))


def _rand(shape, seed, scale=1.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


@settings(max_examples=60, deadline=None)
@given(shape=shapes, m=st.integers(1, 9), seed=st.integers(0, 10_000), kind=st.sampled_from(["safelora", "svd"]),
       rank=st.one_of(st.none(), st.integers(1, 6)))
def test_projector_matches_dense(shape, m, seed, kind, rank):
    V = _rand(shape, seed)
    Y = _rand((shape[0], m), seed + 1)
    P = Projector(kind, V, rank=rank, energy=0.9)
    dense = dense_matrix(kind, V, rank=rank, energy=0.9)
    torch.testing.assert_close(P.apply(Y), dense @ Y, rtol=1e-4, atol=1e-4)
    rows = torch.arange(0, shape[0], 2)
    torch.testing.assert_close(P.apply(Y, rows=rows), (dense @ Y)[rows], rtol=1e-4, atol=1e-4)


def test_projector_blocks_match_dense(monkeypatch):
    """The blocked code paths (row blocks and column blocks) agree with the dense product."""
    import fgsn.direction as pj

    monkeypatch.setattr(pj, "BLOCK_ELEMS", 16)
    for shape in [(6, 20), (20, 6)]:
        V, Y = _rand(shape, 1), _rand((shape[0], 9), 2)
        torch.testing.assert_close(Projector("safelora", V).apply(Y), dense_matrix("safelora", V) @ Y,
                                   rtol=1e-4, atol=1e-4)


def test_svd_projector_is_idempotent_and_safelora_is_not():
    V = _rand((8, 5), 3)
    P = dense_matrix("svd", V, energy=1.0)
    torch.testing.assert_close(P @ P, P, rtol=1e-4, atol=1e-4)
    C = dense_matrix("safelora", V)
    assert not torch.allclose(C @ C, C, atol=1e-3)


def test_zero_direction_resets_masked_update():
    P = Projector("safelora", torch.zeros(4, 3))
    assert P.is_zero
    assert torch.equal(P.apply(torch.ones(4, 3)), torch.zeros(4, 3))


@settings(max_examples=50, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), kind=st.sampled_from(["safelora", "svd"]),
       gran=st.sampled_from(["weight", "neuron"]), lora=st.booleans(), q=st.floats(0.0, 1.0), p=st.floats(0.0, 1.0))
def test_sparse_projection_matches_textbook(shape, seed, kind, gran, lora, q, p):
    out_dim, in_dim = shape
    base = _rand(shape, seed)
    aligned = base + _rand(shape, seed + 1, 0.3)
    if lora:
        r = 2
        factors = LoraFactors(_rand((out_dim, r), seed + 2, 0.5), _rand((r, in_dim), seed + 3, 0.5))
        delta = factors.delta()
        finetuned = aligned + delta
    else:
        factors = None
        finetuned = aligned + _rand(shape, seed + 2, 0.2)
        delta = finetuned - aligned
    mask = safety_mask(_rand(shape, seed + 4).abs(), _rand(shape, seed + 5).abs(), q, p, gran)
    out, edit = project_tensor("w", 0, "m", w_aligned=aligned, w_finetuned=finetuned, w_base=base, mask=mask,
                               parts=[("m", out_dim)], settings=ProjectionSettings(kind, energy=0.9),
                               factors=factors)
    C = dense_matrix(kind, aligned - base, energy=0.9)
    expected = aligned + torch.where(mask, C @ delta, delta)
    torch.testing.assert_close(out[mask], expected[mask], rtol=1e-4, atol=1e-4)
    # outside the mask: the fine-tuned value, bit for bit
    assert torch.equal(out[~mask], finetuned[~mask])
    assert edit.masked == int(mask.sum())
    if lora and gran == "neuron" and edit.masked:
        assert edit.new_B is not None
        torch.testing.assert_close(aligned + edit.new_B @ factors.A, torch.where(mask, out, aligned + delta),
                                   rtol=1e-4, atol=1e-4)


def test_fused_parts_use_their_own_direction():
    """A fused qkv weight is projected block by block, each with its own V."""
    base, aligned = _rand((6, 4), 1), _rand((6, 4), 2)
    ft = aligned + _rand((6, 4), 3, 0.1)
    mask = torch.ones(6, 4, dtype=torch.bool)
    out, _ = project_tensor("w", 0, "qkv", w_aligned=aligned, w_finetuned=ft, w_base=base, mask=mask,
                            parts=[("q", 2), ("k", 2), ("v", 2)], settings=ProjectionSettings("safelora"))
    V, d = aligned - base, ft - aligned
    for r in (0, 2, 4):
        C = dense_matrix("safelora", V[r:r + 2])
        torch.testing.assert_close(out[r:r + 2], aligned[r:r + 2] + C @ d[r:r + 2], rtol=1e-4, atol=1e-4)


@given(n=st.integers(1, 200), frac=st.floats(0, 1), seed=st.integers(0, 100))
def test_top_fraction_selects_exact_count_of_largest(n, frac, seed):
    s = _rand((n,), seed)
    m = top_fraction(s, frac)
    k = round(frac * n)
    assert int(m.sum()) == k
    if 0 < k < n:
        assert s[m].min() >= s[~m].max()


def test_neuron_granularity_selects_whole_rows():
    h, t = _rand((10, 7), 1).abs(), _rand((10, 7), 2).abs()
    m = safety_mask(h, t, 0.5, 0.2, "neuron")
    assert all(bool(row.all()) or not bool(row.any()) for row in m)


@given(shape=shapes, budget=st.floats(0, 1), p=st.floats(0, 1), seed=st.integers(0, 1000),
       gran=st.sampled_from(["weight", "neuron"]))
def test_budget_mask_has_exact_size_and_avoids_task_top_p(shape, budget, p, seed, gran):
    h, t = _rand(shape, seed).abs(), _rand(shape, seed + 1).abs()
    m = safety_mask(h, t, 0.0, p, gran, budget=budget)
    units = m if gran == "weight" else m[:, 0]
    n = units.numel()
    excluded = top_fraction(t if gran == "weight" else t.sum(1), p)
    assert not (units & excluded).any()
    assert int(units.sum()) == min(round(budget * n), int((~excluded).sum()))


def test_snip_signed_keeps_only_reverts_that_help():
    from fgsn.locate.scores import ScoreInputs, score_pair

    delta = torch.tensor([[1.0, -1.0], [2.0, 0.5]])
    g_h = torch.tensor([[1.0, 1.0], [-1.0, 2.0]])  # reverting entry ij changes the loss by -g*dW
    g_t = torch.tensor([[1.0, -3.0], [0.0, -1.0]])
    s = ScoreInputs("w", delta, delta, lambda y: y, grads={"harmful": g_h, "task": g_t})
    h, t = score_pair("snip-signed", s)
    assert torch.equal(h, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert torch.equal(t, torch.tensor([[0.0, 0.0], [0.0, 0.5]]))
    h_abs, _ = score_pair("snip", s)
    assert torch.equal(h_abs, (delta * g_h).abs())
