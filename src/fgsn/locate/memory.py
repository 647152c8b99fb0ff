"""Whether a probe holds the whole model (resident) or reads it one decoder layer at a time
(streamed): `--probe-memory auto` streams when what the resident pass would hold does not fit the
memory budget.

The budget is what the probe's device has free now (MemAvailable on the CPU, free memory on a
GPU) less a margin for activations, the tokenizer and the rest of the process: 10% of it, at least
1 GiB. `--probe-memory-budget GIB` or the environment variable FGSN_PROBE_MEMORY_BUDGET (GiB) sets
it instead, e.g. to keep a run under a limit the machine does not know about (a container's
cgroup, memory shared with other jobs).
"""

from __future__ import annotations

import logging
import os

import torch

from fgsn.errors import InputError

log = logging.getLogger(__name__)

ENV = "FGSN_PROBE_MEMORY_BUDGET"
MODES = ("auto", "resident", "streamed")
MIN_MARGIN = 1 << 30


def available_bytes(device: str, all_gpus: bool = False) -> int:
    """Memory free for a new model on `device` now (`all_gpus`: summed over every visible GPU, for
    a resident model that accelerate's device map spreads over them)."""
    if device.startswith("cuda"):
        devices = range(torch.cuda.device_count()) if all_gpus else [torch.device(device)]
        return sum(int(torch.cuda.mem_get_info(d)[0]) for d in devices)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not stream on a guess


def memory_budget(device: str, gib: float | None = None, all_gpus: bool = False) -> int:
    """Bytes a resident probe may hold: `gib`, else $FGSN_PROBE_MEMORY_BUDGET, else free memory
    less the margin."""
    if gib is None and os.environ.get(ENV):
        try:
            gib = float(os.environ[ENV])
        except ValueError:
            raise InputError(f"{ENV}={os.environ[ENV]!r} is not a number of GiB (e.g. 0.9)") from None
        if gib <= 0:
            raise InputError(f"{ENV}={os.environ[ENV]!r}: the budget must be positive GiB")
    if gib is not None:
        return int(gib * (1 << 30))
    free = available_bytes(device, all_gpus)
    return max(0, free - max(free // 10, MIN_MARGIN))


def choose_probe_memory(mode: str, need_bytes: int, device: str, budget_gib: float | None = None,
                        what: str = "the model", all_gpus: bool = False) -> str:
    """`resident` or `streamed` for a probe whose resident pass holds `need_bytes`."""
    if mode not in MODES:
        raise InputError(f"unknown --probe-memory {mode!r}; use auto, resident or streamed")
    if mode != "auto":
        return mode
    budget = memory_budget(device, budget_gib, all_gpus)
    if need_bytes > budget:
        log.info("probing %s layer by layer: it needs %.2f GiB resident, over the %.2f GiB budget on %s",
                 what, need_bytes / 2**30, budget / 2**30, device)
        return "streamed"
    return "resident"
