"""`fgsn demo` end to end on the reduced organism (real SmolLM2 weights, real prompts; minutes on 2
CPU cores): the results schema the README promises, the continual run's shrinking edits, and the
direction of the alignment effect on held-out prompts."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

REQUIRED = ("path", "asr", "over_refusal", "utility", "modified_fraction", "nll")


def test_reduced_demo_end_to_end(tmp_path):
    from fgsn.pipeline.demo import DemoOptions, run_demo

    out = tmp_path / "demo"
    run_demo(DemoOptions(out=str(out), reduced=True, locate_limit=16, task_limit=16, eval_limit=8,
                         alarming_limit=6, utility_limit=4, reference_limit=2, max_new_tokens=24,
                         baselines=["safelora", "self-reminder"], repair_families=["resta"], repair_limit=48,
                         repair_harmful=["builtin:harmbench-val-standard"]))
    res = json.loads((out / "results.json").read_text())
    names = ["base", "aligned", "finetuned", "repair", "fgsn", "am-step1", "am-step2", "am-step3", "safelora",
             "self-reminder"]
    assert res["order"] == names
    for n in names:
        for k in REQUIRED:
            assert k in res["models"][n], (n, k)
        assert res["models"][n]["asr"] is not None and res["models"][n]["utility"] is not None
    m = res["models"]
    assert m["aligned"]["asr"] < m["base"]["asr"]
    assert 0 < m["fgsn"]["modified_fraction"] < 0.05
    assert m["self-reminder"]["modified_fraction"] == 0.0
    assert m["am-step1"]["kind"] == "activation-match-continual" and m["base"]["kind"] == "reference"
    assert m["repair"]["kind"] == "repair"
    rep = json.loads((out / "models" / "repair" / "fgsn" / "repair.json").read_text())
    assert rep["winner"].startswith("resta-") and rep["options"]["search"] == "bisect" and 1 <= len(rep["trials"]) <= 3
    # the safety SFT's refusals are fitted on, never scored; the scored parts come from HarmBench val
    scored = {json.loads(line)["prompt"] for part in ("search", "check")
              for line in (out / "models" / "repair.work" / "data" / f"harmful-{part}.jsonl").read_text().splitlines()}
    sft = {json.loads(line)["prompt"] for line in (out / "data" / "aligned-refusals.jsonl").read_text().splitlines()}
    assert scored and sft and not scored & sft

    def prompts(name: str) -> set[str]:
        return {json.loads(line)["prompt"] for line in (out / "data" / name).read_text().splitlines()}

    # the repair scores the task on a held-out draw: neither trained on nor evaluated
    val = prompts("task-heldout-validation.jsonl")
    assert rep["options"]["task_heldout"] == [str(out / "data" / "task-heldout-validation.jsonl")]
    assert val and not val & (prompts("task-all.jsonl") | prompts("reference-heldout.jsonl"))
    assert {json.loads(line)["prompt"] for line in
            (out / "models" / "repair.work" / "data" / "task-search.jsonl").read_text().splitlines()} <= val
    assert m["safelora"]["edit_wall_s"] > 0 and m["fgsn"]["edit_peak_rss_mb"] > 0
    # continual (activation matching, joint steps): every step changes the model, later dimensions less
    change = []
    for i, cat in enumerate(["Physical", "Financial and Business", "Autonomy"], 1):
        man = json.loads((out / "models" / f"am-step{i}" / "fgsn-manifest.json").read_text())
        assert man["activation_match"]["continual"]["settings"]["old_target"] == ("joint" if i > 1 else None)
        change.append(man["categories"][cat]["change_norm"])
    assert all(x > 0 for x in change) and change[1] < change[0] and change[2] < change[0], change
    report = (out / "report.md").read_text()
    assert "Continual repair" in report and "Edit cost" in report
