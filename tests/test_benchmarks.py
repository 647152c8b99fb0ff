"""Fast checks of the benchmark helpers in benchmarks/: the synthetic trio and locate run are what
`fgsn project` accepts, the naive reference edit gives fgsn's numbers, the proposed core fixes are
bit-identical to the shipped code, the floors copy the fine-tuned weights, and the report renders."""

from __future__ import annotations

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
import proposed  # noqa: E402
import report  # noqa: E402
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


def project_cli(trio, run, out, *, patched: bool = False) -> None:
    from fgsn.cli import main

    args = ["project", "--base", trio["base"], "--aligned", trio["aligned"], "--finetuned", trio["finetuned"],
            "--locate-run", run, "--out", out]
    if patched:
        proposed.apply()
        try:
            assert main([str(a) for a in args]) == 0
        finally:
            proposed.restore()
    else:
        assert main([str(a) for a in args]) == 0


def test_synthetic_locate_run_is_accepted_and_naive_edit_equals_fgsn(tiny, tmp_path):
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
        assert got[k].dtype == torch.bfloat16
        if k not in masks:
            assert torch.equal(got[k], ft[k]) and torch.equal(naive[k], ft[k])
            continue
        assert torch.equal(got[k][~masks[k]], ft[k][~masks[k]])
        changed += int((got[k] != ft[k]).sum())
        # same maths in float32; only the summation order differs before the bf16 rounding
        diff = (got[k].float() - naive[k].float()).abs()
        assert float(diff.max()) <= float(got[k].float().abs().max()) * 2**-7
        assert int((diff > 0).sum()) <= 0.01 * masks[k].sum()
    assert changed > 0


def test_naive_edit_equals_fgsn_on_float32_models(llama_trio, tmp_path):
    run = synth.write_locate_run(llama_trio, tmp_path / "locate", [1, 2], density=0.3)
    project_cli(llama_trio, run, tmp_path / "out")
    got = weights(tmp_path / "out")
    naive = naive_edit.naive_edit(llama_trio["base"], llama_trio["aligned"], llama_trio["finetuned"], run)
    ft = weights(llama_trio["finetuned"])
    assert any(not torch.equal(got[k], ft[k]) for k in got)
    for k in got:
        torch.testing.assert_close(got[k], naive[k], rtol=1e-5, atol=1e-7)


def test_proposed_fixes_are_bit_identical_end_to_end(tiny, tmp_path):
    trio, _ = tiny
    run = synth.write_locate_run(trio, tmp_path / "locate", [0, 3], density=0.1)
    project_cli(trio, run, tmp_path / "a")
    project_cli(trio, run, tmp_path / "b", patched=True)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "fgsn" / "masks.safetensors").read_bytes() == \
        (tmp_path / "b" / "fgsn" / "masks.safetensors").read_bytes()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("density", [0.0005, 0.3])
def test_proposed_project_tensor_matches_shipped(dtype, density):
    from fgsn.edit.projection import ProjectionSettings, project_tensor

    g = torch.Generator().manual_seed(0)
    base = torch.randn(48, 20, generator=g)
    al = base + 0.1 * torch.randn(48, 20, generator=g)
    ft = al + 0.05 * torch.randn(48, 20, generator=g)
    mask = torch.rand(48, 20, generator=g) < density
    mask[5] = True  # a fully masked row, and (at low density) many rows without any
    parts = [("a", 16), ("b", 32)]
    for proj in ("safelora", "svd"):
        s = ProjectionSettings(proj, None, 0.9)
        kw = dict(w_aligned=al.to(dtype), w_finetuned=ft.to(dtype), w_base=base.to(dtype), mask=mask, parts=parts,
                  settings=s)
        want, e1 = project_tensor("w", 0, "m", **kw)
        got, e2 = proposed.project_tensor("w", 0, "m", **kw)
        assert torch.equal(want, got)
        assert (e1.masked, e1.changed) == (e2.masked, e2.changed)
        assert e2.projected_norm == pytest.approx(e1.projected_norm, rel=1e-5)
        assert e2.masked_delta_norm == pytest.approx(e1.masked_delta_norm, rel=1e-5)
        assert torch.equal(kw["w_finetuned"], ft.to(dtype)) and torch.equal(kw["w_aligned"], al.to(dtype))


