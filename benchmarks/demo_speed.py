"""The speed-ups behind the demo's time, each measured on the SmolLM2 organism (run `make demo`
first: this reads runs/demo/eval/eval.json for the models and the held-out inputs).

    python benchmarks/demo_speed.py [--run runs/demo] [--out FILE.json]

1. evaluation of six of the demo's models with its settings: one process with every thread
   (--model-workers 1) vs two processes with half the threads each (--model-workers 2);
2. generation of one model's completions in float32 vs `fast` (bfloat16 where native);
3. reference-answer NLL: length-grouped batches (fgsn.data.batching.MIN_FILL) vs every answer
   padded into one batch (min_fill 0);
4. locate on the demo's prompts in float32 vs `fast` (bfloat16 where the CPU computes it
   natively): wall time, the layers found, and how far the masks agree (Jaccard).

Each timing is one cold run (fresh caches) on whatever else the machine is doing: run it on a
quiet machine, and expect a few percent of noise.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path

# Six of the demo's eleven models: enough for the workers' start-up (importing torch in each) to be
# paid back, as it is in the demo.
MODELS = ("base", "aligned", "finetuned", "fgsn", "safelora", "resta")


def eval_workers(spec: dict, workers: int, tmp: Path) -> float:
    from fgsn.evaluate import EvalOptions, evaluate

    o = dict(spec["options"], cache_dir=str(tmp / f"cache-{workers}"), model_workers=workers, report=False,
             systems={}, suffixes={})
    models = {k: spec["models"][k]["path"] for k in MODELS}
    i = spec["inputs"]
    t = time.perf_counter()
    evaluate(models, i["harmful"], i["benign_alarming"], i["utility"], options=EvalOptions(**o),
             out=tmp / f"eval-{workers}", reference=i["reference"])
    return time.perf_counter() - t


def generation_dtype(spec: dict) -> dict:
    """One model's completions of the demo's prompts, float32 vs `fast` (same batches)."""
    from fgsn.data.chat import render_chat
    from fgsn.data.prompts import load_prompts
    from fgsn.evaluate.api import gen_settings
    from fgsn.evaluate.generation import HFGenerator
    from fgsn.evaluate.options import EvalOptions
    from fgsn.models.loading import load_model

    i = spec["inputs"]
    prompts = [p.text for src in [*i["harmful"], i["benign_alarming"]] for p in load_prompts(src)]
    out = {"prompts": len(prompts)}
    for dt in ("float32", "fast"):
        opts = EvalOptions(**dict(spec["options"], dtype=dt))
        model, tok = load_model(spec["models"]["aligned"]["path"], device="cpu", dtype=dt)
        texts = [render_chat(tok, p) for p in prompts]
        gen = HFGenerator(model, tok, gen_settings(opts), opts.batch_size, progress=None)
        t = time.perf_counter()
        gen.generate(texts)
        out[f"{dt}_s"] = round(time.perf_counter() - t, 1)
    return out


def nll_batching(spec: dict) -> dict:
    from fgsn.data.chat import render_chat
    from fgsn.data.prompts import load_prompts
    from fgsn.evaluate import nll
    from fgsn.models.loading import load_model

    model, tok = load_model(spec["models"]["aligned"]["path"], device="cpu", dtype=spec["options"]["dtype"])
    refs = [p for src in spec["inputs"]["reference"] for p in load_prompts(src)]
    ctx, ans = [render_chat(tok, p.text) for p in refs], [p.answer or "" for p in refs]
    out = {}
    real = nll.length_batches
    try:
        for name, fill in (("grouped", None), ("one_padded_batch", 0.0)):
            nll.length_batches = real if fill is None else partial(real, min_fill=fill)
            nll.answer_nll(model, tok, ctx[:2], ans[:2], batch_size=64)  # warm-up
            t = time.perf_counter()
            nll.answer_nll(model, tok, ctx, ans, batch_size=64)
            out[name] = round(time.perf_counter() - t, 2)
    finally:
        nll.length_batches = real
    out["items"] = len(refs)
    return out


def locate_dtype(run: Path, spec: dict) -> dict:
    from fgsn.locate.run import LocateOptions, run_locate

    res = json.loads((run / "results.json").read_text())["models"]
    man = json.loads((Path(res["fgsn"]["path"]) / "fgsn-manifest.json").read_text())["options"]
    found = {}
    for dt in ("float32", "fast"):
        opts = LocateOptions(aligned=man["aligned"], finetuned=man["finetuned"], base=man["base"],
                             harmful=man["harmful"], task=man["task"], dtype=dt, cache=False,
                             batch_size=man["batch_size"], max_length=man["max_length"])
        t = time.perf_counter()
        r = run_locate(opts)
        found[dt] = (round(time.perf_counter() - t, 1), r)
    a, b = found["float32"][1], found["fast"][1]
    inter = union = 0
    for name in a.masks:
        x, y = a.masks.get(name).bool(), b.masks.get(name).bool()
        inter += int((x & y).sum())
        union += int((x | y).sum())
    return {"float32_s": found["float32"][0], "fast_s": found["fast"][0], "layers_float32": a.layers,
            "layers_fast": b.layers, "mask_jaccard": round(inter / union, 3) if union else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"), help="a finished demo run folder")
    ap.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = ap.parse_args(argv)
    spec_path = args.run / "eval" / "eval.json"
    if not spec_path.is_file():
        raise SystemExit(f"{spec_path} not found: run `make demo` first (or pass --run)")
    spec = json.loads(spec_path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        one, two = eval_workers(spec, 1, Path(tmp)), eval_workers(spec, 2, Path(tmp))
    doc = {"eval_six_models_s": {"workers_1": round(one, 1), "workers_2": round(two, 1),
                                 "speedup": round(one / two, 2)},
           "generation": generation_dtype(spec), "nll_s": nll_batching(spec), "locate": locate_dtype(args.run, spec)}
    print(json.dumps(doc, indent=2))
    if args.out:
        from fgsn.atomic import atomic_write_json

        atomic_write_json(args.out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
