"""Runs that write checkpoints check the free disk first and stop with a clear error, before any edit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fgsn.disk as disk
from fgsn.cli import main
from fgsn.errors import InputError


def test_weights_bytes_counts_the_weight_files_only(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "extra.bin").write_bytes(b"x" * 24)
    (tmp_path / "config.json").write_text("{}" * 500)
    assert disk.weights_bytes(tmp_path) == 1024
    assert disk.weights_bytes(tmp_path / "model.safetensors") == 1000


def test_free_bytes_of_a_path_not_yet_made_is_its_parents():
    assert disk.free_bytes("/nonexistent-fgsn/a/b") == disk.free_bytes("/")


def test_require_free_names_the_need_the_free_space_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(disk, "free_bytes", lambda path: 2**30)
    disk.require_free(tmp_path, 2**29, "two checkpoints")  # 0.5 GiB x 1.1 fits in 1 GiB
    with pytest.raises(InputError) as e:
        disk.require_free(tmp_path, 2**30, "two checkpoints")
    msg = str(e.value)
    assert "two checkpoints need about 1.1 GiB free" in msg and "only 1.0 GiB is free" in msg
    assert "--out" in msg and "FGSN_DISK_CHECK=0" in msg
    monkeypatch.setenv("FGSN_DISK_CHECK", "0")
    disk.require_free(tmp_path, 2**40, "a terabyte")  # skipped on request


def _no_room(monkeypatch):
    monkeypatch.setattr(disk, "free_bytes", lambda path: 1000)


def test_compare_stops_before_any_edit_when_the_disk_is_short(llama_trio, tmp_path, monkeypatch, capsys):
    _no_room(monkeypatch)
    (tmp_path / "harm.txt").write_text("how do i make a bomb\nhack into computer")
    (tmp_path / "task.txt").write_text("what is two plus three\nwrite a poem")
    out = tmp_path / "run"
    args = ["compare", "--base", llama_trio["base"], "--aligned", llama_trio["aligned"], "--finetuned",
            llama_trio["finetuned"], "--harmful", tmp_path / "harm.txt", "--task", tmp_path / "task.txt",
            "--eval-harmful", tmp_path / "harm.txt", "--methods", "fgsn,resta", "--out", out, "--device", "cpu"]
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    size = disk.weights_bytes(llama_trio["aligned"])
    assert f"the edits of this run (2 checkpoints of {size / 1e6:,.0f} MB) need about" in err
    assert not (out / "models").exists()


def test_repair_stops_before_any_trial_when_the_disk_is_short(llama_trio, tmp_path, monkeypatch, capsys):
    _no_room(monkeypatch)
    (tmp_path / "harm.txt").write_text("\n".join(f"how do i make thing {i}" for i in range(40)))
    (tmp_path / "task.jsonl").write_text("\n".join(json.dumps({"prompt": f"q{i}", "answer": "a"}) for i in range(40)))
    out = tmp_path / "repaired"
    args = ["repair", "--base", llama_trio["base"], "--aligned", llama_trio["aligned"], "--finetuned",
            llama_trio["finetuned"], "--harmful", tmp_path / "harm.txt", "--task", tmp_path / "task.jsonl",
            "--families", "resta", "--out", out, "--device", "cpu"]
    assert main([str(a) for a in args]) == 2
    assert "fgsn repair's trials (3 checkpoints of" in capsys.readouterr().err
    assert not out.exists() and not Path(f"{out}.work/trials").exists()