def test_proposed_check_finite_still_catches_nan_and_inf():
    from fgsn.edit import projection, run
    from fgsn.errors import NumericalError

    proposed.apply()
    try:
        for bad in (float("nan"), float("inf"), -float("inf")):
            t = torch.zeros(10, 10, dtype=torch.bfloat16)
            t[3, 4] = bad
            with pytest.raises(NumericalError):
                proposed.check_finite(t, "w", "fine-tuned")
        proposed.check_finite(torch.full((4,), 3e38), "w", "fine-tuned")  # the sum overflows, entries are fine
    finally:
        proposed.restore()
    assert run.check_finite is projection.check_finite


@pytest.mark.parametrize("mode", ["safetensors", "bytes"])
def test_floors_write_the_finetuned_weights(tiny, tmp_path, mode):
    trio, _ = tiny
    floor.main(["--mode", mode, "--base", str(trio["base"]), "--aligned", str(trio["aligned"]),
                "--finetuned", str(trio["finetuned"]), "--out", str(tmp_path / "o")])
    got, ft = weights(tmp_path / "o"), weights(trio["finetuned"])
    assert set(got) == set(ft) and all(torch.equal(got[k], ft[k]) for k in ft)


def fake_results() -> dict:
    def v(wall, rss):
        return {"wall_s": wall, "peak_rss_mb": rss, "runs": [{"wall_s": wall, "peak_rss_mb": rss}]}

    def size(shape, k):
        s = synth.LlamaShape.get(shape)
        variants = {"fgsn": v(10 * k, 900), "fgsn+fixes": v(6 * k, 700), "naive": v(30 * k, 5000 * k),
                    "floor_safetensors": v(5 * k, 2000 * k), "floor_bytes": v(3 * k, 30)}
        if k == 2:
            variants.update(fgsn_first_run=v(14, 900), fgsn_all_layers=v(30, 1500), **{"fgsn+fixes_all_layers": v(20, 720)})
        return {"shape": shape, "params": s.params, "model_bytes": s.bytes_bf16(), "largest_tensor_mb": 100.0,
                "largest_edited_tensor_fp32_mb": 44.0, "layers_masked": [1, 2], "mask_density": 0.05,
                "modified_fraction": 0.01, "repeats": 2, "naive_note": None, "variants": variants,
                "checks": {"naive_vs_fgsn": {"differing": 3, "entries": 100, "max_diff_bf16_ulps": 1.0},
                           "fixes_vs_fgsn": {"bit_identical": True, "differing": 0}}}

    passes = {n: {"tokens": 100, "tokens_per_s": t, "vs_forward": 100 / t, "median_s": 1.0}
              for n, t in (("forward", 100), ("probe_layers", 95), ("probe_modules", 110), ("forward_to_2", 300),
                           ("probe_modules_2", 280))}
    return {"command": "python benchmarks/run.py --quick", "started": "now",
            "machine": {"cpus": 2, "cpu": "cpu", "mem_total_gb": 24, "torch": "2"}, "cold_cache": True,
            "load_start": [1, 1, 1], "load_end": [1, 1, 1], "total_s": 60, "startup": v(2.0, 230),
            "edit": [size("tiny", 1), size("small", 2)],
            "probes": [{"model": "m", "params": 1e8, "layers": 4, "stop_layer": 2, "passes": passes,
                        "process": {"peak_rss_mb": 500}}]}


def test_report_fills_the_marked_section_and_keeps_prose(tmp_path):
    res = tmp_path / "r.json"
    res.write_text(json.dumps(fake_results()))
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.parent.mkdir()
    doc.write_text(f"# B\n\nprose before\n\n{report.BEGIN}\nold\n{report.END}\n\nprose after\n")
    report.main(["--results", str(res), "--doc", str(doc)])
    text = doc.read_text()
    assert "prose before" in text and "prose after" in text and "old" not in text
    assert "| tiny |" in text and "bit-identical" in text and "70B" in text
    assert (tmp_path / "docs" / "benchmarks.png").stat().st_size > 1000
