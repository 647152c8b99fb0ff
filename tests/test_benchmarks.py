"""Fast checks of the benchmark helpers in benchmarks/: the synthetic trio and locate run are what
`fgsn project` accepts, the naive reference edit gives fgsn's output bit for bit, the floors copy the
fine-tuned weights, the output comparison and the report work (also on the results.json of a run
made before the core fixes were merged), and every fgsn name the benchmarks import exists."""

from __future__ import annotations

import ast
import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import floor  # noqa: E402
import naive_edit  # noqa: E402
import report  # noqa: E402
import run as bench_run  # noqa: E402
import synth  # noqa: E402


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-tiny")
    trio = synth.write_trio(synth.LlamaShape.get("tiny"), root / "trio")
    return trio, root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FGSN_CACHE", str(tmp_path / "cache"))


def test_shapes_match_the_real_models():
    assert synth.LlamaShape.get("tinyllama-1.1b").params == 1_100_048_384
    assert synth.LlamaShape.get("smollm2-360m").params == 361_821_120
    assert 70.5e9 < synth.LlamaShape.get("llama3.1-70b").params < 70.6e9


def project_cli(trio, run, out) -> None:
    from fgsn.cli import main

    args = ["project", "--base", trio["base"], "--aligned", trio["aligned"], "--finetuned", trio["finetuned"],
            "--locate-run", run, "--out", out]
    assert main([str(a) for a in args]) == 0


def test_synthetic_locate_run_is_accepted_and_naive_edit_is_bit_identical_to_fgsn(tiny, tmp_path):
    trio, _ = tiny
    run = synth.write_locate_run(trio, tmp_path / "locate", [1, 2], density=0.2)
    project_cli(trio, run, tmp_path / "out")
    got = weights(tmp_path / "out")
    naive = naive_edit.naive_edit(trio["base"], trio["aligned"], trio["finetuned"], run)
    ft = weights(trio["finetuned"])
    masks = naive_edit.load_masks(run)
    manifest = json.loads((tmp_path / "out" / "fgsn-manifest.json").read_text())
    assert manifest["masked"] == sum(int(m.sum()) for m in masks.values()) > 0
    assert set(got) == set(naive) == set(ft)
    changed = 0
    for k in got:
        assert got[k].dtype == naive[k].dtype == torch.bfloat16
        assert torch.equal(got[k], naive[k]), k  # same maths, same bf16 output, bit for bit
        if k not in masks:
            assert torch.equal(got[k], ft[k])
            continue
        assert torch.equal(got[k][~masks[k]], ft[k][~masks[k]])
        changed += int((got[k] != ft[k]).sum())
    assert changed > 0
    # and the benchmark's own comparison says so
    bench = tmp_path / "naive"
    naive_edit.main(["--base", str(trio["base"]), "--aligned", str(trio["aligned"]), "--finetuned",
                     str(trio["finetuned"]), "--locate-run", str(run), "--out", str(bench)])
    check = bench_run.compare_outputs(tmp_path / "out", bench)
    assert check["same_names"] and check["bit_identical"] and check["differing"] == 0
    assert check["entries"] == sum(t.numel() for t in ft.values())


def test_naive_mask_reader_agrees_with_fgsn_artifacts_masks(tiny, tmp_path):
    """naive_edit reads masks with numpy on purpose (independent of fgsn); it must see what
    fgsn.artifacts.masks.PackedMasks saved and loads."""
    from fgsn.artifacts.masks import PackedMasks, pack, unpack

    trio, _ = tiny
    run = synth.write_locate_run(trio, tmp_path / "locate", [0, 3], density=0.1)
    ours = naive_edit.load_masks(run)
    pm = PackedMasks.load(run / "masks.safetensors")
    assert set(ours) == set(pm) and len(ours) == 14
    for k, m in ours.items():
        assert m.dtype == torch.bool and tuple(m.shape) == pm.shape(k)
        assert torch.equal(m, pm.get(k))
        assert torch.equal(unpack(pack(m), tuple(m.shape)), m)
        assert 0.05 < m.float().mean() < 0.15


