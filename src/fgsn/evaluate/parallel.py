"""Several models evaluated at once, one process per model at a time (`--model-workers N`).

Why: on a GPU box with several cards, N models that each fit on one card are evaluated side by
side (worker i sees only card i % #cards). On CPU, a small model's decoding steps
are too small to keep every core busy from one process: two processes of half the threads each
evaluate six of the demo's SmolLM2-135M models 1.29x faster than one process with all of them
(2 cores; benchmarks/demo_speed.py).

Workers are spawned (never forked: a forked CUDA or OpenMP runtime is unsafe), write their
completions and NLLs into the shared content-keyed cache as they go (each shard is written
atomically, so concurrent writers cannot corrupt it) and hand back a small summary. Their own
progress bars are silenced, so that N bars do not overwrite each other; the parent shows one bar
over the models and a log line per finished model.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from fgsn.errors import FgsnError

log = logging.getLogger(__name__)


def spreads_over_gpus(device: str) -> bool:
    """Workers take one GPU each, unless the user pinned a device (cuda:N: they all share it)."""
    from fgsn.models.loading import resolve_device

    return device in ("auto", "cuda") and resolve_device(device) == "cuda"


def default_model_workers(device: str) -> int:
    """A good --model-workers for small models: one per GPU, or two on a CPU with two cores or more
    (a 135M model's decoding steps leave cores idle; see the module doc)."""
    if spreads_over_gpus(device):
        return max(1, len(_visible_gpus()))
    from fgsn.models.loading import resolve_device

    if resolve_device(device) != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(2, cores)


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _init_worker(slots, gpus: list[str], threads: int, log_level: int) -> None:
    slot = slots.get()
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=log_level, format=f"%(levelname)s [worker {slot}] %(name)s: %(message)s")


def run_parallel(fn: Callable[..., Any], jobs: dict[str, tuple], workers: int, uses_gpu: bool) -> dict[str, Any]:
    """`{name: fn(*args)}` for every job, in `workers` spawned processes.

    `fn` must be a module-level function (it is pickled by reference). The first job that
    raises cancels the ones not yet started, and its exception is raised here.
    """
    import torch
    from tqdm.auto import tqdm

    workers = max(1, min(workers, len(jobs)))
    gpus = _visible_gpus() if uses_gpu else []
    threads = max(1, torch.get_num_threads() // workers) if not gpus else torch.get_num_threads()
    ctx = multiprocessing.get_context("spawn")
    slots = ctx.Queue()
    for i in range(workers):
        slots.put(i)
    log.info("evaluating %d models in %d processes (%s)", len(jobs), workers,
             f"GPUs {','.join(gpus)}" if gpus else f"{threads} threads each")
    results: dict[str, Any] = {}
    start = time.monotonic()
    bar = tqdm(total=len(jobs), desc="evaluate models", unit="model", leave=False)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(slots, gpus, threads, logging.getLogger().getEffectiveLevel()))
    try:
        futures = {pool.submit(fn, *args): name for name, args in jobs.items()}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                name = futures[f]
                results[name] = f.result()  # re-raises a worker's exception
                bar.update(1)
                log.info("%s evaluated (%.0f s since the start)", name, time.monotonic() - start)
    except BaseException as e:
        # Do not wait for the models still running: their finished batches are in the cache.
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        if isinstance(e, BrokenProcessPool):
            raise FgsnError(
                "an evaluation worker process died before finishing its model: out of memory (lower --model-workers "
                "or --batch-size), killed, or, from a Python script, evaluate(model_workers>1) called without the "
                "`if __name__ == \"__main__\":` guard that spawned processes need") from e
        raise
    finally:
        bar.close()
    pool.shutdown(wait=True)
    return results
