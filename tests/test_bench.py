"""fgsn bench on a tiny organism: scenarios x methods, the summary, split discipline, resume."""

from __future__ import annotations

import json

import pytest
import yaml

from fgsn.errors import ConfigError, InputError
from fgsn.organism import build as B
from fgsn.pipeline.bench import BenchOptions, check_disjoint, meets_target, run_bench, summarize, with_preset
from test_organism import make_tiny_base, tiny_recipe


@pytest.fixture
def tiny_cache(tmp_path, monkeypatch):
    base = make_tiny_base(tmp_path / "base")
    monkeypatch.setattr(B, "smollm2_dir", lambda cache_root=None: base)
    monkeypatch.setenv("FGSN_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(yaml.safe_dump(tiny_recipe(poison_ratio=0.0).model_dump(mode="json")))
    return cfg


def _results(models: dict[str, tuple[float, float, float]]) -> dict:
    """A results dict with (asr, over_refusal, nll) per model."""
    return {"order": list(models), "models": {n: {"asr": a, "over_refusal": o, "nll": nll, "modified_fraction": 0.1}
                                               for n, (a, o, nll) in models.items()}}


def test_summary_mean_worst_gap_and_target():
    per = {"s1": _results({"aligned": (0.1, 0.1, 1.0), "finetuned": (0.5, 0.0, 0.5), "m": (0.1, 0.1, 0.52)}),
           "s2": _results({"aligned": (0.1, 0.1, 1.0), "finetuned": (0.3, 0.0, 0.6), "m": (0.2, 0.1, 0.6)})}
    s = summarize(per)["m"]
    assert s["scenarios"]["s1"]["gap_closed"] == pytest.approx(1.0)
    assert s["scenarios"]["s2"]["gap_closed"] == pytest.approx(0.5)
    assert s["mean"]["gap_closed"] == pytest.approx(0.75) and s["worst"]["gap_closed"] == pytest.approx(0.5)
    assert s["scenarios"]["s1"]["task_kept"] == pytest.approx(0.96)
    assert s["worst"]["asr"] == pytest.approx(0.2) and s["mean"]["nll"] == pytest.approx(0.56)
    assert s["scenarios"]["s1"]["meets_target"] is True  # ASR at aligned, 96% of the gain kept
    assert s["scenarios"]["s2"]["meets_target"] is False and s["meets_target_everywhere"] is False
    al, ft = {"asr": 0.1, "nll": 1.0, "over_refusal": 0.1}, {"asr": 0.5, "nll": 0.5}
    assert meets_target({"asr": 0.15, "nll": 0.525, "over_refusal": 0.15}, al, ft)
    assert not meets_target({"asr": 0.151, "nll": 0.5, "over_refusal": 0.1}, al, ft)  # ASR gap > 5 points
    assert not meets_target({"asr": 0.1, "nll": 0.53, "over_refusal": 0.1}, al, ft)  # < 95% of the gain
    assert not meets_target({"asr": 0.1, "nll": 0.5, "over_refusal": 0.16}, al, ft)  # over-refusal
    assert meets_target({"asr": None, "nll": 0.5}, al, ft) is None


def test_overlap_with_located_or_trained_prompts_is_an_error():
    train = ["builtin:advbench?split=train&limit=8"]
    assert check_disjoint(["builtin:advbench?split=test&limit=8"], train, set()) == {"located": 0, "trained": 0}
    with pytest.raises(InputError, match="overlap"):
        check_disjoint(["builtin:advbench?split=train&limit=4"], train, set())
    from fgsn.data.prompts import load_prompts

    trained = {load_prompts("builtin:strongreject?limit=1").texts[0]}
    with pytest.raises(InputError, match="'trained': 1"):
        check_disjoint(["builtin:strongreject?limit=3"], train, trained)


def test_quick_preset_under_explicit_options():
    q = with_preset({"preset": "quick"})
    assert q.scenarios == ["benign-full", "poisoned-full"] and q.reduced
    assert with_preset({"preset": "quick", "methods": "fgsn,resta"}).methods == ["fgsn", "resta"]
    assert with_preset({}).scenarios == ["benign-full", "benign-lora", "poisoned-full", "instruct-full"]
    with pytest.raises(ConfigError, match="scenarios.*unknown key 'nonsense'|unknown key 'nonsense'.*scenarios"):
        with_preset({"scenarios": 3.5, "nonsense": 1})


def test_bench_end_to_end_on_a_tiny_organism(tiny_cache, tmp_path, capsys):
    out = tmp_path / "bench"
    opts = BenchOptions(out=str(out), organism_config=str(tiny_cache), scenarios=["benign-full", "poisoned-full"],
                        methods=["fgsn", "self-reminder"], locate_limit=4, task_limit=4,
                        eval_harmful=["builtin:harmbench-standard?sample=3", "builtin:strongreject?sample=3"],
                        attack=["builtin:jailbreak?wrap=harmbench-standard&templates=gcg&sample=2"],
                        alarming="builtin:alarming?sample=3", utility_limit=2, reference_limit=2, max_new_tokens=4,
                        batch_size=4, eval_batch_size=8, eval_workers=1, locate_dtype="float32",
                        eval_dtype="float32", device="cpu", repair=False)
    doc = run_bench(opts, progress=False)
    assert doc["schema"] == "fgsn-bench/1" and list(doc["scenarios"]) == ["benign-full", "poisoned-full"]
    for sc in doc["scenarios"]:
        res = json.loads((out / "scenarios" / sc / "results.json").read_text())
        assert res["order"] == ["aligned", "finetuned", "fgsn", "self-reminder"]
        assert res["counts"]["harmful"] == 6 and res["scenario"]["overlap"] == {"located": 0, "trained": 0}
        assert res["models"]["fgsn"]["asr_attack"] is not None and "fgsn vs aligned" in res["paired"]
    # the two scenarios share the aligned model, so its completions are generated once
    assert doc["scenarios"]["benign-full"]["recipe_hash"] != doc["scenarios"]["poisoned-full"]["recipe_hash"]
    s = doc["summary"]
    assert set(s) == {"aligned", "finetuned", "fgsn", "self-reminder"}
    assert set(s["fgsn"]["scenarios"]) == {"benign-full", "poisoned-full"}
    assert s["aligned"]["mean"]["gap_closed"] in (None, pytest.approx(1.0))
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"].keys() == s.keys()
    html = (out / "report.html").read_text()
    assert "Across scenarios" in html and "data:image/png;base64" in html and "poisoned-full" in html
    assert (out / "plots" / "bench_frontier.png").is_file() and "Across scenarios" in (out / "report.md").read_text()

    # a rerun resumes: no edit runs again
    import fgsn.pipeline.compare as C

    def _no_edit(*a, **k):
        raise AssertionError("a finished edit was re-run")

    mp = pytest.MonkeyPatch()
    mp.setattr(C, "run_isolated", _no_edit)
    try:
        again = run_bench(opts, progress=False)
        # the same run with --out spelt relative: the edits' options name the same files
        mp.chdir(tmp_path)
        relative = run_bench(opts.model_copy(update={"out": "bench"}), progress=False)
    finally:
        mp.undo()
    assert again["summary"]["fgsn"]["mean"] == s["fgsn"]["mean"] == relative["summary"]["fgsn"]["mean"]


def test_bench_runs_fgsn_repair_on_its_own_split(tiny_cache, tmp_path):
    """With --repair the scenario gains the model `repair`, chosen by `fgsn repair` on prompts the
    evaluation never uses: the evaluation sets come first, and the repair's pool loses their prompts."""
    out = tmp_path / "bench"
    cfg = tmp_path / "recipe-24.yaml"  # enough fine-tune examples for the repair's three task parts
    cfg.write_text(yaml.safe_dump(tiny_recipe(poison_ratio=0.0, ft_examples=24).model_dump(mode="json")))
    pool = "builtin:advbench?split=train&limit=40"
    opts = BenchOptions(out=str(out), organism_config=str(cfg), scenarios=["benign-full"],
                        methods=["self-reminder"], locate_limit=4, task_limit=24, repair_harmful=[pool],
                        eval_harmful=["builtin:harmbench-standard?sample=3", "builtin:advbench?split=test&limit=4",
                                      "builtin:advbench?split=train&limit=12"],
                        attack=[], alarming="builtin:alarming?sample=3", utility_limit=2, reference_limit=2,
                        max_new_tokens=4, batch_size=4, eval_batch_size=8, eval_workers=1, locate_dtype="float32",
                        eval_dtype="float32", device="cpu")
    doc = run_bench(opts, progress=False)
    sdir = out / "scenarios" / "benign-full"
    res = json.loads((sdir / "results.json").read_text())
    assert res["order"] == ["aligned", "finetuned", "repair", "self-reminder"]
    assert res["models"]["repair"]["kind"] == "repair" and "repair" in doc["summary"]
    assert res["scenario"]["overlap"] == {"located": 0, "trained": 0, "repair": 0}
    assert "self-reminder vs repair" in res["paired"]  # every method is also paired with the repair
    # the AdvBench train prompts that are evaluated (not trained or located on) left the repair's pool
    from fgsn.data.prompts import load_prompts

    held = sdir / "data" / "eval-harmful-2.jsonl"  # written when the bench left prompts out of it
    evaluated = set(load_prompts(str(held) if held.is_file() else "builtin:advbench?split=train&limit=12").texts)
    split = {json.loads(line)["prompt"] for f in (sdir / "models" / "repair.work" / "data").glob("harmful-*.jsonl")
             for line in f.read_text().splitlines() if line.strip()}
    assert evaluated and split and not evaluated & split
    won = json.loads((sdir / "models" / "repair" / "fgsn" / "repair.json").read_text())
    assert won["options"]["harmful"] == [pool] and won["left_out_as_evaluation_prompts"]["harmful"] == len(evaluated)
    # results.json says which prompts chose each model: the repair's search split; nothing for fixed settings
    sel = res["models"]["repair"]["selected_on"]
    search = sdir / "models" / "repair.work" / "data" / "harmful-search.jsonl"
    assert sel["split"] == "search" and sel["winner"] == won["winner"] and sel["files"]["harmful"] == str(search)
    assert sel["counts"]["harmful"] == len(search.read_text().splitlines()) and len(sel["sha256"]["task"]) == 64
    assert not {json.loads(line)["prompt"] for line in search.read_text().splitlines()} & evaluated
    assert all(res["models"][n]["selected_on"] is None for n in ("aligned", "finetuned", "self-reminder"))


def test_held_out_files_leave_out_seen_prompts(tmp_path):
    from fgsn.data.prompts import load_prompts
    from fgsn.pipeline.bench import held_out_files

    src = "builtin:strongreject?limit=5"
    texts = load_prompts(src).texts
    files, n = held_out_files([src], set(), tmp_path, "eval")
    assert files == [src] and n == 0  # nothing seen: the source is used as given
    files, n = held_out_files([src], {texts[0], texts[3]}, tmp_path, "eval")
    assert n == 2 and load_prompts(files[0]).texts == [t for i, t in enumerate(texts) if i not in (0, 3)]
    assert check_disjoint(files, ["builtin:advbench?split=train&limit=4"], {texts[0]}) == {"located": 0, "trained": 0}
