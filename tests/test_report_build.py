"""results.json, report.md and report.html built from hand-made run folders with known answers."""

from __future__ import annotations

import json
import math

import pytest

from fgsn.errors import InputError, IntegrityError
from fgsn.evaluate.metrics import wilson_interval
from fgsn.evaluate.results import compute_results
from helpers_eval import check_html, harmful_row, report_from_records, write_manifest, write_run

OPENAI = {"judge": "openai", "model": "gpt-x", "rubric": "fgsn-harm-1", "success_score": 3}


def _rows_before():
    return ([harmful_row("weapons", True, 5), harmful_row("weapons", True, 4), harmful_row("weapons", False, 1),
             harmful_row("fraud", True, 3), harmful_row("fraud", None, None)]
            + [{"kind": "alarming", "category": "homonyms", "refused": r} for r in (True, False, False, False)]
            + [{"kind": "utility", "set": "gsm", "category": "gsm", "correct": c} for c in (True, True, False)]
            + [{"kind": "utility", "set": "arith", "category": "arith", "correct": True}])


def _rows_after():
    return ([harmful_row("weapons", False, 1), harmful_row("weapons", False, 1, kw=True),
             harmful_row("weapons", False, 2), harmful_row("fraud", True, 5), harmful_row("fraud", False, 1)]
            + [{"kind": "alarming", "category": "homonyms", "refused": r} for r in (True, True, False, False)])


@pytest.fixture()
def run(tmp_path):
    before = tmp_path / "ckpt-before"
    before.mkdir()
    after = write_manifest(tmp_path / "ckpt-after", ledger_step=1)
    return write_run(tmp_path / "run", {"before": (before, _rows_before()), "after": (after, _rows_after())},
                     judge=OPENAI, nll={"before": {"mean_nll": math.log(5.0), "tokens": 40, "items": 2}})


def test_results_have_known_numbers(run):
    res = compute_results(run)
    b, a = res["models"]["before"], res["models"]["after"]
    assert b["asr"] == 3 / 4 and b["n_harmful"] == 5 and b["n_judged"] == 4
    assert b["asr_ci"] == list(wilson_interval(3, 4))
    assert b["harmfulness"] == pytest.approx((5 + 4 + 1 + 3) / 4)
    assert b["harmfulness_rate"] == 1 / 4
    assert b["categories"]["weapons"]["asr"] == 2 / 3 and b["categories"]["weapons"]["n"] == 3
    assert b["categories"]["fraud"] == {"asr": 1.0, "asr_ci": list(wilson_interval(1, 1)), "n": 2, "n_judged": 1,
                                        "asr_keyword": 1.0, "harmfulness": 3.0}
    assert b["over_refusal"] == 0.25 and b["over_refusal_categories"]["homonyms"] == {"rate": 0.25, "n": 4}
    assert b["utility"] == 3 / 4 and b["utility_tasks"] == {"arith": {"accuracy": 1.0, "n": 1},
                                                             "gsm": {"accuracy": 2 / 3, "n": 3}}
    assert b["nll"] == pytest.approx(math.log(5.0)) and b["perplexity"] == pytest.approx(5.0)
    assert b["modified_fraction"] is None and b["manifest"] is False and b["ledger_step"] is None
    assert a["asr"] == 1 / 5 and a["asr_keyword"] == 2 / 5 and a["over_refusal"] == 0.5
    # Not measured is null, never 0.
    assert a["utility"] is None and a["utility_ci"] is None and a["nll"] is None and a["perplexity"] is None
    assert a["modified_fraction"] == 0.0467 and a["modified_fraction_edited"] == 0.12
    assert a["method"] == "fgsn" and a["ledger_step"] == 1 and a["layers"] == [1, 2]
    assert res["order"] == ["before", "after"] and res["schema"] == "fgsn-results/1"


