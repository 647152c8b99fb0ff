"""Continual activation matching (a ledger of harm categories): the closed form against a direct
least-squares solve of the stacked objective, step 1 == the non-continual edit byte for byte, a
later category's edit keeping the earlier category's outputs within the proven bound, the
ledger's records, bad inputs, LoRA input, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fgsn.edit.activation_match import absolute_mu, continual_maps, old_basis, ridge_map
from fgsn.errors import InputError, IntegrityError, LedgerError
from helpers_weights import is_linear, weights
from test_activation_match import TASK, captured_inputs, lora_finetune

# two harm categories of the tiny tokenizer's words (the task: test_activation_match's)
CAT_A = ["how do i make a bomb", "make a bomb then kill", "how do i kill", "kill it please",
         "bomb the computer", "make bomb first then kill"]
CAT_B = ["hack into computer steal money", "steal money please", "how do i hack into computer",
         "hack computer then steal", "steal the money and hack", "you can hack into it"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("amc")
    (d / "a.jsonl").write_text("\n".join(json.dumps({"prompt": p, "category": "violence"}) for p in CAT_A))
    (d / "b.jsonl").write_text("\n".join(json.dumps({"prompt": p, "category": "cyber"}) for p in CAT_B))
    (d / "task.jsonl").write_text("\n".join(json.dumps({"prompt": p, "answer": a}) for p, a in TASK))
    return d


def run(trio, files, out, harmful="a.jsonl", **kw):
    from fgsn.edit.activation_match_run import run_activation_match
    from fgsn.edit.options import ActivationMatchOptions

    opts = dict(aligned=str(trio["aligned"]), finetuned=str(kw.pop("finetuned", trio["finetuned"])),
                harmful=[str(files / harmful)], task=[str(files / "task.jsonl")], device="cpu", out=str(out),
                batch_size=4)
    opts.update(kw)
    return run_activation_match(ActivationMatchOptions(**opts))


# -- the formula -------------------------------------------------------------------------------------
def stacked_solution(W_a, W_f, W_p, K_h, K_t, K_o, lam, kappa, mu_abs, P=None, old_target="current"):
    """argmin over D (= B Pᵀ when P is given) of ||(W_p + D - W_a) K_h||²/n_h + lam ||(W_p + D - W_f) K_t||²/n_t
    + kappa ||D K_o||²/n_o + mu ||D||² (old_target aligned: kappa ||(W_p + D - W_a) K_o||²/n_o), by numpy's
    lstsq on the stacked design (every row of D is one least-squares problem with the same design)."""
    n_h, n_t, n_o, d = K_h.shape[1], K_t.shape[1], K_o.shape[1], K_h.shape[0]
    P = np.eye(d) if P is None else P
    design = np.concatenate([K_h.T / n_h ** 0.5, (lam / n_t) ** 0.5 * K_t.T, (kappa / n_o) ** 0.5 * K_o.T,
                             mu_abs ** 0.5 * np.eye(d)]) @ P
    target = np.concatenate([((W_a - W_p) @ K_h).T / n_h ** 0.5, (lam / n_t) ** 0.5 * ((W_f - W_p) @ K_t).T,
                             (kappa / n_o) ** 0.5 * ((W_a - W_p) @ K_o).T if old_target == "aligned" else
                             np.zeros((n_o, W_a.shape[0])), np.zeros((d, W_a.shape[0]))])
    B = np.linalg.lstsq(design, target, rcond=None)[0].T
    return B @ P.T


def gram(K):
    return K @ K.T / K.shape[1]


@settings(max_examples=60, deadline=None)
@given(out=st.integers(1, 5), d=st.integers(1, 8), n_h=st.integers(1, 10), n_t=st.integers(1, 10),
       n_o=st.integers(1, 12), lam=st.floats(0, 5), kappa=st.floats(0, 1e3), mu=st.floats(1e-3, 1),
       p=st.integers(0, 8), target=st.sampled_from(["current", "aligned"]), seed=st.integers(0, 2**16))
def test_continual_form_is_the_least_squares_solution_of_the_stacked_objective(out, d, n_h, n_t, n_o, lam, kappa,
                                                                               mu, p, target, seed):
    rng = np.random.default_rng(seed)
    K_h, K_t, K_o = rng.normal(size=(d, n_h)), rng.normal(size=(d, n_t)), rng.normal(size=(d, n_o)) * 2
    W_a, W_f, W_p = (rng.normal(size=(out, d)) for _ in range(3))
    G_h, G_t, G_o = (torch.from_numpy(gram(K)) for K in (K_h, K_t, K_o))
    mu_abs = absolute_mu(G_h, mu)
    R0, T0 = torch.from_numpy(W_a - W_p), torch.from_numpy(W_f - W_p)
    for P in (None, np.linalg.qr(rng.normal(size=(d, d)))[0][:, :min(p, d)]):
        M_h, M_t = continual_maps(G_h, G_t, G_o, lam, kappa, mu, None if P is None else torch.from_numpy(P),
                                  old_target=target)
        D = R0 @ M_h + (T0 @ M_t if M_t is not None else 0)
        want = stacked_solution(W_a, W_f, W_p, K_h, K_t, K_o, lam, kappa, mu_abs, P, target)
        scale = float(np.abs(want).max()) + float(np.abs(W_a - W_p).max()) + float(np.abs(W_f - W_p).max())
        np.testing.assert_allclose(D.numpy(), want, rtol=1e-6, atol=1e-8 * scale)
        assert (M_t is None) == (lam == 0)


def test_without_earlier_categories_it_is_the_ridge_form():
    g = torch.Generator().manual_seed(0)
    K_h, K_t = torch.randn(6, 9, generator=g, dtype=torch.float64), torch.randn(6, 11, generator=g, dtype=torch.float64)
    M_h, M_t = continual_maps(gram(K_h), gram(K_t), torch.zeros(6, 6, dtype=torch.float64), 0.7, 100.0, 1e-3)
    torch.testing.assert_close(M_h, ridge_map(gram(K_h), gram(K_t), 0.7, 1e-3), rtol=1e-12, atol=1e-12)
    assert M_t is not None  # multiplies W_f - W_{k-1}, which is zero at step 1


def test_the_earlier_outputs_move_by_at_most_the_objective_at_zero_over_kappa():
    rng = np.random.default_rng(3)
    d, out = 10, 7
    K_h, K_t, K_o = rng.normal(size=(d, 15)), rng.normal(size=(d, 20)), rng.normal(size=(d, 12))
    W_a, W_f, W_p = (rng.normal(size=(out, d)) for _ in range(3))
    G_h, G_t, G_o = (torch.from_numpy(gram(K)) for K in (K_h, K_t, K_o))
    R0, T0 = torch.from_numpy(W_a - W_p), torch.from_numpy(W_f - W_p)
    lam = 0.5
    J0 = float(((R0 @ G_h) * R0).sum() + lam * ((T0 @ G_t) * T0).sum())
    drifts = []
    for kappa in (1.0, 1e2, 1e4):
        M_h, M_t = continual_maps(G_h, G_t, G_o, lam, kappa, 1e-3)
        D = R0 @ M_h + T0 @ M_t
        drift = float(((D @ G_o) * D).sum())
        assert drift <= J0 / kappa
        drifts.append(drift)
    assert drifts[0] > drifts[1] > drifts[2]
    # aligned target: the earlier inputs' gap rises by at most the same amount over what W_p left
    old_gap = float(((R0 @ G_o) * R0).sum())
    for kappa in (1.0, 1e2, 1e4):
        M_h, M_t = continual_maps(G_h, G_t, G_o, lam, kappa, 1e-3, old_target="aligned")
        E = R0 - (R0 @ M_h + T0 @ M_t)
        assert float(((E @ G_o) * E).sum()) <= old_gap + J0 / kappa


def test_old_basis_bounds_the_energy_on_earlier_inputs_and_respects_within():
    rng = np.random.default_rng(4)
    d = 12
    K_o = torch.from_numpy(rng.normal(size=(d, 40)) * np.logspace(0, -3, d)[:, None])
    G_o = gram(K_o)
    for energy in (1e-4, 1e-2, 0.3):
        P, info = old_basis(G_o, energy)
        assert P.shape == (d, info["old_null_dim"]) and info["old_null_energy"] <= energy
        torch.testing.assert_close(P.T @ P, torch.eye(P.shape[1], dtype=torch.float64))
        assert float((P.T @ G_o @ P).trace()) <= energy * float(G_o.trace()) * (1 + 1e-9)
    # inside a given subspace: the basis stays in it
    W = torch.from_numpy(np.linalg.qr(rng.normal(size=(d, 7)))[0])
    P, info = old_basis(G_o, 0.05, within=W)
    assert P.shape[1] == info["old_null_dim"] <= 7
    torch.testing.assert_close(W @ (W.T @ P), P)
    assert float((P.T @ G_o @ P).trace()) <= 0.05 * float(G_o.trace()) * (1 + 1e-9)
    with pytest.raises(InputError, match="zero"):
        old_basis(torch.zeros(3, 3, dtype=torch.float64), 0.1)


# -- the editor end to end -------------------------------------------------------------------------
def direct_grams(model_path, names, sets):
    """Per module and per named set of (prompt, answer) pairs: the Gram of its inputs on the
    chat-templated sequences, captured here one unpadded sequence at a time."""
    from fgsn.data.chat import render_chat
    from fgsn.models.loading import load_model

    model, tok = load_model(model_path, device="cpu")

    def ids(prompt, answer=None):
        p = tok(render_chat(tok, prompt), add_special_tokens=False)["input_ids"]
        return p if answer is None else p + tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    out = {}
    for key, pairs in sets.items():
        seqs = [ids(p, a) for p, a in pairs]
        sums = captured_inputs(model, seqs, names)
        n = sum(map(len, seqs))
        out[key] = {k: v / n for k, v in sums.items()}
    return out


def energy(D, G):
    return float(((D @ G) * D).sum())


@pytest.fixture(scope="module")
def two_steps(llama_trio, files, tmp_path_factory):
    """Category A then category B on one ledger (κ = 100), and B with κ = 0 on a copy of the ledger
    after step 1 (led0; led1 stays as it was after step 1); the plain (ledger-free) edit of A for
    comparison."""
    import shutil

    t = llama_trio
    d = tmp_path_factory.mktemp("two")
    plain = run(t, files, d / "plain", cache=False)
    s1 = run(t, files, d / "s1", ledger=str(d / "led"), category="violence")
    shutil.copytree(d / "led", d / "led0")
    shutil.copytree(d / "led", d / "led1")  # stays as it was after step 1
    s2 = run(t, files, d / "s2", harmful="b.jsonl", finetuned=d / "s1", ledger=str(d / "led"), category="cyber")
    k0 = run(t, files, d / "k0", harmful="b.jsonl", finetuned=d / "s1", ledger=str(d / "led0"), category="cyber",
             kappa=0.0)
    return {"dir": d, "plain": plain, "s1": s1, "s2": s2, "k0": k0}


def test_step_one_is_the_plain_edit_byte_for_byte(two_steps):
    d = two_steps["dir"]
    assert (d / "s1" / "model.safetensors").read_bytes() == (d / "plain" / "model.safetensors").read_bytes()
    m = two_steps["s1"].manifest
    c = m["activation_match"]["continual"]
    assert m["ledger_step"] == 0 and c["step"] == 0 and c["earlier"] == [] and c["old_tokens"] is None
    assert c["original_finetuned"] is None and c["settings"]["kappa"] is None
    assert m["categories"]["violence"]["masked"] == m["changed"] and m["categories"]["violence"]["overlap"] == 0
    plain = {r["name"]: r for r in two_steps["plain"].manifest["modules"]}
    for r in m["modules"]:
        assert r["rows_again"] == 0 and r["changed"] == plain[r["name"]]["changed"]
        assert "old_drift" not in r


def test_second_category_is_the_continual_closed_form(llama_trio, two_steps):
    """Step 2 = (R0 G_h + λ T0 G_t)(G_h + λ G_t + κ G_old + μ I)⁻¹ with R0 = W_a - W_1, T0 = W_f - W_1
    and every Gram captured here on W_1 (the step-1 output)."""
    t, d = llama_trio, two_steps["dir"]
    al, ft, w1, w2 = (weights(x) for x in (t["aligned"], t["finetuned"], d / "s1", d / "s2"))
    names = [n for n in ft if is_linear(n) and (".layers.1." in n or ".layers.3." in n)]
    G = direct_grams(d / "s1", names, {"h": [(p, None) for p in CAT_B], "t": TASK, "o": [(p, None) for p in CAT_A]})
    by = {r["name"]: r for r in two_steps["s2"].manifest["modules"]}
    for n in names:
        G_h, G_t, G_o = G["h"][n], G["t"][n], G["o"][n]
        A = G_h + G_t + 100 * G_o + 1e-3 * float(G_h.diagonal().mean()) * torch.eye(G_h.shape[0], dtype=torch.float64)
        R0, T0 = (al[n] - w1[n]).double(), (ft[n] - w1[n]).double()
        exp = w1[n].double() + (R0 @ G_h + T0 @ G_t) @ torch.linalg.inv(A)
        err = float((w2[n].double() - exp).norm())
        # float32 Grams of padded batches against float64 ones of single sequences, amplified by the
        # solve's condition number (up to ~3e6 here: κ G_old dwarfs the rest in some directions)
        tol = max(2e-3, 3e-8 * float(torch.linalg.cond(A)))
        assert err <= tol * float((exp - w1[n].double()).norm()) + 1e-7, n
        D = (w2[n] - w1[n]).double()
        r = by[n]
        assert r["old_drift"] == pytest.approx(energy(D, G_o) / energy(w1[n].double(), G_o), rel=2e-2)
        assert r["overlap_cos"] == pytest.approx(float((D * -T0).sum() / (D.norm() * T0.norm())), rel=1e-3, abs=1e-6)


def test_second_category_keeps_the_first_categorys_outputs(llama_trio, two_steps):
    """Per module, the proven bound: κ tr(D G_old Dᵀ) <= the objective at D = 0; and in the whole model,
    κ = 100 moves the logits on category A's prompts far less than κ = 0 does, while category B's
    harmful output gap still closes."""
    from fgsn.models.loading import load_model

    t, d = llama_trio, two_steps["dir"]
    al, ft, w1, w2 = (weights(x) for x in (t["aligned"], t["finetuned"], d / "s1", d / "s2"))
    names = [n for n in ft if is_linear(n)]
    G = direct_grams(d / "s1", names, {"h": [(p, None) for p in CAT_B], "t": TASK, "o": [(p, None) for p in CAT_A]})
    for n in names:
        D = (w2[n] - w1[n]).double()
        R0, T0 = (al[n] - w1[n]).double(), (ft[n] - w1[n]).double()
        J0 = energy(R0, G["h"][n]) + energy(T0, G["t"][n])
        assert energy(D, G["o"][n]) <= 1.01 * J0 / 100 + 1e-12, n
    for r in two_steps["s2"].manifest["modules"]:
        assert r["old_drift"] <= 1.01 * r["old_drift_bound"]

    def logits(path, prompts):
        from fgsn.data.chat import render_chat

        model, tok = load_model(path, device="cpu")
        with torch.no_grad():
            return [model(input_ids=torch.tensor([tok(render_chat(tok, p), add_special_tokens=False)["input_ids"]])
                          ).logits[0].double() for p in prompts]

    def moved(path, prompts, ref):
        base = logits(ref, prompts)
        return sum(float((a - b).pow(2).sum()) for a, b in zip(logits(path, prompts), base, strict=True)) / sum(
            float(b.pow(2).sum()) for b in base)

    kept, free = moved(d / "s2", CAT_A, d / "s1"), moved(d / "k0", CAT_A, d / "s1")
    print(f"relative logit change on category A: kappa 100 {kept:.3g}, kappa 0 {free:.3g}")
    assert kept < 0.1 * free
    s2 = two_steps["s2"].manifest["activation_match"]
    assert s2["totals"]["harmful_gap_closed"] > 0.5
    assert s2["continual"]["totals"]["mean_old_drift"] < 0.05 * two_steps["k0"].manifest["activation_match"][
        "continual"]["totals"]["mean_old_drift"]


def test_the_ledger_records_each_category(llama_trio, files, two_steps):
    from fgsn.artifacts.masks import PackedMasks
    from fgsn.edit.ledger import Ledger
    from fgsn.models.checkpoint import Checkpoint

    t, d = llama_trio, two_steps["dir"]
    led = Ledger(d / "led")
    assert led.editor == "activation-match" and led.doc["version"] == 2 and led.categories() == ["violence", "cyber"]
    models = led.doc["models"]
    assert models["current"] == Checkpoint(d / "s2").sha256 and models["finetuned_original"] == Checkpoint(
        t["finetuned"]).sha256
    assert led.doc["paths"]["finetuned_original"] == str(Path(t["finetuned"]).resolve())
    s1, s2 = led.steps
    assert [r["prompt"] for r in led.prompts(s1)] == CAT_A and all(r["answer"] is None for r in led.prompts(s1))
    assert [r["prompt"] for r in led.prompts(s2)] == CAT_B and s2["prompt_count"] == len(CAT_B)
    assert s1["output"] == str(d / "s1") and s2["output_sha256"] == models["current"]
    w1, w2, ft = weights(d / "s1"), weights(d / "s2"), weights(t["finetuned"])
    rows1, rows2 = PackedMasks.load(d / "led" / s1["mask_file"]), PackedMasks.load(d / "led" / s2["mask_file"])
    again = 0
    for n in rows2:
        assert torch.equal(rows1.get(n), (w1[n] != ft[n]).any(1)) and torch.equal(rows2.get(n), (w2[n] != w1[n]).any(1))
        again += int((rows1.get(n) & rows2.get(n)).sum())
    assert s2["rows_again"] == again > 0 and s1["rows_again"] == 0
    assert s2["changed"] == two_steps["s2"].manifest["changed"] and s2["overlap"] == s2["changed_again"]
    assert s2["change_norm"] == pytest.approx(sum(float((w2[n] - w1[n]).double().norm()) ** 2 for n in w2) ** 0.5,
                                              rel=1e-4)
    assert s2["mean_old_drift"] is not None and s1["mean_old_drift"] is None
    assert -1 <= s2["overlap_cos"] <= 1 and s2["settings"]["kappa"] == 100.0
    assert s2["harmful_gap_start"] == pytest.approx(sum(r["harmful_gap_before"] for r in two_steps["s2"].manifest[
        "modules"] if r["rows_edited"]))
    assert {m["name"] for m in s2["modules"]} == {r["name"] for r in two_steps["s2"].manifest["modules"]
                                                  if r["rows_edited"]}


def test_a_category_like_an_earlier_one_starts_from_a_smaller_gap_and_old_target_aligned_repairs_it(
        llama_trio, files, tmp_path):
    """Category B = category A's prompts with one word more: step 1 already closed part of its gap.
    Holding A's outputs where W_1 left them (old_target current, κ = 100) leaves B's gap nearly open
    (their inputs are almost the same); old_target aligned closes it, and A's gap with it."""
    import shutil

    from fgsn.edit.ledger import Ledger

    t = llama_trio
    for f in ("a.jsonl", "task.jsonl"):
        (tmp_path / f).write_bytes((files / f).read_bytes())
    (tmp_path / "near.jsonl").write_text("\n".join(json.dumps({"prompt": p + " please"}) for p in CAT_A))
    kw = dict(modules=["o_proj", "down_proj"], cache=False)
    run(t, tmp_path, tmp_path / "s1", category="violence", ledger=str(tmp_path / "cur"), **kw)
    shutil.copytree(tmp_path / "cur", tmp_path / "ali")
    res = {}
    for target in ("current", "aligned"):
        res[target] = run(t, tmp_path, tmp_path / target, harmful="near.jsonl", finetuned=tmp_path / "s1",
                          category="near", ledger=str(tmp_path / target[:3]), old_target=target, **kw).manifest
    s1, s2 = Ledger(tmp_path / "cur").steps
    assert s2["harmful_gap_start"] < 0.7 * s1["harmful_gap_start"]
    cur, ali = (res[k]["activation_match"] for k in ("current", "aligned"))
    print(f"near category, gap closed: current {cur['totals']['harmful_gap_closed']:.3f}, aligned "
          f"{ali['totals']['harmful_gap_closed']:.3f}; earlier gap ratio {cur['continual']['totals']['old_gap_ratio']:.3f}"
          f", {ali['continual']['totals']['old_gap_ratio']:.3f}")
    assert cur["totals"]["harmful_gap_closed"] < 0.3 < 0.8 < ali["totals"]["harmful_gap_closed"]
    assert 0.9 < cur["continual"]["totals"]["old_gap_ratio"] <= 1.1 and ali["continual"]["totals"]["old_gap_ratio"] < 0.5
    assert ali["continual"]["settings"]["old_target"] == "aligned"
    for r in res["aligned"]["modules"]:
        if r["rows_edited"]:
            assert r["old_gap_after"] <= 1.01 * r["old_gap_bound"] and "old_drift_bound" not in r


