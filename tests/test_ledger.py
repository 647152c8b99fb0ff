"""The continual ledger's union of earlier masks: each step's mask file is read once however many
tensors are asked for, the unions stay bit-packed, and the result is the OR of the steps' masks."""

from __future__ import annotations

import pytest
import torch

from fgsn.artifacts.masks import PackedMasks
from fgsn.edit import ledger as L
from fgsn.errors import IntegrityError

SHAPES = {f"model.layers.{i}.mlp.up_proj.weight": (6 + i, 5) for i in range(8)}
MODELS = {"base": "b" * 64, "aligned": "a" * 64, "finetuned": "f" * 64}


def step_masks(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    # each step masks a different subset of the tensors (the last tensor: none)
    return {n: torch.rand(s, generator=g) < 0.2 for k, (n, s) in enumerate(SHAPES.items())
            if (k + step) % 3 != 0 and k < len(SHAPES) - 1}


@pytest.fixture
def ledger_dir(tmp_path):
    led = L.Ledger(tmp_path / "led")
    led.path.mkdir()
    for step in range(4):
        pm = PackedMasks()
        for n, m in step_masks(step).items():
            pm.put(n, m)
        led.record(f"cat{step}", pm, {"masked": 0}, MODELS, f"out{step}", f"{step}" * 64)
    return led.path


def test_union_reads_each_step_once_and_matches_the_or(ledger_dir, monkeypatch):
    reads: list[str] = []
    real_load = PackedMasks.load.__func__

    def counting_load(cls, path):
        reads.append(str(path))
        return real_load(cls, path)

    monkeypatch.setattr(PackedMasks, "load", classmethod(counting_load))
    led = L.Ledger(ledger_dir)
    got = {n: led.union(n, s) for n, s in SHAPES.items()}
    again = {n: led.union(n, s) for n, s in SHAPES.items()}
    assert len(reads) == len(led.steps) == 4  # not tensors x steps
    assert len(set(reads)) == 4
    for n, s in SHAPES.items():
        want = torch.zeros(s, dtype=torch.bool)
        for step in range(4):
            want |= step_masks(step).get(n, torch.zeros(s, dtype=torch.bool))
        assert torch.equal(got[n], want) and torch.equal(again[n], want) and got[n].dtype == torch.bool
    assert not bool(got[list(SHAPES)[-1]].any())  # a tensor no step masked


def test_unions_are_kept_packed(ledger_dir):
    led = L.Ledger(ledger_dir)
    for n, s in SHAPES.items():
        led.union(n, s)
    held = led.unions()
    assert isinstance(held, PackedMasks)
    assert sum(held._data[n][0].numel() for n in held) <= sum((s[0] * s[1] + 7) // 8 for s in SHAPES.values())


def test_a_new_step_is_part_of_the_next_union(ledger_dir):
    led = L.Ledger(ledger_dir)
    n, s = next(iter(SHAPES.items()))
    before = led.union(n, s)
    pm = PackedMasks()
    pm.put(n, torch.ones(s, dtype=torch.bool))
    led.record("more", pm, {"masked": 0}, MODELS, "out9", "9" * 64)
    assert not bool(before.all()) and bool(led.union(n, s).all())


def test_union_with_another_shape_is_an_integrity_error(ledger_dir):
    led = L.Ledger(ledger_dir)
    n, (r, c) = next(iter(SHAPES.items()))
    with pytest.raises(IntegrityError, match=n):
        led.union(n, (r + 1, c))
