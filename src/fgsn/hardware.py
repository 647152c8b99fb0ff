"""Which precision the hardware computes natively: the one rule every stage asks.

bfloat16 halves memory and, where the hardware multiplies it (CUDA GPUs, x86 CPUs with
AVX512-BF16 or AMX), roughly doubles matmul speed. Elsewhere it is emulated: on a 2-core AMD EPYC
without those flags a bf16 matmul measured 44-53x slower than float32 (torch 2.13). So training,
probes, gradients and generation use bfloat16 only where `native_bf16(device)` says so.

`FGSN_NATIVE_BF16=0` (or `1`) overrides the CPU detection, e.g. to reproduce on an AVX512-BF16
machine the precision choices a CPU without it makes. Torch is imported only for a CUDA device.
"""

from __future__ import annotations

import os
from typing import Literal

CPUINFO = "/proc/cpuinfo"
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
ENV_OVERRIDE = "FGSN_NATIVE_BF16"

Precision = Literal["bfloat16", "float32"]


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (Linux); empty where it cannot be read."""
    try:
        with open(cpuinfo or CPUINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _env_override() -> bool | None:
    raw = os.environ.get(ENV_OVERRIDE, "").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    from fgsn.errors import InputError

    raise InputError(f"{ENV_OVERRIDE}={raw!r} is not understood; use 0, 1 or auto (or unset it)")


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (x86 AVX512-BF16 or AMX). Other CPUs,
    and any where the flags cannot be read, emulate it (slower than float32)."""
    override = _env_override()
    if override is not None:
        return override
    return bool((cpu_flags() if flags is None else flags) & BF16_CPU_FLAGS)


def native_bf16(device: str) -> bool:
    """bfloat16 is native on this device: a CUDA GPU that supports it, or a CPU with the flags."""
    if device.startswith("cuda"):
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device == "cpu":
        return cpu_has_native_bf16()
    return False


def fast_precision(device: str) -> Precision:
    """The fastest precision that computes correctly at full speed on `device`."""
    return "bfloat16" if native_bf16(device) else "float32"
