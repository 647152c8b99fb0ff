"""fgsn's performance benchmarks in one command: the streamed three-model edit against the naive
way and the hardware floor, the probes against a plain forward pass, and both against model size.

    python benchmarks/run.py --out benchmarks/results.json            # full (~9 min on 2 quiet cores)
    python benchmarks/run.py --out /tmp/quick.json --quick --no-docs  # small version (~2 min)

Writes the JSON, then (unless --no-docs) the tables in docs/benchmarks.md (between the
`<!-- results:begin -->` / `<!-- results:end -->` markers) and docs/benchmarks.png, via
benchmarks/report.py. Every variant runs in its own subprocess; peak RSS is that child's
ru_maxrss (os.wait4); the page cache is dropped before each run when the system allows it
(`sync; echo 3 > /proc/sys/vm/drop_caches`, needs root), so inputs are read from disk. Repeats
are interleaved (round robin over the variants) and the median is reported. Synthetic models go
to --workdir (default /tmp/fgsn-bench; removed at the end unless --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from synth import LlamaShape, write_locate_run, write_trio  # noqa: E402

PY = sys.executable
TIME = shutil.which("time", path="/usr/bin:/bin") or "/usr/bin/time"
FGSN = [PY, "-m", "fgsn.cli"]

# (shape, masked layers, repeats, extras): extras "first_run" (empty hash cache) and "all_layers"
# (masks in every layer: does memory grow with the number of edited layers?)
FULL_EDIT = [("small", "2-5", 3, ()), ("smollm2-360m", "10-15", 2, ("all_layers",)),
             ("tinyllama-1.1b", "8-13", 2, ("first_run",))]
QUICK_EDIT = [("tiny", "1-2", 1, ()), ("small", "2-5", 1, ("first_run", "all_layers"))]
BIG_EDIT = [("llama3.2-3b", "10-15", 2, ())]
# (model, prompts, repeats)
FULL_PROBE = [("smollm2-135m", 32, 3), ("smollm2-360m", 16, 2), ("tinyllama-1.1b", 8, 2)]
QUICK_PROBE = [("smollm2-135m", 8, 1)]
KEPT = ("fgsn", "naive", "fgsn_prefetch0")  # outputs kept from the first round, compared with fgsn's


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def git_commit() -> str | None:
    """The measured code: HEAD's short hash, "+dirty" when src/ has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--", "src") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def drop_caches() -> bool:
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def measure(cmd: list[str], env: dict | None = None, cold: bool = True, log: Path | None = None) -> dict:
    """Run `cmd` in a child; wall seconds, the child's peak RSS (MB) and whether caches were dropped.

    The child is started through GNU time (`/usr/bin/time -f %M`), which reports the peak RSS of
    its own child: a child forked straight from this (large) process would inherit this
    process's RSS as its ru_maxrss high-water mark across exec."""
    dropped = drop_caches() if cold else False
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    rss_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"fgsn-bench-rss-{os.getpid()}"
    t = time.perf_counter()
    p = subprocess.run([TIME, "-f", "%M", "-o", str(rss_file), *cmd], env={**os.environ, **(env or {})},
                       stdout=out, stderr=out, cwd=ROOT, check=False)
    wall = time.perf_counter() - t
    if log:
        out.close()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {p.returncode}; see {log}")
    rss_kb = int(rss_file.read_text().split()[-1])
    rss_file.unlink()
    return {"wall_s": round(wall, 3), "peak_rss_mb": round(rss_kb / 1024, 1), "cold_cache": dropped,
            "load": loadavg()}


