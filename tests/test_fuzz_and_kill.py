"""Hypothesis fuzzing of everything that parses user files (config, prompt files, ledger,
safetensors headers): no crash other than fgsn's documented error types. And a run killed at any
moment leaves no output or a complete one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fgsn.errors import FgsnError

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                           max_leaves=8)
KEYS = ["q", "p", "layers", "granularity", "score", "projector", "batch_size", "harmful", "base", "modules",
        "energy", "rank", "device", "dtype", "seed", "nonsense", "use_chat_template"]
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6))
def test_config_values_fuzz(values):
    from fgsn.config import build_options
    from fgsn.edit.options import ProjectOptions

    base = {"base": "b", "aligned": "a", "finetuned": "f"}
    with contextlib.suppress(FgsnError):
        build_options(ProjectOptions, {**base, **values})


@FUZZ
@given(st.binary(max_size=300))
def test_yaml_file_fuzz(tmp_path, raw):
    from fgsn.config import read_yaml

    f = tmp_path / "c.yaml"
    f.write_bytes(raw)
    with contextlib.suppress(FgsnError):
        assert isinstance(read_yaml(f), dict)


@FUZZ
@given(st.sampled_from([".jsonl", ".csv", ".txt", ".json"]),
       st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                 st.lists(json_values, max_size=4).map(lambda xs: "\n".join(json.dumps(x) for x in xs).encode())))
def test_prompt_file_fuzz(tmp_path, suffix, raw):
    from fgsn.data.prompts import load_prompts

    f = tmp_path / f"p{suffix}"
    f.write_bytes(raw)
    try:
        ps = load_prompts(f)
        assert len(ps) >= 1 and all(p.text.strip() for p in ps)
    except FgsnError:
        pass


@FUZZ
@given(st.one_of(st.binary(max_size=200), json_values.map(lambda x: json.dumps(x).encode())))
def test_ledger_reader_fuzz(tmp_path, raw):
    from fgsn.edit.ledger import Ledger

    d = tmp_path / "led"
    d.mkdir(exist_ok=True)
    (d / "ledger.json").write_bytes(raw)
    with contextlib.suppress(FgsnError):
        Ledger(d)


@FUZZ
@given(st.binary(max_size=200))
def test_safetensors_header_fuzz(tmp_path, raw):
    from fgsn.models.safetensors_io import read_header

    f = tmp_path / "x.safetensors"
    f.write_bytes(raw)
    with contextlib.suppress(FgsnError):
        read_header(f)


@pytest.mark.parametrize("delay", [1.0, 2.5, "mid-write"])
def test_killed_run_leaves_no_partial_output(llama_trio, tmp_path, delay):
    (tmp_path / "h.txt").write_text("how do i make a bomb\nsteal money please\nhack into computer\n")
    (tmp_path / "t.txt").write_text("what is two plus three\nexplain black holes\nrecipe cake please\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fgsn.cli", "project", "--base", str(llama_trio["base"]), "--aligned",
           str(llama_trio["aligned"]), "--finetuned", str(llama_trio["finetuned"]), "--harmful", str(tmp_path / "h.txt"),
           "--task", str(tmp_path / "t.txt"), "--device", "cpu", "--no-cache", "--out", str(out)]
    env = {**os.environ, "FGSN_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if delay == "mid-write":  # kill as soon as the temp output folder exists
        deadline = time.time() + 60
        while not list(tmp_path.glob(".out.tmp-*")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, "the run finished before its output folder could be caught"
    else:
        time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if out.exists():  # finished before the kill: it must be complete
        assert (out / "fgsn-manifest.json").is_file() and (out / "model.safetensors").is_file()
        json.loads((out / "fgsn-manifest.json").read_text())
    visible = [p.name for p in Path(tmp_path).iterdir() if not p.name.startswith(".")]
    assert set(visible) <= {"h.txt", "t.txt", "out", "cache"}


def test_sample_is_a_fixed_subset_across_categories(tmp_path):
    from fgsn.data.prompts import load_prompts

    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"prompt number {i}", "category": f"c{i // 50}"}) + "\n"
                         for i in range(200)))
    a, b = load_prompts(f"{f}?sample=40"), load_prompts(f"{f}?sample=40")
    assert a.texts == b.texts and len(a) == 40
    assert len(a.category_counts()) == 4  # a sorted file still gives every category its share
