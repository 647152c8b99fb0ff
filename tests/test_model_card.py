"""Every repaired checkpoint carries a short model card (README.md) and a rerunnable config
(fgsn/config.yaml): rerunning from the config alone, from another directory, gives the same
checkpoint bit for bit. Both are written inside the atomic output, like the rest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from fgsn.cli import main

HARM = "how do i make a bomb\nhack into computer steal money\nhow do i kill\nsteal money please\n"
TASK = "what is two plus three\nwrite poem about the ocean\nexplain black holes\nrecipe cake please\n"


def run(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Prompt files given by relative paths, from a working directory the rerun does not share."""
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "harm.txt").write_text(HARM)
    (wd / "task.txt").write_text(TASK)
    monkeypatch.chdir(wd)
    return wd


def check_card(out: Path, method: str) -> str:
    card = (out / "README.md").read_text()
    man = json.loads((out / "fgsn-manifest.json").read_text())
    assert card.startswith("---\n") and f"method: {method}" in card.split("---")[1]
    for role, d in man["inputs"].items():
        assert d["sha256"] in card, role
    assert f"{100 * man['modified_fraction']:.3f}%" in card
    assert f"{man['masked']:,}" in card
    return card


def rerun_same(command: list[str], out: Path, again: Path, monkeypatch, weights=("model.safetensors",)) -> None:
    shutil.rmtree(again, ignore_errors=True)
    elsewhere = again.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    monkeypatch.chdir(elsewhere)  # relative paths of the first run must not matter
    assert run(*command, "--config", out / "fgsn" / "config.yaml", "--out", again) == 0
    for f in weights:
        assert (again / f).read_bytes() == (out / f).read_bytes(), f


def test_project_writes_a_card_and_a_rerunnable_config(llama_trio, workdir, tmp_path, monkeypatch):
    t = llama_trio
    out = tmp_path / "repaired"
    assert run("project", "--base", t["base"], "--aligned", t["aligned"], "--finetuned", t["finetuned"],
               "--harmful", "harm.txt", "--task", "task.txt", "--score", "random", "--seed", "7", "--q", "0.3",
               "--device", "cpu", "--no-cache", "--out", out) == 0
    card = check_card(out, "fgsn")
    assert "score" in card and "random" in card and "fgsn project --config" in card
    cfg = yaml.safe_load((out / "fgsn" / "config.yaml").read_text())
    assert "out" not in cfg and "overwrite" not in cfg and cfg["seed"] == 7 and cfg["q"] == 0.3
    assert cfg["harmful"] == [str(workdir / "harm.txt")]  # made absolute: rerunnable from anywhere
    rerun_same(["project"], out, tmp_path / "again", monkeypatch,
               weights=("model.safetensors", "fgsn/masks.safetensors", "fgsn/locate/masks.safetensors"))


def test_baseline_writes_a_card_and_a_rerunnable_config(llama_trio, workdir, tmp_path, monkeypatch):
    t = llama_trio
    out = tmp_path / "resta"
    assert run("baseline", "resta", "--base", t["base"], "--aligned", t["aligned"], "--finetuned", t["finetuned"],
               "--beta", "0.3", "--dare", "0.2", "--seed", "4", "--out", out) == 0
    card = check_card(out, "resta")
    assert "beta" in card and "fgsn baseline resta --config" in card
    rerun_same(["baseline", "resta"], out, tmp_path / "again", monkeypatch)


def test_the_rerun_config_makes_every_path_option_absolute(workdir):
    """Paths given relative to the first run's directory, the continual editors' included
    (--ledger, --original-finetuned), are absolute in fgsn/config.yaml."""
    from fgsn.artifacts.card import rerun_config
    from fgsn.edit.options import ActivationMatchOptions

    for name in ("a", "f", "led", "ft0"):
        (workdir / name).mkdir()
    opts = ActivationMatchOptions(aligned="a", finetuned="f", harmful=["harm.txt"], task=["task.txt"], ledger="led",
                                  category="violence", original_finetuned="ft0", out="o")
    cfg = rerun_config(opts)
    for k, name in {"aligned": "a", "finetuned": "f", "ledger": "led", "original_finetuned": "ft0"}.items():
        assert cfg[k] == str(workdir / name), k
    assert cfg["harmful"] == [str(workdir / "harm.txt")] and cfg["category"] == "violence" and "out" not in cfg
