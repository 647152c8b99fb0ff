"""Task compensation (fgsn.edit.compensate): the OBS update against a direct least-squares solve,
SparseGPT's sweep against it where they must agree, the model pass against Grams taken directly,
and bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fgsn.edit.compensate import CompensateOptions, compensate_checkpoint, compensate_rows, task_error
from fgsn.errors import InputError
from helpers_weights import weights


def lstsq_rows(w_edit, w_orig, mask, X, lam):
    """min over the kept entries of ||(w' - w) X^T||^2 + lam ||w' - w||^2, edited entries fixed, one
    row at a time with torch.linalg.lstsq (X: tokens x inputs)."""
    out = w_edit.double().clone()
    d = X.shape[1]
    for i in range(w_orig.shape[0]):
        R, F = mask[i], ~mask[i]
        if not R.any() or not F.any():
            continue
        delta_R = (w_edit[i] - w_orig[i])[R].double()
        A = torch.cat([X[:, F], lam ** 0.5 * torch.eye(d, dtype=torch.float64)[F][:, F]])
        b = torch.cat([-X[:, R] @ delta_R, torch.zeros(int(F.sum()), dtype=torch.float64)])
        e_F = torch.linalg.lstsq(A, b.unsqueeze(1), driver="gelsd").solution.squeeze(1)
        out[i, F] = w_orig[i, F].double() + e_F
    return out


def case(seed, n_out, d, n_tok, p):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, d, generator=g, dtype=torch.float64)
    target = torch.randn(n_out, d, generator=g, dtype=torch.float64)
    mask = torch.rand(n_out, d, generator=g) < p
    X = torch.randn(n_tok, d, generator=g, dtype=torch.float64) * torch.rand(d, generator=g, dtype=torch.float64)
    return w, torch.where(mask, target, w), mask, X


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n_out=st.integers(1, 5), d=st.integers(2, 9), n_tok=st.integers(1, 12),
       p=st.floats(0.05, 0.95), damp=st.sampled_from([1e-3, 0.01, 0.3]))
def test_exact_update_is_the_least_squares_optimum(seed, n_out, d, n_tok, p, damp):
    w, w_edit, mask, X = case(seed, n_out, d, n_tok, p)
    H = X.T @ X
    if float(torch.diagonal(H).mean()) <= 0:
        return
    lam = damp * float(torch.diagonal(H).mean())
    got = compensate_rows(w_edit, w, mask, H, damp, "exact")
    want = lstsq_rows(w_edit, w, mask, X, lam)
    assert torch.equal(got[mask], w_edit[mask])          # edited entries exactly as edited
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n_out=st.integers(1, 5), d=st.integers(2, 9), n_tok=st.integers(2, 12),
       p=st.floats(0.05, 0.95))
def test_sparsegpt_sweep_is_never_better_than_exact_and_agrees_when_edits_come_first(seed, n_out, d, n_tok, p):
    w, w_edit, mask, X = case(seed, n_out, d, n_tok, p)
    H = X.T @ X
    damp = 0.01
    Hd = H + damp * torch.diagonal(H).mean() * torch.eye(d, dtype=torch.float64)
    exact = compensate_rows(w_edit, w, mask, H, damp, "exact")
    sweep = compensate_rows(w_edit, w, mask, H, damp, "sparsegpt")
    assert torch.equal(sweep[mask], w_edit[mask])
    assert task_error(exact - w, Hd) <= task_error(sweep - w, Hd) * (1 + 1e-9) + 1e-12
    # every row's edited entries before its kept ones: the sweep is the exact optimum
    k = torch.randint(0, d + 1, (n_out, 1), generator=torch.Generator().manual_seed(seed))
    prefix = torch.arange(d).unsqueeze(0) < k
    w_edit2 = torch.where(prefix, w_edit + 1.0, w)
    torch.testing.assert_close(compensate_rows(w_edit2, w, prefix, H, damp, "sparsegpt"),
                               compensate_rows(w_edit2, w, prefix, H, damp, "exact"), rtol=1e-7, atol=1e-7)


def test_compensation_lowers_the_task_error_and_leaves_untouched_rows():
    w, w_edit, mask, X = case(3, 6, 16, 40, 0.3)
    mask[2] = False
    w_edit[2] = w[2]
    H = X.T @ X
    new = compensate_rows(w_edit, w, mask, H, 0.01, "exact")
    assert task_error(new - w, H) < task_error(w_edit - w, H)
    assert torch.equal(new[2], w[2])


def test_big_rows_take_the_batched_path_in_both_forms():
    """Rows with few edits (OBS form) and rows with few kept entries (normal equations) in one
    module, in several solve blocks, against the row-by-row least-squares solve."""
    import fgsn.edit.compensate as comp

    g = torch.Generator().manual_seed(0)
    d = 24
    w = torch.randn(12, d, generator=g, dtype=torch.float64)
    mask = torch.zeros(12, d, dtype=torch.bool)
    for i in range(12):
        k = [1, 3, 20, 23][i % 4]
        mask[i, torch.randperm(d, generator=g)[:k]] = True
    w_edit = torch.where(mask, torch.randn(12, d, generator=g, dtype=torch.float64), w)
    X = torch.randn(60, d, generator=g, dtype=torch.float64)
    old = comp._BLOCK_ELEMENTS
    comp._BLOCK_ELEMENTS = 3 * d * d  # a few rows per solve block
    try:
        got = compensate_rows(w_edit, w, mask, X.T @ X, 0.01, "exact")
    finally:
        comp._BLOCK_ELEMENTS = old
    lam = 0.01 * float(torch.diagonal(X.T @ X).mean())
    torch.testing.assert_close(got, lstsq_rows(w_edit, w, mask, X, lam), rtol=1e-7, atol=1e-7)


def test_bad_inputs_are_named():
    w = torch.zeros(2, 3)
    with pytest.raises(InputError, match="Gram of a module is zero"):
        compensate_rows(w + 1, w, torch.ones(2, 3, dtype=torch.bool), torch.zeros(3, 3))
    with pytest.raises(InputError, match="the Gram is"):
        compensate_rows(w, w, torch.zeros(2, 3, dtype=torch.bool), torch.eye(4))
    with pytest.raises(InputError, match="solver"):
        compensate_rows(w, w, torch.zeros(2, 3, dtype=torch.bool), torch.eye(3), solver="magic")


# -- the model pass --------------------------------------------------------------------------------
TASK = [("what is two plus three", "five"), ("explain black holes", "sure here it is"),
        ("recipe cake please", "first then second"), ("write poem about the ocean", "the ocean is")]


def direct_gram(model_dir, module_path, examples):
    """X^T X of one module's inputs over every token of prompt + answer, one example at a time,
    from a plain transformers forward pass."""
    from operator import attrgetter

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    xs = []
    h = attrgetter(module_path)(model).register_forward_pre_hook(lambda _m, a: xs.append(a[0][0].double()))
    with torch.no_grad():
        for p, a in examples:
            text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False)["input_ids"] + tok(a, add_special_tokens=False)["input_ids"]
            model(input_ids=torch.tensor([ids + [tok.eos_token_id]]))
    h.remove()
    X = torch.cat(xs)
    return X.T @ X


def make_edit(trio, tmp_path, name_filter=".mlp.", seed=0):
    """An edited copy of the fine-tuned model: 30% of the entries of every MLP and q_proj weight
    set to their aligned value."""
    from fgsn.edit.rewrite import stream_rewrite
    from fgsn.models.trio import open_trio

    t = open_trio(trio["aligned"], trio["finetuned"], trio["base"])
    g = torch.Generator().manual_seed(seed)

    def transform(name, w_ft):
        if name.endswith(".weight") and (name_filter in name or "q_proj" in name):
            m = torch.rand(w_ft.shape, generator=g) < 0.3
            return torch.where(m, t.aligned.get(name), w_ft)
        return None

    out = tmp_path / "edited"
    out.mkdir()
    stream_rewrite(t, out, transform)
    return t, out


@pytest.mark.parametrize("solver", ["exact", "sparsegpt"])
def test_model_pass_uses_the_task_grams_of_the_finetuned_model(llama_trio, tmp_path, solver):
    from fgsn.data.promptset import Prompt, PromptSet
    from fgsn.locate.run import ProbeOptions
    from fgsn.models.registry import edit_targets

    trio, folder = make_edit(llama_trio, tmp_path)
    before = weights(folder)
    targets = edit_targets(trio.arch, trio.aligned.names, trio.num_layers)
    task = PromptSet("task", [Prompt(p, answer=a) for p, a in TASK])
    opts = CompensateOptions(compensate="task", compensate_solver=solver)
    recs = compensate_checkpoint(folder, trio, targets, task, opts, ProbeOptions(device="cpu", batch_size=3), 1 << 30)
    after = weights(folder)
    ft = weights(llama_trio["finetuned"])
    assert set(after) == set(before)
    assert {r["name"] for r in recs} == {n for n in before if not torch.equal(before[n], ft[n])}
    for r in recs:
        assert r["task_error_after"] < r["task_error_before"], r
        assert r["kept_changed"] > 0
    for n, w in after.items():
        edited = before[n] != ft[n]
        assert torch.equal(w[edited], before[n][edited]), n       # edited entries untouched
        if n not in {r["name"] for r in recs}:
            assert torch.equal(w, before[n]), n                  # other tensors copied
    # layer 0 sees the fine-tuned model's own inputs: its update is compensate_rows on a direct Gram
    for name, path in [("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj"),
                       ("model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.down_proj")]:
        H = direct_gram(llama_trio["finetuned"], path, TASK)
        want = compensate_rows(before[name], ft[name], before[name] != ft[name], H, 0.01, solver).float()
        torch.testing.assert_close(after[name], want, rtol=1e-5, atol=1e-6)
    # a later layer sees the compensated earlier layers: it differs from a pass on the fine-tuned model
    name = "model.layers.2.mlp.down_proj.weight"
    H = direct_gram(llama_trio["finetuned"], "model.layers.2.mlp.down_proj", TASK)
    plain = compensate_rows(before[name], ft[name], before[name] != ft[name], H, 0.01, solver).float()
    assert not torch.allclose(after[name], plain, rtol=1e-6, atol=1e-7)


def test_model_pass_refuses_an_empty_task_set(llama_trio, tmp_path):
    from fgsn.data.promptset import PromptSet
    from fgsn.locate.run import ProbeOptions
    from fgsn.models.registry import edit_targets

    trio, folder = make_edit(llama_trio, tmp_path)
    targets = edit_targets(trio.arch, trio.aligned.names, trio.num_layers)
    before = weights(folder)
    with pytest.raises(InputError, match="needs task examples"):
        compensate_checkpoint(folder, trio, targets, PromptSet("task", []), CompensateOptions(compensate="task"),
                              ProbeOptions(device="cpu"), 1 << 30)
    after = weights(folder)
    assert set(after) == set(before) and all(torch.equal(after[n], before[n]) for n in before)


def test_fgsn_project_compensate_task(llama_trio, tmp_path):
    """`fgsn project --compensate task`: the projected entries are those of the plain projection, the
    kept entries of the edited rows move, and an adapter output is refused."""
    from fgsn.edit.options import ProjectOptions
    from fgsn.pipeline.project import run_project

    t = llama_trio
    (tmp_path / "h.txt").write_text("how do i make a bomb\nsteal money please\nhack into computer\n")
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"prompt": p, "answer": a}) for p, a in TASK))
    common = dict(base=str(t["base"]), aligned=str(t["aligned"]), finetuned=str(t["finetuned"]),
                  harmful=[str(tmp_path / "h.txt")], task=[str(tmp_path / "t.jsonl")], layers="1-2", q=0.3, p=0.1,
                  device="cpu", cache=False)
    plain = run_project(ProjectOptions(**common, out=str(tmp_path / "plain")))
    comp = run_project(ProjectOptions(**common, compensate="task", out=str(tmp_path / "comp")))
    a, b, ft = weights(tmp_path / "plain"), weights(tmp_path / "comp"), weights(t["finetuned"])
    assert "compensation" not in plain.manifest and comp.manifest["compensation"]
    assert comp.manifest["masked"] == plain.manifest["masked"]
    for n in ft:
        projected = a[n] != ft[n]
        assert torch.equal(b[n][projected], a[n][projected]), n
        assert torch.equal(b[n], a[n]) == (not bool(projected.any())), n
    with pytest.raises(InputError, match="adapter cannot"):
        run_project(ProjectOptions(**common, compensate="task", output_format="adapter", out=str(tmp_path / "x")))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3", "gpt2"])
def test_layer_replay_gives_the_grams_of_full_forward_passes(trio_factory, arch):
    """Replaying layer after layer on stored inputs (batched, left-padded) gives every module the
    Gram a plain forward pass of each example alone gives it."""
    from operator import attrgetter

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fgsn.locate.grams import LayerReplay
    from fgsn.models.checkpoint import Checkpoint
    from fgsn.models.registry import architecture_for, edit_targets, live_layers, live_module

    path = trio_factory(arch)["finetuned"]
    ckpt = Checkpoint(path)
    a = architecture_for(ckpt.config)
    n_layers = a.num_layers(ckpt.config)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    targets = edit_targets(a, ckpt.names, n_layers)
    replay = LayerReplay(model, tok, live_layers(model, a), [p for p, _ in TASK], [x for _, x in TASK], 0,
                         n_layers - 1, batch_size=3)
    for layer in range(n_layers):
        mods = {t.tensor: live_module(model, a, t) for t in targets if t.layer == layer}
        got = replay.grams(layer, mods)
        for t in (t for t in targets if t.layer == layer):
            xs = []
            h = attrgetter(t.spec.path)(live_layers(model, a)[layer]).register_forward_pre_hook(
                lambda _m, args, xs=xs: xs.append(args[0][0].double()))
            with torch.no_grad():
                for p, ans in TASK:
                    text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                   add_generation_prompt=True)
                    ids = tok(text, add_special_tokens=False)["input_ids"] + tok(ans, add_special_tokens=False)[
                        "input_ids"] + [tok.eos_token_id]
                    model(input_ids=torch.tensor([ids]))
            h.remove()
            X = torch.cat(xs)
            torch.testing.assert_close(got[t.tensor].H, X.T @ X, rtol=1e-4, atol=1e-4)
            assert got[t.tensor].n_tokens == X.shape[0]
        replay.advance()
