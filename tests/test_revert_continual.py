"""Continual reversion (`fgsn revert --ledger DIR --category NAME`): step 1 == the plain reversion
byte for byte; a later step never touches what an earlier one reverted, the task compensation
included (which, without the ledger, does move them); the ledger's records; bad inputs; the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from fgsn.edit.revert import RevertOptions, run_revert
from fgsn.errors import InputError, LedgerError
from test_reversion import REFUSAL, TASK, weights

CAT_A = ["how do i make a bomb", "how do i kill", "make a bomb then kill"]
CAT_B = ["hack into computer steal money", "steal money please", "how do i hack into computer"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("revc")
    (d / "a.txt").write_text("\n".join(CAT_A))
    (d / "b.txt").write_text("\n".join(CAT_B))
    (d / "task.jsonl").write_text("\n".join(json.dumps({"prompt": p, "answer": a}) for p, a in TASK))
    return d


def revert(trio, files, out, harmful="a.txt", **kw):
    opts = dict(aligned=str(trio["aligned"]), finetuned=str(kw.pop("finetuned", trio["finetuned"])),
                harmful=[str(files / harmful)], task=[str(files / "task.jsonl")], rounds=1, per_round=0.05,
                refusal_text=REFUSAL, rollback=False, device="cpu", out=str(out))
    opts.update(kw)
    return run_revert(RevertOptions(**opts))


@pytest.fixture(scope="module")
def steps(llama_trio, files, tmp_path_factory):
    t = llama_trio
    d = tmp_path_factory.mktemp("revsteps")
    led = str(d / "led")
    out = {"dir": d,
           "plain": revert(t, files, d / "plain"),
           "s1": revert(t, files, d / "s1", ledger=led, category="violence")}
    out["s2"] = revert(t, files, d / "s2", harmful="b.txt", finetuned=d / "s1", ledger=led, category="cyber",
                       compensate="task")
    out["free"] = revert(t, files, d / "free", harmful="b.txt", finetuned=d / "s1", compensate="task")  # no ledger
    return out


def test_step_one_is_the_plain_reversion_byte_for_byte(steps):
    d = steps["dir"]
    assert (d / "s1" / "model.safetensors").read_bytes() == (d / "plain" / "model.safetensors").read_bytes()
    m = steps["s1"].manifest
    assert m["ledger_step"] == 0 and m["categories"]["violence"]["masked"] == m["masked"] > 0
    assert steps["plain"].manifest["ledger_step"] is None and "default" in steps["plain"].manifest["categories"]


def test_a_later_step_never_touches_what_an_earlier_one_reverted(llama_trio, steps):
    t, d = llama_trio, steps["dir"]
    ft, w1, w2, free = (weights(x) for x in (t["finetuned"], d / "s1", d / "s2", d / "free"))
    moved_free = 0
    for n in ft:
        m1 = w1[n] != ft[n]                      # what step 1 reverted
        assert torch.equal(w2[n][m1], w1[n][m1]), n
        moved_free += int((free[n][m1] != w1[n][m1]).sum())
    # without the ledger the compensation moves some of them: the freezing is what keeps them
    assert moved_free > 0
    m2 = steps["s2"].manifest
    assert m2["ledger_step"] == 1 and m2["categories"]["cyber"]["overlap"] == 0 and m2["masked"] > 0
    assert all("frozen" in r for r in m2["revert"]["compensation"])
    assert sum(r["frozen"] for r in m2["revert"]["compensation"]) > 0


def test_the_ledger_records_each_revert_step(llama_trio, steps):
    from fgsn.artifacts.masks import PackedMasks
    from fgsn.edit.ledger import Ledger
    from fgsn.models.checkpoint import Checkpoint

    t, d = llama_trio, steps["dir"]
    led = Ledger(d / "led")
    assert led.editor == "revert" and led.categories() == ["violence", "cyber"]
    assert led.doc["models"]["current"] == Checkpoint(d / "s2").sha256
    s1, s2 = led.steps
    ft, w1 = weights(t["finetuned"]), weights(d / "s1")
    m1 = PackedMasks.load(d / "led" / s1["mask_file"])
    m2 = PackedMasks.load(d / "led" / s2["mask_file"])
    for n in m1:  # llama stores (out, in), the masks' layout
        assert torch.equal(m1.get(n), w1[n] != ft[n])
        assert not bool((m1.get(n) & m2.get(n)).any())
    assert s1["masked"] == steps["s1"].manifest["masked"] and s2["overlap"] == 0
    assert s2["safety_loss_final"] <= s2["safety_loss_start"] and s2["editor"] == "revert"


def test_bad_inputs_name_the_fix(llama_trio, files, steps, tmp_path):
    import shutil

    t, d = llama_trio, steps["dir"]
    shutil.copytree(d / "led", tmp_path / "led")
    led = str(tmp_path / "led")
    with pytest.raises(InputError, match="--category"):
        revert(t, files, tmp_path / "o", ledger=led)
    with pytest.raises(InputError, match="already step 1 .*new --category"):
        revert(t, files, tmp_path / "o", harmful="b.txt", finetuned=d / "s2", ledger=led, category="cyber")
    with pytest.raises(LedgerError, match="pass the latest step's output"):
        revert(t, files, tmp_path / "o", finetuned=d / "s1", ledger=led, category="more")
    with pytest.raises(InputError, match="holds steps of `fgsn revert`.*new --ledger"):
        from fgsn.edit.activation_match_run import run_activation_match
        from fgsn.edit.options import ActivationMatchOptions

        run_activation_match(ActivationMatchOptions(aligned=str(t["aligned"]), finetuned=str(d / "s2"),
                                                    harmful=[str(files / "a.txt")], task=[str(files / "task.jsonl")],
                                                    ledger=led, category="more", out=str(tmp_path / "o"),
                                                    device="cpu"))
    assert not (tmp_path / "o").exists()


def test_cli_two_categories(llama_trio, files, tmp_path, capsys):
    from fgsn.cli import main

    t = llama_trio
    common = ["revert", "--aligned", t["aligned"], "--task", files / "task.jsonl", "--rounds", "1", "--per-round",
              "0.02", "--no-rollback", "--refusal-text", REFUSAL, "--device", "cpu", "--ledger", tmp_path / "led"]
    assert main([str(a) for a in [*common, "--finetuned", t["finetuned"], "--harmful", files / "a.txt",
                                  "--category", "violence", "--out", tmp_path / "s1"]]) == 0
    args2 = [*common, "--finetuned", tmp_path / "s1", "--harmful", files / "b.txt", "--category", "cyber", "--out",
             tmp_path / "s2"]
    assert main([str(a) for a in args2]) == 0
    assert "ledger step 1, category cyber" in capsys.readouterr().out
    man = json.loads((tmp_path / "s2" / "fgsn-manifest.json").read_text())
    card = (tmp_path / "s2" / "README.md").read_text()
    assert (f"category `cyber`: {man['categories']['cyber']['masked']:,} entries reverted to the aligned value, 0 of "
            "them reverted by earlier steps (ledger step 1)") in card
    assert "projected" not in card and "fgsn revert --config" in card
    assert main([str(a) for a in [*args2[:-1], tmp_path / "s3"]]) == 2
    assert "already step 1" in capsys.readouterr().err and not (tmp_path / "s3").exists()
