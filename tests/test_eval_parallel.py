"""--model-workers defaults and GPU assignment (no GPU here: CUDA is simulated)."""

from __future__ import annotations

import os
import queue

import pytest
import torch

from fgsn.evaluate import parallel


def test_cpu_default_is_two_workers_when_there_are_two_cores(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    assert parallel.default_model_workers("auto") == 2 and not parallel.spreads_over_gpus("auto")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0}, raising=False)
    assert parallel.default_model_workers("cpu") == 1


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_one_worker_per_visible_gpu(four_gpus, monkeypatch):
    assert parallel.spreads_over_gpus("auto") and parallel.default_model_workers("cuda") == 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert parallel.default_model_workers("auto") == 2
    # a pinned device is shared, not spread
    assert not parallel.spreads_over_gpus("cuda:1") and parallel.default_model_workers("cuda:1") == 1


def test_worker_slots_map_to_gpus_round_robin(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    threads = torch.get_num_threads()
    seen = []
    try:
        for slot in range(3):
            q = queue.Queue()
            q.put(slot)
            parallel._init_worker(q, ["3", "7"], threads, 30)
            seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    finally:
        torch.set_num_threads(threads)
        os.environ.pop("TQDM_DISABLE", None)
        os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    assert seen == ["3", "7", "3"]
