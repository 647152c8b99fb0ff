"""Peak RSS of a command's whole process tree, polled: the command and every descendant, their
resident sets summed at each poll (GNU time's %M is one process's high-water mark, which misses
workers and children that peak together).

    python benchmarks/tree_rss.py [--interval 0.05] [--json OUT.json] -- fgsn project ...

Prints one JSON line: peak_tree_rss_mib, wall_s, rc, polls; `--timeline` keeps every poll.
Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(root: int) -> int:
    total, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += _rss_kib(pid)
        todo += _children(pid)
    return total


def measure(cmd: list[str], interval: float = 0.05, timeline: str | None = None) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak, polls, samples = 0, 0, []
    while proc.poll() is None:
        rss = tree_rss_kib(proc.pid)
        peak = max(peak, rss)
        polls += 1
        if timeline:
            samples.append(f"{time.perf_counter() - start:.2f} {rss / 1024:.1f}")
        time.sleep(interval)
    if timeline:
        Path(timeline).write_text("seconds tree_rss_mib\n" + "\n".join(samples) + "\n")
    return {"cmd": cmd, "peak_tree_rss_mib": round(peak / 1024, 1), "wall_s": round(time.perf_counter() - start, 1),
            "rc": proc.returncode, "polls": polls}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between polls")
    ap.add_argument("--json", default=None, help="also write the result to this file")
    ap.add_argument("--timeline", default=None, help="write every poll (seconds, MiB) to this file")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("give the command to measure after --")
    res = measure(cmd, a.interval, a.timeline)
    print(json.dumps(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0 if res["rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
