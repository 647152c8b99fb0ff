"""The demo's continual run with either editor, on a tiny trio: one step per AdvBench dimension on
one ledger, each step starting from the previous one's output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fgsn.pipeline.demo import DemoOptions, continual_table, run_continual


@pytest.fixture
def task(tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"add {i} and {i + 1}", "answer": f"{2 * i + 1}"}) + "\n"
                            for i in range(6)))
    return path


@pytest.mark.parametrize(("editor", "prefix"), [("fgsn", "fgsn"), ("activation-match", "am")])
def test_continual_steps_chain_on_one_ledger(llama_trio, task, tmp_path, editor, prefix):
    t = llama_trio
    cats = ["Physical", "Autonomy"]
    opts = DemoOptions(continual=cats, continual_editor=editor, continual_lam=1.0)
    common = dict(base=str(t["base"]), aligned=str(t["aligned"]), task=[str(task)], device="cpu",
                  dtype="float32", max_length=32, batch_size=4)
    steps = run_continual(opts, common, str(t["finetuned"]), "1-2", tmp_path / "models")
    assert list(steps) == [f"{prefix}-step1", f"{prefix}-step2"]
    mans = [json.loads((tmp_path / "models" / n / "fgsn-manifest.json").read_text()) for n in steps]
    assert [m["method"] for m in mans] == (["fgsn"] * 2 if editor == "fgsn" else ["activation-match"] * 2)
    # step 2 starts from step 1's output
    assert Path(mans[1]["inputs"]["finetuned"]["path"]).resolve() == Path(steps[f"{prefix}-step1"]).resolve()
    assert set(mans[1]["categories"]) >= {"Autonomy"} and mans[0]["categories"]["Physical"]["masked"] > 0
    ledger = json.loads((tmp_path / "models" / "ledger" / "ledger.json").read_text())
    assert [s["category"] for s in ledger["steps"]] == cats
    results = {"models": {n: {"asr": 0.5} for n in steps}}
    table = continual_table(results, steps)
    assert [r[1] for r in table.rows] == cats
    if editor == "activation-match":
        assert all(r[4] != "—" for r in table.rows)  # the change's size is reported