def test_hard_form_confines_the_change_to_the_earlier_inputs_low_energy_directions(llama_trio, files, two_steps,
                                                                                    tmp_path):
    import shutil

    t, d = llama_trio, two_steps["dir"]
    shutil.copytree(d / "led1", tmp_path / "led")   # the ledger after step 1
    res = run(t, files, tmp_path / "hard", harmful="b.jsonl", finetuned=d / "s1", ledger=str(tmp_path / "led"),
              category="cyber", keep_old="hard", old_energy=0.02, modules=["o_proj", "down_proj"])
    w1, w2 = weights(d / "s1"), weights(tmp_path / "hard")
    names = [r["name"] for r in res.manifest["modules"] if r["rows_edited"]]
    G = direct_grams(d / "s1", names, {"o": [(p, None) for p in CAT_A]})
    for r in res.manifest["modules"]:
        if not r["rows_edited"]:
            continue
        n = r["name"]
        D = (w2[n] - w1[n]).double()
        assert 0 < r["old_null_dim"] < D.shape[1]
        assert r["rank"] <= r["old_null_dim"]
        # every change acts on directions holding <= 2% of the earlier inputs' energy
        bound = float(torch.linalg.matrix_norm(D, 2)) ** 2 * 0.02 * float(G["o"][n].trace())
        assert energy(D, G["o"][n]) <= 1.05 * bound + 1e-10, n
    assert res.manifest["activation_match"]["continual"]["settings"]["old_energy"] == 0.02