def test_compare_outputs_counts_differences(tiny, tmp_path):
    from safetensors.torch import save_file

    trio, _ = tiny
    ft = weights(trio["finetuned"])
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    save_file(ft, str(a / "model.safetensors"))
    k = next(n for n in ft if ft[n].dim() == 2)
    other = dict(ft)
    other[k] = ft[k].clone()
    other[k][0, :3] += 1
    save_file(other, str(b / "model.safetensors"))
    same = bench_run.compare_outputs(a, a)
    assert same["bit_identical"] and same["differing"] == 0
    diff = bench_run.compare_outputs(a, b)
    assert not diff["bit_identical"] and diff["differing"] == 3 and diff["max_diff_bf16_ulps"] > 0
    del other[k]
    (b / "model.safetensors").unlink()
    save_file(other, str(b / "model.safetensors"))
    assert bench_run.compare_outputs(a, b) == {"same_names": False}


def test_run_helpers():
    s = bench_run.summarize([{"wall_s": 3.0, "peak_rss_mb": 10.0}, {"wall_s": 1.0, "peak_rss_mb": 30.0},
                             {"wall_s": 2.0, "peak_rss_mb": 20.0}])
    assert (s["wall_s"], s["peak_rss_mb"], len(s["runs"])) == (2.0, 20.0, 3)
    shape = synth.LlamaShape.get("tinyllama-1.1b")
    est = bench_run.naive_estimate_mb(shape, list(range(8, 14)))
    # a safe upper bound (used to skip the naive edit when it would not fit): three models + every dense C;
    # the naive edit measured 4.9 GB on this shape
    assert max(3 * shape.bytes_bf16() / 2**20, 4892) < est < 16 * 1024
    m = bench_run.measure([sys.executable, "-c", "x = bytearray(200 * 2**20)"], cold=False)
    assert m["peak_rss_mb"] > 200 and m["wall_s"] > 0 and m["cold_cache"] is False
    with pytest.raises(RuntimeError):
        bench_run.measure([sys.executable, "-c", "raise SystemExit(3)"], cold=False)
    commit = bench_run.git_commit()
    assert commit is None or len(commit.split("+")[0]) >= 7


