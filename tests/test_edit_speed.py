"""The streamed edit's speed paths: the read-ahead thread (`fgsn.models.prefetch`) and the edit
device. Reading ahead or not, and on CPU or CUDA, the checkpoint is the same; a failing read in
the thread is an error in the caller, never a hang."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from fgsn.cli import main
from fgsn.errors import IntegrityError
from fgsn.models.checkpoint import Checkpoint
from fgsn.models.prefetch import prefetched

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import synth  # noqa: E402

# -- the prefetch helper -----------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_prefetched_yields_every_item_in_order(depth):
    assert list(prefetched(range(20), lambda k: k * k, depth)) == [(k, k * k) for k in range(20)]


@pytest.mark.parametrize("depth", [1, 2])
def test_prefetch_holds_at_most_depth_items_ahead(depth):
    loaded = []
    ahead = []
    for k, _ in prefetched(range(12), lambda k: loaded.append(k) or k, depth):
        time.sleep(0.02)  # a slow consumer: the reader runs as far ahead as it may
        ahead.append(len(loaded) - (k + 1))
    assert max(ahead) == depth and min(ahead) >= 0


def test_prefetch_overlaps_reading_with_the_callers_work():
    def load(k):
        time.sleep(0.05)  # like a read: releases the GIL
        return k

    t = time.perf_counter()
    for _ in prefetched(range(8), load, 1):
        time.sleep(0.05)
    overlapped = time.perf_counter() - t
    assert overlapped < 0.8 * 8 * 0.1, overlapped  # in turn it would take 0.8 s


def test_an_error_in_the_reading_thread_is_raised_at_its_item():
    def load(k):
        if k == 3:
            raise IntegrityError("truncated read of item 3")
        return k

    got = []
    with pytest.raises(IntegrityError, match="item 3"):
        for k, _ in prefetched(range(10), load, 1):
            got.append(k)
    assert got == [0, 1, 2]


@pytest.mark.parametrize("how", ["error", "close"])
def test_the_reading_thread_stops_when_the_caller_stops(how):
    before = {t.ident for t in threading.enumerate()}
    it = prefetched(range(1000), lambda k: k, 2, name="fgsn-prefetch-test")
    next(it)
    if how == "error":
        with pytest.raises(ValueError):
            it.throw(ValueError("the caller failed"))
    else:
        it.close()
    left = [t for t in threading.enumerate() if t.ident not in before and t.name == "fgsn-prefetch-test"]
    assert not left


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_reading_thread_that_dies_silently_is_an_error_not_a_hang(monkeypatch):
    import fgsn.models.prefetch as P

    def lost(self, item, *a, **k):
        raise MemoryError("no memory for the result")  # even the error report cannot be handed over

    monkeypatch.setattr(P.queue.Queue, "put", lost)
    t = time.perf_counter()
    with pytest.raises(RuntimeError, match="ended without a result"):
        list(prefetched(range(3), lambda k: k, 1))
    assert time.perf_counter() - t < 5


# -- the edit end to end -----------------------------------------------------------------------


def run(*args) -> int:
    return main([str(a) for a in args])


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.glob("*.safetensors"))}


@pytest.fixture(scope="module")
def bf16_trio(tmp_path_factory):
    """A bfloat16 Llama trio (benchmarks/synth.py) with a saved locate run of random masks."""
    root = tmp_path_factory.mktemp("edit-speed")
    trio = synth.write_trio(synth.LlamaShape.get("tiny"), root / "trio")
    return trio, synth.write_locate_run(trio, root / "locate", [1, 2], density=0.2)


def project(trio, run_dir, out, *extra):
    return run("project", "--base", trio["base"], "--aligned", trio["aligned"], "--finetuned", trio["finetuned"],
               "--locate-run", run_dir, "--out", out, *extra)


def test_prefetch_on_and_off_give_byte_identical_checkpoints(bf16_trio, tmp_path):
    trio, run_dir = bf16_trio
    outs = {}
    for depth in (0, 1, 2):
        outs[depth] = tmp_path / f"p{depth}"
        assert project(trio, run_dir, outs[depth], "--prefetch", depth, "--edit-device", "cpu") == 0
    ref = shard_bytes(outs[0])
    assert ref and all(shard_bytes(outs[d]) == ref for d in (1, 2))
    manifests = {(outs[d] / "fgsn-manifest.json").read_bytes() for d in outs}
    assert len(manifests) == 1  # how the edit ran is not in the manifest ...
    import json

    info = json.loads((outs[2] / "fgsn" / "run.json").read_text())
    assert info["prefetch"] == 2 and info["edit_device"] == "cpu"  # ... but in run.json
    ft = Checkpoint(trio["finetuned"])
    out = Checkpoint(outs[0])
    assert out.names == ft.names and all(out.dtype(n) == torch.bfloat16 for n in out.names)
    assert any(not torch.equal(out.get(n), ft.get(n)) for n in out.names)  # the edit did something


def test_prefetch_with_several_shards(bf16_trio, tmp_path):
    trio, run_dir = bf16_trio
    a, b = tmp_path / "a", tmp_path / "b"
    assert project(trio, run_dir, a, "--prefetch", "0", "--max-shard-gb", "0.0002") == 0
    assert project(trio, run_dir, b, "--prefetch", "2", "--max-shard-gb", "0.0002") == 0
    assert len(shard_bytes(a)) > 1 and shard_bytes(a) == shard_bytes(b)


def test_a_failed_read_during_the_edit_is_an_error_not_a_hang(bf16_trio, tmp_path, monkeypatch, capsys):
    trio, run_dir = bf16_trio
    real = Checkpoint.get

    def failing(self, name):
        if name == "model.layers.2.mlp.up_proj.weight" and "finetuned" in str(self.path):
            raise IntegrityError(f"{self.path}: unexpected end of file while reading {name}")
        return real(self, name)

    monkeypatch.setattr(Checkpoint, "get", failing)
    t = time.perf_counter()
    before = set(threading.enumerate())
    assert project(trio, run_dir, tmp_path / "o", "--prefetch", "1") == 2
    assert time.perf_counter() - t < 60
    assert not [t for t in set(threading.enumerate()) - before if t.name == "fgsn-prefetch"]  # stopped
    assert "unexpected end of file while reading model.layers.2.mlp.up_proj.weight" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing half-written appears


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_edit_device_cuda_without_cuda_is_a_clear_error(bf16_trio, tmp_path, capsys, device):
    trio, run_dir = bf16_trio
    assert project(trio, run_dir, tmp_path / "o", "--edit-device", device) == 2
    err = capsys.readouterr().err
    assert f"--edit-device {device} asked for, but no CUDA device is available; use --edit-device cpu" in err
    assert not (tmp_path / "o").exists()


def test_unknown_edit_device_is_refused(bf16_trio, tmp_path, capsys):
    trio, run_dir = bf16_trio
    assert project(trio, run_dir, tmp_path / "o", "--edit-device", "gpu") == 2
    assert "unknown edit device 'gpu'" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_edit_on_cuda_matches_cpu_to_float_rounding(bf16_trio, tmp_path):
    trio, run_dir = bf16_trio
    assert project(trio, run_dir, tmp_path / "cpu", "--edit-device", "cpu") == 0
    assert project(trio, run_dir, tmp_path / "gpu", "--edit-device", "cuda") == 0
    a, b = Checkpoint(tmp_path / "cpu"), Checkpoint(tmp_path / "gpu")
    for n in a.names:
        x, y = a.get(n), b.get(n)
        assert y.dtype == x.dtype
        # bf16 outputs of float32 maths: at most one bf16 step apart
        torch.testing.assert_close(y.float(), x.float(), rtol=2**-7, atol=1e-6)
