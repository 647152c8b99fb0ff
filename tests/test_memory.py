"""The peak RSS a measured edit reports is its own process's, not the parent's that started it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fgsn.memory import current_rss_mb, peak_rss_mb

CHILD = "from fgsn.memory import peak_rss_mb, _maxrss_mb; print(peak_rss_mb(), _maxrss_mb())"


def test_peak_is_at_least_the_current_resident_memory():
    now = current_rss_mb()  # read first: memory can grow between the two reads, never the peak shrink
    assert peak_rss_mb() >= now > 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_child_of_a_large_process_reports_its_own_peak():
    ballast = bytearray(400 * 2**20)
    ballast[::4096] = b"\1" * len(ballast[::4096])  # touch every page: 400 MB resident here
    assert current_rss_mb() > 400
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout
    own, maxrss = map(float, out.split())
    # ru_maxrss carries the parent's peak across exec (what every edit of a cold demo showed) ...
    assert maxrss > 400
    # ... VmHWM is the child's own: a bare interpreter and fgsn.memory, well under the ballast
    assert own < 200
    del ballast
