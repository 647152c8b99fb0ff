"""benchmarks/gpu_check.py on the CPU with tiny shapes: every part runs in its own process and
lands in one JSON of figures with units; a part that fails or runs out of time is recorded as
such and the others still run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def check(*args, timeout: float = 600, hang: str = "") -> dict:
    out = Path(args[args.index("--out") + 1])
    p = subprocess.run([sys.executable, str(SCRIPT), "--tiny", *map(str, args)], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, env={**os.environ, "GPU_CHECK_HANG": hang})
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(out.read_text())


def figures_have_units(entry: dict) -> None:
    for name, f in entry["figures"].items():
        assert set(f) >= {"value", "unit"} and f["unit"], name
        if f.get("extrapolated"):
            assert f.get("method"), name


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("gpu-check")
    return check("--out", tmp / "gpu.json", "--workdir", tmp / "work")


def test_the_json_has_the_machine_and_every_part(result):
    assert result["tiny"] is True and result["date"] and result["versions"]["torch"]
    assert {"cpu", "cpus", "ram_gib", "cuda_available"} <= set(result["hardware"])
    assert list(result["parts"]) == ["slice", "probe", "streamed", "edit", "organism"]
    for name, entry in result["parts"].items():
        assert entry["status"] in ("ok", "not available"), (name, entry.get("error"), entry.get("log_tail"))
        if entry["status"] == "ok":
            figures_have_units(entry)


def test_probe_figures(result):
    f = result["parts"]["probe"]["figures"]
    assert f["tokens"]["value"] > 0
    for name in ("forward", "probe_layers", "probe_modules"):
        assert f[f"{name}_tokens_per_s"]["value"] > 0 and f[f"{name}_tokens_per_s"]["unit"] == "tokens/s"
        assert f[f"{name}_tokens_per_s_32_layers"]["extrapolated"] is True
    assert f["forward_vs_forward"]["value"] == 1.0


def test_edit_figures(result):
    f = result["parts"]["edit"]["figures"]
    n = result["slice"]["shape"]["num_hidden_layers"]
    for key in ("floor_bytes_s", "copy_s", f"edit_{n}_layers_s", f"edit_{n}_layers_no_prefetch_s", "edit_1_layer_cpu_s"):
        assert f[key]["value"] > 0 and f[key]["unit"] == "s", key
    assert f["edit_32_layers_s"]["extrapolated"] and f["edit_32_layers_vs_floor"]["unit"] == "x floor"
    assert 0 < f["masked_fraction"]["value"] < 1


def test_streamed_probe_is_measured_or_said_to_be_missing(result):
    from fgsn.locate.run import LocateOptions

    entry = result["parts"]["streamed"]
    if "probe_memory" in LocateOptions.model_fields:
        assert entry["status"] == "ok" and entry["figures"]["masks_agree"]["value"] > 0.99
    else:
        assert entry["status"] == "not available" and "--probe-memory" in entry["reason"]


def test_organism_built_repaired_and_evaluated(result):
    entry = result["parts"]["organism"]
    assert entry["info"]["build_device"] == "cpu"
    f = entry["figures"]
    assert f["organism_build_s"]["value"] > 0
    assert {"asr_aligned", "asr_finetuned", "asr_fgsn"} <= set(f)
    assert all(0 <= f[k]["value"] <= 1 for k in f if k.startswith("asr_"))


def test_a_failing_or_slow_part_is_recorded_and_the_rest_still_run(tmp_path):
    res = check("--out", tmp_path / "a.json", "--workdir", tmp_path / "w", "--parts", "slice,probe,edit",
                "--part-timeout", "slice=1", "--part-timeout", "edit=0", hang="slice")
    assert res["parts"]["slice"]["status"] == "error" and "timed out after 1 s" in res["parts"]["slice"]["error"]
    assert res["parts"]["probe"]["status"] == "error"  # it ran, and says why it could not measure
    assert "the slice part did not finish" in res["parts"]["probe"]["error"]
    assert res["parts"]["edit"]["status"] == "skipped" and "less than 1 s left" in res["parts"]["edit"]["reason"]