def summarize(runs: list[dict]) -> dict:
    return {"wall_s": statistics.median(r["wall_s"] for r in runs),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
            "runs": runs}


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def naive_estimate_mb(shape: LlamaShape, layers: list[int]) -> float:
    """Three models in memory + the output's new tensors + every dense C (float32) + one working set."""
    c = sum(shape.module_shape(m)[0] ** 2 * 4 for m in
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj")) * len(layers)
    edited = shape.layer_params() * len(layers) * 2
    return (3 * shape.bytes_bf16() + edited + c + 16 * shape.hidden * shape.intermediate + 500e6) / 2**20


def compare_outputs(a: Path, b: Path) -> dict:
    """Tensor-by-tensor comparison of two checkpoints (streamed): entries that differ, the largest
    difference in units of the bf16 spacing, and whether they are bit-identical."""
    import torch
    from safetensors import safe_open

    def index(folder):
        idx = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                for k in h.keys():  # noqa: SIM118
                    idx[k] = f
        return idx

    ia, ib = index(a), index(b)
    if set(ia) != set(ib):
        return {"same_names": False}
    diff, total, max_ulp = 0, 0, 0.0
    for k in ia:
        with safe_open(str(ia[k]), "pt") as fa, safe_open(str(ib[k]), "pt") as fb:
            x, y = fa.get_tensor(k), fb.get_tensor(k)
        total += x.numel()
        ne = x != y
        n = int(torch.count_nonzero(ne))
        if n:
            diff += n
            xf, yf = x[ne].float(), y[ne].float()
            spacing = torch.maximum(xf.abs(), yf.abs()) * 2.0**-7  # bf16 has 8 significant bits
            max_ulp = max(max_ulp, float(((xf - yf).abs() / spacing.clamp_min(1e-30)).max()))
    return {"same_names": True, "entries": total, "differing": diff, "bit_identical": diff == 0,
            "max_diff_bf16_ulps": round(max_ulp, 3)}


def edit_bench(shape_name: str, layer_spec: str, repeats: int, work: Path, log: Path, cold: bool,
               naive: bool, extras: tuple[str, ...], prefetch_off: bool = False) -> dict:
    from synth import parse_layers

    shape = LlamaShape.get(shape_name)
    layers = parse_layers(layer_spec)
    root = work / shape_name
    cache_warm = root / "hash-cache"
    t = time.perf_counter()
    env = {"FGSN_CACHE": str(cache_warm)}
    os.environ["FGSN_CACHE"] = str(cache_warm)
    trio = write_trio(shape, root)
    run_dir = write_locate_run(trio, root / "locate", layers)
    setup_s = time.perf_counter() - t
    inputs = [str(trio["base"]), str(trio["aligned"]), str(trio["finetuned"])]
    args = ["--base", inputs[0], "--aligned", inputs[1], "--finetuned", inputs[2]]
    out = root / "out"

    def proj(cli: list[str], locate: Path = run_dir) -> list[str]:
        return [*cli, "project", *args, "--locate-run", str(locate), "--out", str(out), "--overwrite"]

    variants: dict[str, list[str]] = {
        "fgsn": proj(FGSN),
        **({"fgsn_prefetch0": [*proj(FGSN), "--prefetch", "0"]} if prefetch_off else {}),
        "floor_safetensors": [PY, str(HERE / "floor.py"), "--mode", "safetensors", *args, "--out", str(out)],
        "floor_bytes": [PY, str(HERE / "floor.py"), "--mode", "bytes", *args, "--out", str(out)],
    }
    est = naive_estimate_mb(shape, layers)
    naive_note = None
    if naive and est < 0.8 * mem_available_mb():
        variants["naive"] = [PY, str(HERE / "naive_edit.py"), *args, "--locate-run", str(run_dir), "--out", str(out)]
    else:
        naive_note = f"skipped: needs ~{est / 1024:.1f} GiB (estimate), {mem_available_mb() / 1024:.1f} GiB available"
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    check: dict = {}
    for r in range(repeats):
        for name, cmd in variants.items():
            shutil.rmtree(out, ignore_errors=True)
            print(f"  [{shape_name}] {name} #{r + 1}", flush=True)
            runs[name].append(measure(cmd, env, cold, log))
            if r == 0 and name in KEPT:
                keep = root / f"keep-{name}"
                shutil.rmtree(keep, ignore_errors=True)
                out.rename(keep)
    shutil.rmtree(out, ignore_errors=True)
    if "first_run" in extras:
        # first run on new models: the sha256 of all three inputs is computed (empty hash cache)
        cold_cache = root / "hash-cache-empty"
        shutil.rmtree(cold_cache, ignore_errors=True)
        print(f"  [{shape_name}] fgsn_first_run", flush=True)
        runs["fgsn_first_run"] = [measure(proj(FGSN), {"FGSN_CACHE": str(cold_cache)}, cold, log)]
        shutil.rmtree(out, ignore_errors=True)
    if "all_layers" in extras:
        # the same edit with masks in every layer: does memory grow with the number of edited layers?
        all_layers = list(range(shape.layers))
        run_all = write_locate_run(trio, root / "locate-all", all_layers)
        print(f"  [{shape_name}] fgsn_all_layers", flush=True)
        runs["fgsn_all_layers"] = [measure(proj(FGSN, run_all), env, cold, log)]
        shutil.rmtree(out, ignore_errors=True)
    keeps = {n: root / f"keep-{n}" for n in KEPT}
    for other in ("naive", "fgsn_prefetch0"):
        if keeps[other].exists():
            check[f"{other}_vs_fgsn"] = compare_outputs(keeps["fgsn"], keeps[other])
    manifest = json.loads((keeps["fgsn"] / "fgsn-manifest.json").read_text())
    for p in keeps.values():
        shutil.rmtree(p, ignore_errors=True)
    sizes = {f.name: f.stat().st_size for f in Path(trio["finetuned"]).glob("*.safetensors")}
    largest = shape.largest_tensor_numel()
    mlp = shape.hidden * shape.intermediate
    return {
        "shape": shape_name, "config": shape.config(), "params": shape.params, "model_bytes": sum(sizes.values()),
        "largest_tensor_mb": round(largest * 2 / 2**20, 1), "largest_edited_tensor_fp32_mb": round(mlp * 4 / 2**20, 1),
        "layers_masked": layers, "mask_density": 0.05, "masked": manifest["masked"],
        "modified_fraction": manifest["modified_fraction"], "setup_s": round(setup_s, 1), "repeats": repeats,
        "naive_estimate_mb": round(est, 0), "naive_note": naive_note,
        "variants": {k: summarize(v) for k, v in runs.items()}, "checks": check,
    }


def probe_bench(model: str, n_prompts: int, repeats: int, work: Path, log: Path, stop: int) -> dict:
    target = work / f"probe-{model}.json"
    cmd = [PY, str(HERE / "probe_bench.py"), "--model", model, "--prompts", str(n_prompts), "--batch", "8",
           "--stop", str(stop), "--repeats", str(repeats), "--json", str(target)]
    print(f"  [probe] {model}", flush=True)
    m = measure(cmd, None, cold=False, log=log)
    res = json.loads(target.read_text())
    res["process"] = m
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(HERE / "results.json"))
    ap.add_argument("--quick", action="store_true", help="tiny models, one repeat (a smoke test, ~2 min)")
    ap.add_argument("--big", action="store_true", help="add a Llama-3.2-3B-shape trio (19 GB of inputs, +10 min)")
    ap.add_argument("--workdir", default="/tmp/fgsn-bench")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic models in --workdir")
    ap.add_argument("--warm", action="store_true", help="do not drop the page cache between runs")
    ap.add_argument("--no-docs", action="store_true", help="do not regenerate docs/benchmarks.md and the plot")
    ap.add_argument("--only", choices=("edit", "probes"), help="run one half only")
    ap.add_argument("--edit-shape", action="append", metavar="SHAPE:LAYERS",
                    help="edit these synthetic shapes only (e.g. smollm2-360m:10-15; repeatable), no extras")
    ap.add_argument("--repeats", type=int, default=2, help="repeats of each --edit-shape (default 2)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive edit")
    ap.add_argument("--compare-prefetch", action="store_true",
                    help="add `fgsn project --prefetch 0` (no read-ahead thread) to the round robin")
    a = ap.parse_args(argv)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "children.log"
    log.write_text("")
    t0 = time.perf_counter()
    import torch

    res: dict = {
        "command": "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "cpu": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                                 if ln.startswith("model name")), platform.processor()),
                    "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                    "python": platform.python_version(), "torch": torch.__version__},
        "load_start": loadavg(), "cold_cache": False,
    }
    res["cold_cache"] = (not a.warm) and drop_caches()
    # what an idle interpreter with fgsn's edit imports costs (subtract from every RSS)
    res["startup"] = summarize([measure([PY, "-c", "import fgsn.cli, fgsn.pipeline.project"], None, False, log)
                                for _ in range(2)])
    if a.only != "probes":
        plan = QUICK_EDIT if a.quick else FULL_EDIT + (BIG_EDIT if a.big else [])
        if a.edit_shape:
            plan = [(*spec.split(":", 1), a.repeats, ()) for spec in a.edit_shape]
        res["edit"] = []
        for shape, layers, reps, extras in plan:
            res["edit"].append(edit_bench(shape, layers, reps, work, log, cold=res["cold_cache"],
                                          naive=not a.no_naive, extras=extras, prefetch_off=a.compare_prefetch))
            if not a.keep:
                shutil.rmtree(work / shape, ignore_errors=True)
    if a.only != "edit":
        res["probes"] = [probe_bench(m, n, r, work, log, stop=2 if a.quick else 8)
                         for m, n, r in (QUICK_PROBE if a.quick else FULL_PROBE)]
    res["load_end"] = loadavg()
    res["total_s"] = round(time.perf_counter() - t0, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out} in {res['total_s']:.0f} s")
    if not a.no_docs:
        import report

        report.main(["--results", a.out])
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