def test_benchmarks_import_only_existing_fgsn_names():
    """Core refactors (e.g. pack/unpack and the mask file moving to fgsn.artifacts.masks) must not
    leave a benchmark importing a name that no longer exists."""
    seen = 0
    for path in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fgsn":
                mod = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(mod, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                        f"{path.name}: from {node.module} import {alias.name}"
                    seen += 1
    assert seen > 10
    assert not (BENCH / "proposed.py").exists()


def test_naive_edit_equals_fgsn_on_float32_models(llama_trio, tmp_path):
    run = synth.write_locate_run(llama_trio, tmp_path / "locate", [1, 2], density=0.3)
    project_cli(llama_trio, run, tmp_path / "out")
    got = weights(tmp_path / "out")
    naive = naive_edit.naive_edit(llama_trio["base"], llama_trio["aligned"], llama_trio["finetuned"], run)
    ft = weights(llama_trio["finetuned"])
    assert any(not torch.equal(got[k], ft[k]) for k in got)
    for k in got:
        torch.testing.assert_close(got[k], naive[k], rtol=1e-5, atol=1e-7)  # float32 output: summation order shows


@pytest.mark.parametrize("mode", ["safetensors", "bytes"])
def test_floors_write_the_finetuned_weights(tiny, tmp_path, mode):
    trio, _ = tiny
    floor.main(["--mode", mode, "--base", str(trio["base"]), "--aligned", str(trio["aligned"]),
                "--finetuned", str(trio["finetuned"]), "--out", str(tmp_path / "o")])
    got, ft = weights(tmp_path / "o"), weights(trio["finetuned"])
    assert set(got) == set(ft) and all(torch.equal(got[k], ft[k]) for k in ft)


def fake_results(legacy: bool = False) -> dict:
    """Results in run.py's format; `legacy`: as written before the core fixes were merged (with the
    `fgsn+fixes` variants of benchmarks/proposed.py and their check, no commit)."""
    def v(wall, rss):
        return {"wall_s": wall, "peak_rss_mb": rss, "runs": [{"wall_s": wall, "peak_rss_mb": rss}]}

    def size(shape, k):
        s = synth.LlamaShape.get(shape)
        variants = {"fgsn": v(10 * k, 900), "naive": v(30 * k, 5000 * k),
                    "floor_safetensors": v(5 * k, 2000 * k), "floor_bytes": v(3 * k, 30)}
        checks = {"naive_vs_fgsn": {"differing": 0, "entries": 100, "max_diff_bf16_ulps": 0.0, "bit_identical": True}}
        if k == 2:
            variants.update(fgsn_first_run=v(14, 900), fgsn_all_layers=v(30, 1500))
        if legacy:
            variants["fgsn+fixes"] = v(6 * k, 777)
            if k == 2:
                variants["fgsn+fixes_all_layers"] = v(20, 778)
            checks["fixes_vs_fgsn"] = {"bit_identical": True, "differing": 0}
        return {"shape": shape, "params": s.params, "model_bytes": s.bytes_bf16(), "largest_tensor_mb": 100.0,
                "largest_edited_tensor_fp32_mb": 44.0, "layers_masked": [1, 2], "mask_density": 0.05,
                "modified_fraction": 0.01, "repeats": 2, "naive_note": None, "variants": variants,
                "checks": checks}

    passes = {n: {"tokens": 100, "tokens_per_s": t, "vs_forward": 100 / t, "median_s": 1.0}
              for n, t in (("forward", 100), ("probe_layers", 95), ("probe_modules", 110), ("forward_to_2", 300),
                           ("probe_modules_2", 280))}
    res = {"command": "python benchmarks/run.py --quick", "started": "now",
           "machine": {"cpus": 2, "cpu": "cpu", "mem_total_gb": 24, "torch": "2"}, "cold_cache": True,
           "load_start": [1, 1, 1], "load_end": [1, 1, 1], "total_s": 60, "startup": v(2.0, 230),
           "edit": [size("tiny", 1), size("small", 2)],
           "probes": [{"model": "m", "params": 1e8, "layers": 4, "stop_layer": 2, "passes": passes,
                       "process": {"peak_rss_mb": 500}}]}
    if not legacy:
        res["commit"] = "abc1234"
    return res


def render_doc(tmp_path, res: dict) -> str:
    (tmp_path / "r.json").write_text(json.dumps(res))
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.parent.mkdir(exist_ok=True)
    doc.write_text(f"# B\n\nprose before\n\n{report.BEGIN}\nold\n{report.END}\n\nprose after\n")
    report.main(["--results", str(tmp_path / "r.json"), "--doc", str(doc)])
    return doc.read_text()


def test_report_fills_the_marked_section_and_keeps_prose(tmp_path):
    text = render_doc(tmp_path, fake_results())
    assert "prose before" in text and "prose after" in text and "old" not in text
    assert "| tiny |" in text and "| small |" in text and "70B" in text
    assert "commit abc1234" in text and "bit-identical (0 of 100 entries differ)" in text
    assert "Stale" not in text and "fixes" not in text
    assert "peak RSS grows by 600 MB" in text  # masks in every layer: 1500 - 900
    assert (tmp_path / "docs" / "benchmarks.png").stat().st_size > 1000


def test_report_renders_results_from_before_the_merge_without_the_removed_variants(tmp_path):
    res = fake_results(legacy=True)
    assert report.is_legacy(res) and not report.is_legacy(fake_results())
    text = render_doc(tmp_path, res)
    assert "Stale figures" in text and "python benchmarks/run.py --out benchmarks/results.json" in text
    assert "fgsn+fixes` rows" in text  # only in the note
    assert "777" not in text and "778" not in text and "Check: fgsn+fixes" not in text
    assert "| tiny |" in text and "70B" in text


def test_report_renders_the_committed_results(tmp_path):
    res = json.loads((BENCH / "results.json").read_text())
    text = render_doc(tmp_path, res)
    assert "tinyllama-1.1b" in text and "70B" in text
    assert ("Stale figures" in text) == report.is_legacy(res)


def test_gen_length_chooses_the_shortest_length_within_the_tolerance():
    import gen_length

    shares = {24: 0.05, 32: 0.012, 48: 0.008, 64: 0.0, 128: 0.0}
    assert gen_length.choose(shares, 0.01) == 48
    assert gen_length.choose(shares, 0.05) == 24
    assert gen_length.choose(shares, 0.0) == 64


def test_bench_tables_give_gap_closed_task_kept_and_the_paired_difference():
    import bench_tables

    def model(asr, nll):
        return {"asr": asr, "asr_ci": [asr - 0.01, asr + 0.01], "asr_attack": 0.0, "over_refusal": 0.1, "nll": nll,
                "modified_fraction": 0.5}

    diff = {"asr": {"diff": -0.3, "ci": [-0.35, -0.25], "p": 2e-9}}
    doc = {"order": ["aligned", "finetuned", "repair", "irr"],
           "models": {"aligned": model(0.1, 1.1), "finetuned": model(0.5, 0.7), "repair": model(0.14, 0.74),
                      "irr": model(0.3, 0.8)},
           "paired": {"repair vs finetuned": diff, "irr vs repair": {"asr": {**diff["asr"], "diff": 0.16}}}}
    rows = {line.split(" | ")[0].lstrip("| "): line for line in bench_tables.table(doc).splitlines()[2:]}
    assert "| 90% | 90% | 50.00% |" in rows["**repair** (`fgsn repair`, defaults)"]  # (0.5-0.14)/0.4, 0.36/0.4
    assert "| 50% | 75% |" in rows["IRR"] and rows["IRR"].endswith("| +16.0 [-35.0, -25.0] p=2e-09 |")
    assert "repair -30.0 [-35.0, -25.0] p=2e-09" in rows["finetuned"] and rows["aligned"].endswith("| — |")


def test_llama_0_4b_is_the_1416_mib_float32_shape():
    shape = synth.LlamaShape.get("llama-0.4b")
    assert (shape.layers, shape.params) == (24, 371_246_080)
    assert round(4 * shape.params / 2**20) == 1416


def test_float32_trio_with_a_tokenizer_is_probed_alike_streamed_and_resident(tmp_path):
    """`--dtype float32 --tokenizer DIR` gives a trio `fgsn project` runs prompts through; the
    layer-streamed probe gives it the resident probe's output bit for bit."""
    from conftest import make_tokenizer
    from fgsn.cli import main

    make_tokenizer(tmp_path / "tok")
    trio = synth.write_trio(synth.LlamaShape.get("tiny"), tmp_path / "trio", dtype=torch.float32,
                            tokenizer=tmp_path / "tok")
    w = weights(trio["aligned"])
    assert {t.dtype for t in w.values()} == {torch.float32}
    assert json.loads((trio["aligned"] / "config.json").read_text())["dtype"] == "float32"
    assert (trio["finetuned"] / "tokenizer.json").is_file()
    (tmp_path / "harm.txt").write_text("how do i make a bomb\nhack into computer\nsteal money please\n")
    (tmp_path / "task.txt").write_text("what is two plus three\nwrite poem about the ocean\nexplain black holes\n")
    outs = {}
    for mode in ("resident", "streamed"):
        args = ["project", "--base", trio["base"], "--aligned", trio["aligned"], "--finetuned", trio["finetuned"],
                "--harmful", tmp_path / "harm.txt", "--task", tmp_path / "task.txt", "--layers", "1-2",
                "--device", "cpu", "--no-cache", "--probe-memory", mode, "--out", tmp_path / mode]
        assert main([str(a) for a in args]) == 0
        outs[mode] = weights(tmp_path / mode)
    assert all(torch.equal(outs["resident"][k], outs["streamed"][k]) for k in outs["resident"])
    assert any(not torch.equal(outs["streamed"][k], w[k]) for k in w)  # the edit did something


def test_tree_rss_sums_a_parent_and_its_child(tmp_path):
    import tree_rss

    code = ("import subprocess, sys, time; b = bytearray(80 << 20); "
            "subprocess.run([sys.executable, '-c', 'import time; b = bytearray(80 << 20); time.sleep(1.5)'])")
    res = tree_rss.measure([sys.executable, "-c", code], interval=0.02, timeline=str(tmp_path / "t.txt"))
    assert res["rc"] == 0 and res["peak_tree_rss_mib"] > 160
    assert (tmp_path / "t.txt").read_text().startswith("seconds tree_rss_mib\n")


def test_repair_search_replays_a_grid_with_the_bisection():
    from repair_search import replay

    from fgsn.pipeline.repair import FAMILIES, RepairOptions

    names = [n for n, _ in FAMILIES["activation-match"].trials()]
    asr = [0.40, 0.35, 0.30, 0.25, 0.20, 0.14, 0.13, 0.12, 0.11]  # weakest first: lam 30 ... 0.1
    nll = [0.50, 0.50, 0.51, 0.51, 0.52, 0.53, 0.58, 0.60, 0.70]
    assert len(names) == len(asr)
    doc = {"options": RepairOptions(base="b", aligned="a", finetuned="f", harmful=["h"], task=["t"], out="o",
                                    search="grid").model_dump(mode="json"),
           "references": {"aligned": {"asr": 0.1, "nll": 1.0}, "finetuned": {"asr": 0.5, "nll": 0.5}},
           "trials": {n: {"asr": a, "nll": v, "cost": i + 1.0} for i, (n, a, v) in enumerate(zip(names, asr, nll, strict=True))},
           "winner": names[5]}
    r = replay(doc)
    assert r["grid"] == r["bisect"] == names[5] and r["of"] == 9
    assert names[5] in r["scored"] and len(r["scored"]) <= 4