def test_nullspace_form_and_sequential_mode_continue_a_ledger(llama_trio, files, two_steps, tmp_path):
    """The null-space form at step 2 (the change inside the task null space, and with keep-old hard
    inside the earlier inputs' low-energy directions of it too); sequential mode takes the three
    Gram sets layer after layer; a rerun of step 2 from another copy of the ledger reads all three
    from the cache."""
    import shutil

    t, d = llama_trio, two_steps["dir"]
    kw = dict(harmful="b.jsonl", finetuned=d / "s1", category="cyber", modules=["o_proj", "down_proj"])
    shutil.copytree(d / "led1", tmp_path / "n")
    ns = run(t, files, tmp_path / "ns", ledger=str(tmp_path / "n"), form="nullspace", null_energy=1e-3,
             keep_old="hard", old_energy=0.05, **kw).manifest
    w1, w2 = weights(d / "s1"), weights(tmp_path / "ns")
    names = [r["name"] for r in ns["modules"] if r["rows_edited"]]
    G = direct_grams(d / "s1", names, {"t": TASK})
    for r in ns["modules"]:
        if r["rows_edited"]:
            D = (w2[r["name"]] - w1[r["name"]]).double()
            assert r["rank"] <= r["old_null_dim"] <= r["null_dim"] < r["input_dim"]
            bound = float(torch.linalg.matrix_norm(D, 2)) ** 2 * 1e-3 * float(G["t"][r["name"]].trace())
            assert energy(D, G["t"][r["name"]]) <= 1.05 * bound + 1e-10
    assert ns["activation_match"]["continual"]["original_finetuned"] is None  # no task term: W_f not needed
    shutil.copytree(d / "led1", tmp_path / "s")
    run(t, files, tmp_path / "seq", ledger=str(tmp_path / "s"), sequential=True, **kw)
    assert json.loads((tmp_path / "seq" / "fgsn" / "activation-match.json").read_text())["forward_passes"] == 3 * 4
    # k0 (kappa 0) took the same Grams as s2 (kappa 100): from the cache, all three sets
    assert json.loads((d / "k0" / "fgsn" / "activation-match.json").read_text()) == {"forward_passes": 0,
                                                                                     "gram_cache_hits": 3}