def test_keyword_judge_gives_no_harmfulness(tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    run = write_run(tmp_path / "run", {"m": (m, [harmful_row("x", True, None), harmful_row("x", False, None)])})
    r = compute_results(run)["models"]["m"]
    assert r["harmfulness"] is None and r["harmfulness_rate"] is None and r["asr"] == 0.5
    assert r["over_refusal"] is None and r["categories"]["x"]["harmfulness"] is None


def test_report_files_are_written_and_html_is_self_contained(run, capsys):
    res = report_from_records(run, echo=True)
    out = capsys.readouterr().out
    assert "before" in out and "after" in out and "75.0%" in out and "ASR by harm category" in out
    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    pngs = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert pngs == ["category_asr.png", "continual_asr.png", "layer_gap_after.png", "mask_density_after.png"]
    md = (run / "report.md").read_text()
    for name in pngs:
        assert f"](plots/{name})" in md
    assert "| before |" in md and "4.67%" in md and "gpt-x" in md
    html = (run / "report.html").read_text()
    parsed = check_html(html)
    assert len(parsed.images) == len(pngs)
    text = " ".join(parsed.text)
    assert "ASR by harm category" in text and "Over-refusal by category" in text and "Utility by task" in text
    assert "plots/" not in html  # nothing refers to files beside it


def test_html_escapes_untrusted_text(tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    run = write_run(tmp_path / "run", {"m": (m, [harmful_row("<script>alert(1)</script>", True)])})
    report_from_records(run)
    html = (run / "report.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    check_html(html)


def test_no_manifest_no_manifest_plots(tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    run = write_run(tmp_path / "run", {"m": (m, [harmful_row("x", True)])})
    report_from_records(run)
    assert sorted(p.name for p in (run / "plots").glob("*.png")) == ["category_asr.png"]


def test_continual_models_are_ordered_by_ledger_step(tmp_path):
    models = {}
    for name, step, succ in [("s2", 2, False), ("s1", 1, True)]:
        folder = write_manifest(tmp_path / name, ledger_step=step)
        models[name] = (folder, [harmful_row("a", succ), harmful_row("b", not succ)])
    run = write_run(tmp_path / "run", models)
    res = report_from_records(run)
    assert [res["models"][n]["ledger_step"] for n in ("s1", "s2")] == [1, 2]
    assert (run / "plots" / "continual_asr.png").is_file()
    # One layer search shared by both steps is drawn once.
    assert len(list((run / "plots").glob("layer_gap_*.png"))) == 1
    # Rebuilt without the manifests: their figures disappear from the folder too.
    for name in ("s1", "s2"):
        (tmp_path / name / "fgsn-manifest.json").unlink()
    report_from_records(run)
    assert sorted(p.name for p in (run / "plots").glob("*.png")) == ["category_asr.png"]


def test_broken_run_folders_have_clear_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        compute_results(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no eval.json"):
        compute_results(tmp_path / "empty")
    m = tmp_path / "m"
    m.mkdir()
    run = write_run(tmp_path / "run", {"m": (m, [harmful_row("x", True)])})
    (run / "models" / "m" / "records.jsonl").write_text('{"kind": "harmful"\n')
    with pytest.raises(IntegrityError, match="corrupt"):
        compute_results(run)
    (run / "eval.json").write_text("{not json")
    with pytest.raises(IntegrityError, match="corrupt"):
        compute_results(run)


def test_bad_manifest_is_ignored_not_fatal(tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    (m / "fgsn-manifest.json").write_text("{oops")
    run = write_run(tmp_path / "run", {"m": (m, [harmful_row("x", True)])})
    assert compute_results(run)["models"]["m"]["modified_fraction"] is None


def test_the_report_renders_results_json_and_computes_nothing(run, tmp_path):
    """write_report reads RUNDIR/results.json as it is (fgsn.evaluate wrote it): an edited number
    there is the number in the report; without results.json it says how to get one."""
    from fgsn.evaluate.results import write_results
    from fgsn.report import write_report

    results = write_results(run)
    results["models"]["before"]["asr"] = 0.123456
    (run / "results.json").write_text(json.dumps(results))
    assert write_report(run)["models"]["before"]["asr"] == 0.123456
    assert "12.3%" in (run / "report.md").read_text() and (run / "report.html").is_file()
    (tmp_path / "bare").mkdir()
    with pytest.raises(InputError, match="no results.json"):
        write_report(tmp_path / "bare")


def test_report_cli(run, capsys):
    from fgsn.cli import build_parser

    args = build_parser(load=["report"]).parse_args(["report", str(run)])
    assert args.func(args) == 0
    assert "before" in capsys.readouterr().out
    assert (run / "report.html").is_file() and (run / "results.json").is_file()


def test_mask_density_grid_per_layer_and_module():
    from fgsn.report.plots import density_grid

    mods = [{"name": "model.layers.1.self_attn.q_proj.weight", "layer": 1, "module": "self_attn.q_proj",
             "numel": 100, "masked": 5},
            {"name": "model.layers.1.self_attn.q_proj.bias", "layer": 1, "numel": 100, "masked": 15},
            {"name": "model.layers.4.mlp.up_proj.weight", "numel": 400, "masked": 0},  # untouched: no layer field
            {"name": "lm_head.weight", "numel": 10, "masked": 1},  # no layer at all: skipped
            {"name": "model.layers.2.mlp.up_proj.weight", "layer": 2, "numel": 0, "masked": 0}]  # empty: skipped
    types, layers, grid = density_grid(mods)
    assert types == ["q_proj", "up_proj"] and layers == [1, 4]
    assert grid[0, 0] == 10.0 and grid[1, 1] == 0.0
    assert str(grid[0, 1]) == "nan" and str(grid[1, 0]) == "nan"
    assert density_grid([]) is None and density_grid("junk") is None
