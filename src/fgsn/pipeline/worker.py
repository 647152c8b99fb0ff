"""Run one edit in its own process and measure it: `python -m fgsn.pipeline.worker JOB.json`.

JOB.json: {"kind": a method of fgsn.pipeline.registry, "options": {...}, "stats": PATH}. The worker
writes PATH (JSON) with the edit's cost, measured in this process only:

    wall_s         wall-clock seconds of the edit (after imports, from options to finished folder)
    start_rss_mb   resident memory before the edit (Python, torch and transformers imported)
    peak_rss_mb    peak resident memory of the process (VmHWM, see fgsn.memory), imports included
    edit_rss_mb    peak_rss_mb - start_rss_mb: what the edit itself added at its peak
    cuda_peak_mb   torch.cuda.max_memory_allocated, when CUDA was used (else null)

Why a subprocess: the peak is a high-water mark of the whole process, so in one process the
second method's peak hides under the first's; tracemalloc does not see torch's allocations. A
fresh process per edit gives every method its own high-water mark. Exit code 2 and one
`error: ...` line on stderr for an fgsn error, as the CLI does.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from fgsn.memory import current_rss_mb, peak_rss_mb


def measured_run(kind: str, options: dict, isolated: bool = True) -> dict:
    """Run one method and measure it: wall time, RSS at start and peak (the process high-water mark:
    the edit's own only in a fresh process, `isolated`), CUDA peak."""
    import torch

    from fgsn.pipeline.registry import run_method

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = current_rss_mb()
    t0 = time.perf_counter()
    run_method(kind, options)
    wall = time.perf_counter() - t0
    peak = peak_rss_mb()
    return {"wall_s": round(wall, 3), "start_rss_mb": round(start, 1), "peak_rss_mb": round(peak, 1),
            "edit_rss_mb": round(max(0.0, peak - start), 1),
            "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
            "isolated": isolated}


def main(argv: list[str] | None = None) -> int:
    import logging

    from fgsn.atomic import atomic_write_json
    from fgsn.errors import FgsnError

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m fgsn.pipeline.worker JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    logging.basicConfig(level=job.get("log_level", logging.WARNING), format="%(levelname)s %(name)s: %(message)s")
    try:
        stats = measured_run(job["kind"], job["options"])
    except FgsnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    atomic_write_json(job["stats"], stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
