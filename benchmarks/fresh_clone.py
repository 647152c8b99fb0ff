"""The README's wall times from a fresh clone: `make test`, `make demo`, then `make demo` again
(warm), with an empty `$FGSN_CACHE`, on this machine, with or without native bfloat16. "Warm" means
the organism (and the converted SmolLM2) are cached: the demo's outputs and every other cache entry
(probe and Gram statistics) are removed first, so the demo recomputes all its edits and evaluations;
the first demo's output is kept as `runs/demo-fresh` in the clone.

    python benchmarks/fresh_clone.py --out runs/fresh-nobf16.json --bf16 0   # as on a CPU without it
    python benchmarks/fresh_clone.py --out runs/fresh-bf16.json --bf16 auto  # as the CPU is

`--bf16 0` sets FGSN_NATIVE_BF16=0, which makes fgsn treat the CPU as one without AVX512-BF16/AMX
(float32 training, probes and evaluation): the precision path of such a CPU, on this CPU's cores.
The clone comes from the repository this script lives in (its HEAD, committed work only); pip's
download cache is whatever the machine has. Each step's wall time, exit code and output tail go
into one JSON, written after every step, so an interrupted run keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = {"test": ["make", "test"], "demo": ["make", "demo"], "demo-warm": ["make", "demo"]}
KEEP_WARM = ("organism", "models", "file-hashes.json")  # what a warm demo finds in the cache


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _write(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON of the figures")
    ap.add_argument("--bf16", choices=["auto", "0", "1"], default="auto",
                    help="FGSN_NATIVE_BF16 for every step (auto: leave it unset)")
    ap.add_argument("--steps", default="test,demo,demo-warm", help=f"comma-separated, of {', '.join(STEPS)}")
    ap.add_argument("--workdir", type=Path, default=None, help="where to clone (default: a new temp folder)")
    a = ap.parse_args(argv)
    steps = [s for s in a.steps.split(",") if s]
    if bad := [s for s in steps if s not in STEPS]:
        ap.error(f"--steps: unknown {bad}; use {', '.join(STEPS)}")
    work = a.workdir or Path(tempfile.mkdtemp(prefix="fgsn-fresh-"))
    clone, cache = work / "clone", work / "cache"
    if clone.exists():
        ap.error(f"--workdir {work}: holds a clone already; give an empty folder")
    cache.mkdir(parents=True)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {**os.environ, "FGSN_CACHE": str(cache)}
    env.pop("FGSN_NATIVE_BF16", None)
    if a.bf16 != "auto":
        env["FGSN_NATIVE_BF16"] = a.bf16
    doc = {"script": "benchmarks/fresh_clone.py", "commit": head, "bf16": a.bf16, "cpu": cpu_model(),
           "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "steps": {}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for step in steps:
        if step == "demo-warm":
            demo = clone / "runs" / "demo"
            if demo.is_dir():  # kept aside, so that the two runs' results can be compared
                shutil.rmtree(clone / "runs" / "demo-fresh", ignore_errors=True)
                demo.rename(clone / "runs" / "demo-fresh")
            for entry in cache.iterdir():
                if entry.name not in KEEP_WARM:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        print(f"[{time.strftime('%H:%M:%S')}] {step}: {' '.join(STEPS[step])}", flush=True)
        t = time.perf_counter()
        p = subprocess.run(STEPS[step], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, errors="replace")
        wall = time.perf_counter() - t
        (work / f"{step}.log").write_text(p.stdout)
        doc["steps"][step] = {"wall_s": round(wall, 1), "minutes": f"{int(wall // 60)} min {wall % 60:.0f} s",
                              "rc": p.returncode, "log": str(work / f"{step}.log"), "tail": p.stdout[-3000:]}
        _write(a.out, doc)
        print(f"          {doc['steps'][step]['minutes']}, exit {p.returncode}", flush=True)
    return 0 if all(s["rc"] == 0 for s in doc["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
