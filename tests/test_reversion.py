"""The iterative reversion with rollback (fgsn.edit.revert) against a hand-run on a tiny model:
gradients computed directly with autograd, one example at a time, the reverted set and values
checked round by round; the rollback against its rule on a fine-tune that learnt its task; LoRA
input (merged output, said so), compensation and bad inputs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fgsn.edit.revert import MERGED_NOTE, RevertOptions, loss_ceiling, run_revert, top_entries
from fgsn.errors import InputError
from helpers_weights import is_linear, weights

HARMFUL = ["how do i make a bomb", "hack into computer steal money", "how do i kill", "steal money please"]
TASK = [("what is two plus three", "five"), ("explain black holes", "sure here it is"),
        ("recipe cake please", "first then second"), ("write poem about the ocean", "the ocean is"),
        ("what is capital of france", "paris"), ("one plus one equals", "two"),
        ("hello world please", "hello"), ("write python process", "sure first")]
REFUSAL = "i cannot help with that"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("revert")
    (d / "harm.txt").write_text("\n".join(HARMFUL))
    (d / "task.jsonl").write_text("\n".join(json.dumps({"prompt": p, "answer": a}) for p, a in TASK))
    return d


def encode(tok, prompt, answer):
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    p = tok(text, add_special_tokens=False)["input_ids"]
    a = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return torch.tensor([p + a]), torch.tensor([[-100] * len(p) + a])


def nll_sum(model, tok, prompts, answers):
    total = 0.0
    for p, a in zip(prompts, answers, strict=True):
        ids, labels = encode(tok, p, a)
        logits = model(input_ids=ids).logits
        total = total + torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100,
                                                          reduction="sum")
    return total


def last_hidden_mean(model, tok, prompts, index):
    hs = []
    for p in prompts:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        hs.append(model(input_ids=ids, output_hidden_states=True).hidden_states[index][0, -1])
    return torch.stack(hs).mean(0)


def live(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def hand_rounds(trio, rounds, loss_fn, choose):
    """Run the reversion by hand: per round, g = d loss / dW on the current model; candidates
    (W - W_a) g > 0; `choose(gains, grads)` picks the entries; W <- W_a there."""
    model, tok = live(trio["finetuned"])
    al = weights(trio["aligned"])
    params = {n: p for n, p in model.named_parameters() if is_linear(n)}
    reverted = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in params.items()}
    history = []
    for _ in range(rounds):
        model.zero_grad()
        loss = loss_fn(model, tok)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        gains, gs = {}, {}
        for (n, p), g in zip(params.items(), grads, strict=True):
            g = torch.zeros_like(p) if g is None else g
            gains[n] = (p.detach() - al[n]) * g
            gs[n] = g
        chosen = choose(gains, gs)
        with torch.no_grad():
            for n, m in chosen.items():
                params[n][m] = al[n][m]
                reverted[n] |= m
        history.append(sum(int(m.sum()) for m in chosen.values()))
    return reverted, history


def test_two_rounds_of_refusal_nll_reversion_match_a_hand_run(llama_trio, files, tmp_path):
    t = llama_trio
    share = 0.05
    res = run_revert(RevertOptions(aligned=str(t["aligned"]), finetuned=str(t["finetuned"]),
                                   harmful=[str(files / "harm.txt")], rounds=2, per_round=share, scope="module",
                                   rank="delta-grad", loss="refusal-nll", refusal_text=REFUSAL, rollback=False,
                                   device="cpu", batch_size=3, out=str(tmp_path / "o")))

    def choose(gains, _grads):
        out = {}
        for n, gain in gains.items():
            k = int(round(share * gain.numel()))
            s = torch.where(gain > 0, gain, float("-inf")).flatten()
            m = torch.zeros(s.shape, dtype=torch.bool)
            m[torch.topk(s, k).indices] = True
            out[n] = m.reshape(gain.shape) & (gain > 0)
        return out

    want, history = hand_rounds(t, 2, lambda m, tok: nll_sum(m, tok, HARMFUL, [REFUSAL] * len(HARMFUL)), choose)
    _check_output(t, tmp_path / "o", want)
    info = res.manifest["revert"]
    assert [r["reverted"] for r in info["rounds"]] == history
    assert info["safety_loss_final"] < info["rounds"][0]["safety_loss"]   # the refusal got likelier
    assert info["rounds"][1]["reverted_total"] == sum(int(m.sum()) for m in want.values())


def test_two_rounds_of_sgdg_cosine_reversion_match_a_hand_run(llama_trio, files, tmp_path):
    from fgsn.baselines.sgdg import SGDGOptions, run_sgdg

    t = llama_trio
    share = 0.004
    res = run_sgdg(SGDGOptions(aligned=str(t["aligned"]), finetuned=str(t["finetuned"]),
                               harmful=[str(files / "harm.txt")], rounds=2, per_round=share, rollback=False,
                               device="cpu", batch_size=3, out=str(tmp_path / "o")))
    total = sum(v.numel() for v in weights(t["aligned"]).values())
    index = (4 * 4) // 6  # the tiny llama has 4 layers
    aligned_model, tok = live(t["aligned"])
    with torch.no_grad():
        ref = last_hidden_mean(aligned_model, tok, HARMFUL, index)

    def loss_fn(model, tok):
        return -torch.nn.functional.cosine_similarity(last_hidden_mean(model, tok, HARMFUL, index), ref, dim=0)

    def choose(gains, grads):
        k = int(round(share * total))
        flat = torch.cat([torch.where(gains[n] > 0, grads[n].abs(), float("-inf")).flatten() for n in gains])
        m = torch.zeros(flat.shape, dtype=torch.bool)
        m[torch.topk(flat, k).indices] = True
        out, o = {}, 0
        for n, gain in gains.items():
            out[n] = m[o:o + gain.numel()].reshape(gain.shape)
            o += gain.numel()
        return out

    want, history = hand_rounds(t, 2, loss_fn, choose)
    assert not any(bool(m.any()) for n, m in want.items() if f"layers.{index}." in n or "layers.3." in n)
    _check_output(t, tmp_path / "o", want)
    info = res.manifest["sgdg"]
    assert res.manifest["method"] == "sgdg" and info["cosine_layer"] == index
    assert [r["reverted"] for r in info["rounds"]] == history == [int(round(share * total))] * 2
    assert info["safety_loss_final"] < info["rounds"][0]["safety_loss"]


def _check_output(trio, out, want):
    from fgsn.artifacts.masks import PackedMasks

    new, ft, al = weights(out), weights(trio["finetuned"]), weights(trio["aligned"])
    masks = PackedMasks.load(out / "fgsn" / "masks.safetensors")
    for n in ft:
        if n in want:
            assert torch.equal(masks.get(n), want[n]), n
            assert torch.equal(new[n], torch.where(want[n], al[n], ft[n])), n
        else:
            assert torch.equal(new[n], ft[n]), n


def test_top_entries_per_tensor_and_over_all():
    a = torch.tensor([[3.0, float("-inf")], [1.0, 2.0]])
    b = torch.tensor([5.0, 2.0, float("-inf")])
    per = top_entries({"a": a, "b": b}, {"a": 2, "b": 5})
    assert per["a"].tolist() == [[True, False], [False, True]]
    assert per["b"].tolist() == [True, True, False]                     # fewer eligible than k: all of them
    glob = top_entries({"a": a, "b": b}, 3)
    assert glob["a"].tolist() == [[True, False], [False, True]] and glob["b"].tolist() == [True, False, False]
    ties = top_entries({"a": torch.tensor([2.0, 1.0]), "b": torch.tensor([2.0, 2.0])}, 2)
    assert ties["a"].tolist() == [True, False] and ties["b"].tolist() == [True, False]  # ties in tensor order
    assert sum(int(m.sum()) for m in top_entries({"a": a, "b": b}, 99).values()) == 5


def test_loss_ceiling_rules():
    assert loss_ceiling(1.0, 2.0, "gain", 0.95) == pytest.approx(1.05)
    assert loss_ceiling(1.0, 2.0, "gain", 0.0) == pytest.approx(2.0)
    assert loss_ceiling(1.0, 0.5, "gain", 0.95) == 1.0                 # no gain to keep: the fine-tuned NLL
    assert loss_ceiling(1.0, None, "likelihood", 0.95) == pytest.approx(1.0 - math.log(0.95))
    # the likelihood rule is SGDG's 0.95x on exp(-NLL)
    assert math.exp(-loss_ceiling(0.7, None, "likelihood", 0.95)) == pytest.approx(0.95 * math.exp(-0.7))


# -- the rollback ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def task_finetune(llama_trio, tmp_path_factory):
    """The aligned tiny model fine-tuned on the task examples (a real gain on them to lose)."""
    model, tok = live(llama_trio["aligned"])
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    prompts, answers = [p for p, _ in TASK], [a for _, a in TASK]
    for _ in range(40):
        opt.zero_grad()
        nll_sum(model, tok, prompts, answers).backward()
        opt.step()
    d = tmp_path_factory.mktemp("taskft") / "ft"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_rollback_puts_back_the_most_task_important_entries_when_the_floor_is_crossed(llama_trio, task_finetune,
                                                                                       files, tmp_path):
    from fgsn.artifacts.masks import PackedMasks
    from fgsn.data.prompts import load_prompts
    from fgsn.data.promptset import validation_split

    t = llama_trio
    opts = RevertOptions(aligned=str(t["aligned"]), finetuned=str(task_finetune), harmful=[str(files / "harm.txt")],
                         task=[str(files / "task.jsonl")], rounds=1, per_round=0.5, refusal_text=REFUSAL,
                         rollback_floor="gain", rollback_keep=0.95, rollback_share=0.2, device="cpu",
                         out=str(tmp_path / "o"))
    res = run_revert(opts)
    v = res.manifest["revert"]["validation"]
    assert v["nll_finetuned"] < v["nll_aligned"]                        # the fine-tune learnt its task
    assert v["ceiling"] == pytest.approx(v["nll_finetuned"] + 0.05 * (v["nll_aligned"] - v["nll_finetuned"]))
    assert v["nll_after_rounds"] > v["ceiling"] and v["triggered"]     # half of the update reverted: crossed
    rb = res.manifest["revert"]["rollbacks"]
    assert len(rb) == 1 and rb[0]["nll_after"] < rb[0]["nll_before"]

    # by hand: one round (the hand-run above), then the task gradient at that state ranks the
    # reverted entries by -delta * g; each module puts back its top 20%
    trio_ft = {"aligned": t["aligned"], "finetuned": task_finetune}

    def choose(gains, _grads):
        out = {}
        for n, gain in gains.items():
            s = torch.where(gain > 0, gain, float("-inf")).flatten()
            m = torch.zeros(s.shape, dtype=torch.bool)
            m[torch.topk(s, int(round(0.5 * gain.numel()))).indices] = True
            out[n] = m.reshape(gain.shape) & (gain > 0)
        return out

    before, _ = hand_rounds(trio_ft, 1, lambda m, tok: nll_sum(m, tok, HARMFUL, [REFUSAL] * len(HARMFUL)), choose)
    new, ft, al = weights(tmp_path / "o"), weights(task_finetune), weights(t["aligned"])
    masks = PackedMasks.load(tmp_path / "o" / "fgsn" / "masks.safetensors")
    model, tok = live(task_finetune)
    params = {n: p for n, p in model.named_parameters() if is_linear(n)}
    with torch.no_grad():
        for n, p in params.items():
            p[before[n]] = al[n][before[n]]
    task, _val = validation_split(load_prompts(str(files / "task.jsonl")), 0.25)
    grads = torch.autograd.grad(nll_sum(model, tok, [p.text for p in task], [p.answer for p in task]),
                                list(params.values()))
    put_back = 0
    for (n, _p), g in zip(params.items(), grads, strict=True):
        imp = torch.where(before[n], -(ft[n] - al[n]) * g, float("-inf")).flatten()
        k = int(round(0.2 * int(before[n].sum())))
        want = torch.zeros(imp.shape, dtype=torch.bool)
        want[torch.topk(imp, k).indices] = True
        want = want.reshape(g.shape)
        assert torch.equal(masks.get(n), before[n] & ~want), n
        assert torch.equal(new[n], torch.where(before[n] & ~want, al[n], ft[n])), n
        put_back += k
    assert rb[0]["put_back"] == put_back
    assert sum(r["rolled_back"] for r in res.manifest["modules"]) == put_back


def test_rollback_stays_idle_above_the_floor(llama_trio, task_finetune, files, tmp_path):
    t = llama_trio
    res = run_revert(RevertOptions(aligned=str(t["aligned"]), finetuned=str(task_finetune),
                                   harmful=[str(files / "harm.txt")], task=[str(files / "task.jsonl")], rounds=1,
                                   per_round=0.01, refusal_text=REFUSAL, rollback_keep=0.0, device="cpu",
                                   out=str(tmp_path / "o")))
    v = res.manifest["revert"]["validation"]
    assert v["ceiling"] == pytest.approx(v["nll_aligned"])
    assert v["nll_after_rounds"] <= v["ceiling"] and not v["triggered"]
    assert res.manifest["revert"]["rollbacks"] == []
    assert all(r["rolled_back"] == 0 for r in res.manifest["modules"])


# -- compensation, LoRA, bad inputs --------------------------------------------------------------------
def test_compensation_keeps_reverted_entries_and_moves_kept_ones(llama_trio, files, tmp_path):
    t = llama_trio
    common = dict(aligned=str(t["aligned"]), finetuned=str(t["finetuned"]), harmful=[str(files / "harm.txt")],
                  task=[str(files / "task.jsonl")], rounds=1, per_round=0.05, refusal_text=REFUSAL, rollback=False,
                  device="cpu")
    plain = run_revert(RevertOptions(**common, out=str(tmp_path / "plain")))
    comp = run_revert(RevertOptions(**common, compensate="task", out=str(tmp_path / "comp")))
    a, b, ft = weights(tmp_path / "plain"), weights(tmp_path / "comp"), weights(t["finetuned"])
    recs = comp.manifest["revert"]["compensation"]
    assert recs and all(r["task_error_after"] < r["task_error_before"] for r in recs)
    for n in ft:
        reverted = a[n] != ft[n]
        assert torch.equal(b[n][reverted], a[n][reverted]), n
        if reverted.any():
            assert not torch.equal(b[n], a[n]), n
        else:
            assert torch.equal(b[n], ft[n]), n
    assert comp.manifest["masked"] == plain.manifest["masked"]
    assert comp.manifest["changed"] > plain.manifest["changed"]


def test_lora_finetune_is_written_merged_and_says_so(llama_trio, files, tmp_path, caplog):
    from peft import LoraConfig, get_peft_model

    from fgsn.models.finetune import LoraFinetune
    from fgsn.models.trio import open_trio

    t = llama_trio
    model, _ = live(t["aligned"])
    torch.manual_seed(5)
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                          init_lora_weights=False))
    pm.save_pretrained(tmp_path / "adapter")
    res = run_revert(RevertOptions(aligned=str(t["aligned"]), finetuned=str(tmp_path / "adapter"),
                                   harmful=[str(files / "harm.txt")], rounds=1, per_round=0.1, rollback=False,
                                   refusal_text=REFUSAL, device="cpu", out=str(tmp_path / "o")))
    out = tmp_path / "o"
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
    assert res.manifest["revert"]["output"] == MERGED_NOTE
    assert any("merged checkpoint" in r.message for r in caplog.records)
    trio = open_trio(t["aligned"], tmp_path / "adapter")
    assert isinstance(trio.finetuned, LoraFinetune)
    new, al = weights(out), weights(t["aligned"])
    names = [m["name"] for m in res.manifest["modules"]]
    assert names and all("q_proj" in n or "v_proj" in n for n in names)   # only what the adapter changes
    for n in new:
        merged = trio.finetuned.get(n)
        reverted = new[n] != merged
        assert torch.equal(new[n][reverted], al[n][reverted]), n
        if n not in names:
            assert torch.equal(new[n], merged), n


def test_bad_inputs_are_named(llama_trio, files, tmp_path):
    t = llama_trio
    common = dict(aligned=str(t["aligned"]), finetuned=str(t["finetuned"]), harmful=[str(files / "harm.txt")],
                  device="cpu", out=str(tmp_path / "o"))
    with pytest.raises(InputError, match="need task examples"):
        run_revert(RevertOptions(**common))                                  # rollback on, no --task
    (tmp_path / "one.jsonl").write_text(json.dumps({"prompt": "one plus one", "answer": "two"}))
    with pytest.raises(InputError, match="at least 2"):
        run_revert(RevertOptions(**common, task=[str(tmp_path / "one.jsonl")]))
    with pytest.raises(InputError, match="cosine-layer 9"):
        run_revert(RevertOptions(**common, loss="cosine", cosine_layer=9, rollback=False))
    with pytest.raises(InputError, match="needs --out"):
        run_revert(RevertOptions(**{**common, "out": None}, rollback=False))
    assert not (tmp_path / "o").exists()


def test_cli_revert_end_to_end(llama_trio, files, tmp_path, capsys):
    from fgsn.cli import main

    t = llama_trio
    code = main(["revert", "--aligned", str(t["aligned"]), "--finetuned", str(t["finetuned"]), "--harmful",
                 str(files / "harm.txt"), "--task", str(files / "task.jsonl"), "--rounds", "2", "--per-round", "0.01",
                 "--compensate", "task", "--device", "cpu", "--out", str(tmp_path / "o")])
    assert code == 0
    text = capsys.readouterr().out
    assert "parameters reverted" in text and "validation task NLL" in text and "compensated" in text
    man = json.loads((tmp_path / "o" / "fgsn-manifest.json").read_text())
    assert man["method"] == "revert" and man["options"]["rounds"] == 2 and len(man["revert"]["rounds"]) == 2
    assert main(["revert", "--aligned", str(t["aligned"]), "--finetuned", str(t["finetuned"]), "--harmful",
                 str(files / "harm.txt"), "--rounds", "0", "--out", str(tmp_path / "x")]) == 2


def test_api_revert(llama_trio, files, tmp_path):
    import fgsn.api as api

    t = llama_trio
    res = api.revert(aligned=str(t["aligned"]), finetuned=str(t["finetuned"]), harmful=[str(files / "harm.txt")],
                     rounds=1, per_round=0.01, rollback=False, device="cpu", out=str(tmp_path / "o"))
    assert res.out == tmp_path / "o" and res.manifest["method"] == "revert" and 0 < res.modified_fraction < 0.01
