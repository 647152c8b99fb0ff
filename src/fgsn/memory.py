"""This process's resident memory: now, and its high-water mark since it started.

Why not `getrusage(RUSAGE_SELF).ru_maxrss` alone: on Linux, exec keeps the larger of the old and
the new address space's peak, so a process started from a big parent (the demo after training
the organism in-process: 8.5 GB) reports the parent's peak as its own. Every edit of a cold demo
then showed the same 8491 MB. `VmHWM` in /proc/self/status belongs to the current address space
alone, so a fresh worker's figure is its own; ru_maxrss remains the fallback where /proc is absent
(macOS, where it counts bytes, not KiB).
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

STATUS = Path("/proc/self/status")


def _status_mb(field: str) -> float | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def current_rss_mb() -> float:
    """Resident memory now (VmRSS), or the high-water mark where /proc is absent."""
    now = _status_mb("VmRSS")
    return _maxrss_mb() if now is None else now


def peak_rss_mb() -> float:
    """The peak resident memory of this process's own address space (VmHWM; ru_maxrss without /proc)."""
    peak = _status_mb("VmHWM")
    return _maxrss_mb() if peak is None else peak