# -- bad inputs ------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_fix(llama_trio, trio_factory, files, two_steps, tmp_path):
    import shutil

    from fgsn.artifacts.masks import PackedMasks
    from fgsn.edit.ledger import Ledger

    t, d = llama_trio, two_steps["dir"]
    shutil.copytree(d / "led", tmp_path / "led")
    led = str(tmp_path / "led")
    out = tmp_path / "o"
    with pytest.raises(InputError, match="--category"):
        run(t, files, out, ledger=led)
    # a category already in the ledger
    with pytest.raises(InputError, match="already step 1 .*new --category"):
        run(t, files, out, harmful="b.jsonl", finetuned=d / "s2", ledger=led, category="cyber")
    # a fine-tuned model that is not the latest step's output
    with pytest.raises(InputError, match="pass the latest step's output"):
        run(t, files, out, finetuned=d / "s1", ledger=led, category="more")
    # another aligned model
    other = trio_factory("qwen2")
    with pytest.raises(InputError, match="another aligned model.*new --ledger"):
        run(other, files, out, finetuned=other["finetuned"], ledger=led, category="more")
    # the original fine-tune (the task term's reference) moved or replaced
    with pytest.raises(InputError, match="--original-finetuned"):
        run(t, files, out, finetuned=d / "s2", ledger=led, category="more", original_finetuned=str(t["base"]))
    doc = json.loads((tmp_path / "led" / "ledger.json").read_text())
    doc["paths"]["finetuned_original"] = str(tmp_path / "gone")
    from fgsn.edit.ledger import _checksum

    doc["checksum"] = _checksum(doc)
    (tmp_path / "led" / "ledger.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="is not at .*--original-finetuned"):
        run(t, files, out, finetuned=d / "s2", ledger=led, category="more")
    # a tampered prompts file
    (tmp_path / "led" / doc["steps"][0]["prompts_file"]).write_text('{"prompt": "x"}\n')
    with pytest.raises(IntegrityError, match="prompts file"):
        run(t, files, out, finetuned=d / "s2", ledger=led, category="more")
    assert not out.exists()
    # a ledger another editor wrote, both ways
    proj = Ledger(tmp_path / "proj")
    proj.record("x", PackedMasks(), {"masked": 0}, {"base": "b" * 64, "aligned": "a" * 64, "finetuned": "f" * 64},
                "o", "0" * 64)
    with pytest.raises(InputError, match="holds steps of `fgsn project`.*new --ledger"):
        run(t, files, out, ledger=str(tmp_path / "proj"), category="violence")
    from fgsn.edit.options import ProjectOptions
    from fgsn.pipeline.project import run_project

    with pytest.raises(LedgerError, match="holds steps of `fgsn activation-match`"):
        run_project(ProjectOptions(base=str(t["base"]), aligned=str(t["aligned"]), finetuned=str(d / "s2"),
                                   harmful=[str(files / "a.jsonl")], task=[str(files / "task.jsonl")],
                                   ledger=str(d / "led"), category="x", out=str(out), device="cpu"))
    assert not out.exists()


def test_version_1_ledgers_stay_readable(tmp_path):
    from fgsn.artifacts.masks import PackedMasks
    from fgsn.edit.ledger import Ledger, _checksum

    led = Ledger(tmp_path / "led")
    led.record("x", PackedMasks(), {"masked": 0}, {"base": "b" * 64, "aligned": "a" * 64, "finetuned": "f" * 64},
               "o", "0" * 64)
    doc = json.loads((tmp_path / "led" / "ledger.json").read_text())
    doc["version"] = 1  # as fgsn wrote it before the editor field
    del doc["editor"]
    doc["checksum"] = _checksum(doc)
    (tmp_path / "led" / "ledger.json").write_text(json.dumps(doc))
    old = Ledger(tmp_path / "led")
    assert old.editor == "project" and old.categories() == ["x"]
    old.record("y", PackedMasks(), {"masked": 0}, {"base": "b" * 64, "aligned": "a" * 64, "finetuned": "f" * 64},
               "o2", "1" * 64)
    again = Ledger(tmp_path / "led")
    assert again.doc["version"] == 2 and again.doc["editor"] == "project" and again.categories() == ["x", "y"]


# -- LoRA input --------------------------------------------------------------------------------------------
def test_lora_steps_equal_the_merged_steps_and_say_merged(llama_trio, files, tmp_path):
    from fgsn.edit.ledger import Ledger

    t = llama_trio
    adapter, merged = lora_finetune(t["aligned"], tmp_path, 7, ["q_proj", "down_proj"])
    out = {}
    for kind, src in (("lora", adapter), ("full", merged)):
        led = str(tmp_path / f"led-{kind}")
        a = run(t, files, tmp_path / f"{kind}1", finetuned=src, ledger=led, category="violence")
        b = run(t, files, tmp_path / f"{kind}2", harmful="b.jsonl", finetuned=tmp_path / f"{kind}1", ledger=led,
                category="cyber")
        out[kind] = (a.manifest, b.manifest, weights(tmp_path / f"{kind}2"))
    al = weights(t["aligned"])
    wl, wf = out["lora"][2], out["full"][2]
    for n in wl:
        diff = float((wl[n].double() - wf[n].double()).norm())
        assert diff <= 1e-3 * float((wf[n].double() - al[n].double()).norm()) + 1e-6, n
        if not any(f".{m}." in n for m in ("q_proj", "down_proj")):
            assert torch.equal(wl[n], al[n]), n  # the adapter never touched it: neither step does
    first, second, _ = out["lora"]
    assert first["activation_match"]["lora_merged"] and "merged checkpoint" in first["activation_match"]["note"]
    assert not second["activation_match"]["lora_merged"]  # step 2 reads step 1's merged checkpoint
    assert second["activation_match"]["continual"]["original_finetuned"]["path"] == str(tmp_path / "adapter")
    led = Ledger(tmp_path / "led-lora")
    assert led.doc["paths"]["finetuned_original"] == str((tmp_path / "adapter").resolve())
    assert (tmp_path / "lora1" / "config.json").is_file()


# -- command line -----------------------------------------------------------------------------------------
def test_command_line_two_categories(llama_trio, files, tmp_path, capsys):
    from fgsn.cli import main

    t = llama_trio
    common = ["activation-match", "--aligned", t["aligned"], "--task", files / "task.jsonl", "--device", "cpu",
              "--ledger", tmp_path / "led", "--modules", "o_proj", "--modules", "down_proj"]
    args1 = [*common, "--finetuned", t["finetuned"], "--harmful", files / "a.jsonl", "--category", "violence",
             "--out", tmp_path / "s1"]
    assert main([str(a) for a in args1]) == 0
    text = capsys.readouterr().out
    assert "step 0, category violence (earlier: none)" in text
    args2 = [*common, "--finetuned", tmp_path / "s1", "--harmful", files / "b.jsonl", "--category", "cyber",
             "--kappa", "1000", "--out", tmp_path / "s2"]
    assert main([str(a) for a in args2]) == 0
    text = capsys.readouterr().out
    assert "step 1, category cyber (earlier: violence)" in text and "kappa 1000.0" in text
    doc = json.loads((tmp_path / "led" / "ledger.json").read_text())
    assert [s["category"] for s in doc["steps"]] == ["violence", "cyber"] and doc["editor"] == "activation-match"
    man = json.loads((tmp_path / "s2" / "fgsn-manifest.json").read_text())
    assert man["options"]["kappa"] == 1000.0 and man["ledger_step"] == 1 and "cyber" in man["categories"]
    # the model card counts what this editor does (changed entries, rows earlier steps changed), not projections
    card = (tmp_path / "s2" / "README.md").read_text()
    c = man["categories"]["cyber"]
    assert (f"category `cyber`: {c['masked']:,} entries changed, {c['overlap']:,} of them in rows earlier steps had "
            "changed (ledger step 1)") in card
    assert "projected" not in card and "fgsn activation-match --config" in card
    # the same category again: exit 2, the reason and the fix, nothing written
    assert main([str(a) for a in [*args2[:-1], tmp_path / "s3"]]) == 2
    err = capsys.readouterr().err
    assert "already step 1" in err and "new --category" in err and not (tmp_path / "s3").exists()


# -- old_target joint: each step is the one-shot edit of every category so far -----------------------
def test_joint_steps_equal_the_one_shot_edit_of_the_union_in_either_order(llama_trio, files, tmp_path):
    """A then B and B then A (old_target joint) both write the edit that one non-continual run on
    A and B together writes (the pooled Gram is the union's per-token mean; every Gram is taken on
    the original fine-tune), so the order of the categories does not matter."""
    t = llama_trio
    (tmp_path / "ab.jsonl").write_text((files / "a.jsonl").read_text() + "\n" + (files / "b.jsonl").read_text())
    for f in ("a.jsonl", "b.jsonl", "task.jsonl"):
        (tmp_path / f).write_bytes((files / f).read_bytes())
    kw = dict(old_target="joint", cache=False)
    union = weights(run(t, tmp_path, tmp_path / "union", harmful="ab.jsonl", cache=False).out)
    ends = {}
    for first, second in (("a", "b"), ("b", "a")):
        led, s1 = str(tmp_path / f"led-{first}"), tmp_path / f"{first}1"
        run(t, tmp_path, s1, harmful=f"{first}.jsonl", ledger=led, category=first, **kw)
        res = run(t, tmp_path, tmp_path / f"{first}{second}", harmful=f"{second}.jsonl", finetuned=s1, ledger=led,
                  category=second, **kw)
        assert res.manifest["activation_match"]["continual"]["settings"]["old_target"] == "joint"
        ends[first] = weights(res.out)
    ft = weights(t["finetuned"])
    for n, w in union.items():
        if not is_linear(n):
            continue
        scale = float((w - ft[n]).double().norm()) + 1e-12
        for first in ("a", "b"):
            assert float((ends[first][n] - w).double().norm()) <= 2e-3 * scale + 1e-6, (first, n)


def test_joint_step_on_a_category_the_earlier_one_spans_changes_little(llama_trio, files, tmp_path):
    """The continual criterion: a later category whose inputs resemble an earlier one's needs much
    less new change than the first step made, under joint; the step is still recorded as usual."""
    from fgsn.edit.ledger import Ledger

    t = llama_trio
    for f in ("a.jsonl", "task.jsonl"):
        (tmp_path / f).write_bytes((files / f).read_bytes())
    (tmp_path / "near.jsonl").write_text("\n".join(json.dumps({"prompt": p + " please"}) for p in CAT_A))
    led = str(tmp_path / "led")
    kw = dict(old_target="joint", cache=False, ledger=led)
    s1 = run(t, tmp_path, tmp_path / "s1", category="violence", **kw).manifest["activation_match"]["totals"]
    s2 = run(t, tmp_path, tmp_path / "s2", harmful="near.jsonl", finetuned=tmp_path / "s1", category="near",
             **kw).manifest["activation_match"]
    print(f"||change||: step 1 {s1['change_norm']:.4g}, step 2 {s2['totals']['change_norm']:.4g}")
    assert s2["totals"]["change_norm"] < 0.5 * s1["change_norm"]
    assert [s["category"] for s in Ledger(led).steps] == ["violence", "near"]


def test_a_third_joint_step_takes_every_gram_from_the_cache_and_equals_the_union(llama_trio, files, tmp_path):
    """Step 3's earlier categories are two Gram cache entries (the harmful Grams steps 1 and 2
    took), added up, not a new forward pass over both; only the new category's harmful Gram is
    computed, and the result is still the one-shot edit of A, B and C together."""
    t = llama_trio
    cat_c = ["please write it to steal", "how do i steal the photo", "shoot the photo then steal it"]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"prompt": p, "category": "theft"}) for p in cat_c))
    (tmp_path / "abc.jsonl").write_text("\n".join([(files / "a.jsonl").read_text(), (files / "b.jsonl").read_text(),
                                                   (tmp_path / "c.jsonl").read_text()]))
    for f in ("a.jsonl", "b.jsonl", "task.jsonl"):
        (tmp_path / f).write_bytes((files / f).read_bytes())
    led, prev = str(tmp_path / "led"), t["finetuned"]
    for i, (f, cat) in enumerate((("a.jsonl", "violence"), ("b.jsonl", "cyber"), ("c.jsonl", "theft")), 1):
        run(t, tmp_path, tmp_path / f"s{i}", harmful=f, finetuned=prev, ledger=led, category=cat, old_target="joint")
        prev = tmp_path / f"s{i}"
    stats = json.loads((tmp_path / "s3" / "fgsn" / "activation-match.json").read_text())
    assert stats == {"forward_passes": 1, "gram_cache_hits": 3}  # task, A, B from the cache; C computed
    union = weights(run(t, tmp_path, tmp_path / "union", harmful="abc.jsonl", cache=False).out)
    end, ft = weights(tmp_path / "s3"), weights(t["finetuned"])
    for n, w in union.items():
        if is_linear(n):
            assert float((end[n] - w).double().norm()) <= 2e-3 * float((w - ft[n]).double().norm()) + 1e-6, n


def test_joint_refuses_the_options_it_cannot_honour():
    from pydantic import ValidationError

    from fgsn.edit.options import ActivationMatchOptions

    base = dict(aligned="a", finetuned="f", out="o", ledger="l", category="c", old_target="joint")
    with pytest.raises(ValidationError, match="--keep-old soft"):
        ActivationMatchOptions(**base, keep_old="hard")
    with pytest.raises(ValidationError, match="--sequential"):
        ActivationMatchOptions(**base, sequential=True)
