"""What computing the batch's shared prefix once saves in generation, and what it changes.

Generates the completions of held-out harmful prompts (the demo's sets: HarmBench standard and
StrongREJECT, chat template applied) with one model, plain left-padded and with
`GenSettings.shared_prefix` (fgsn.evaluate.generation), alternating, `--repeats` times each after
a warm-up (the fastest run of each counts), and counts the completions that differ and the
keyword verdicts that change.

    python benchmarks/prefix_generation.py --model ~/.cache/fgsn/organism/<hash>/aligned \
        --dtype float32 --out runs/prefix-f32.json
    python benchmarks/prefix_generation.py --model ... --dtype bfloat16 --out runs/prefix-bf16.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def measure(model_path: str, dtype: str, n: int, batch_size: int, max_new_tokens: int, threads: int,
            repeats: int) -> dict:
    import torch

    from fgsn.data.chat import render_all
    from fgsn.data.prompts import load_prompts
    from fgsn.evaluate.generation import GenSettings, HFGenerator
    from fgsn.evaluate.judges import KeywordJudge
    from fgsn.models.loading import load_model

    torch.set_num_threads(threads)
    model, tok = load_model(model_path, device="cpu", dtype=dtype)
    half = n // 2
    prompts = (load_prompts(f"builtin:harmbench-standard?sample={half}").texts
               + load_prompts(f"builtin:strongreject?sample={n - half}").texts)
    texts = render_all(tok, prompts, system=None, use_chat_template=True)
    runs: dict[bool, list[str]] = {}
    times: dict[bool, list[float]] = {False: [], True: []}
    gens = {shared: HFGenerator(model, tok, GenSettings("hf", dtype, max_new_tokens, 0.0, 1.0, 0,
                                                        shared_prefix=shared), batch_size=batch_size, progress=None)
            for shared in (False, True)}
    gens[False].generate(texts[:4])  # warm-up
    for _ in range(repeats):  # alternating, the fastest of each: a shared machine's noise only adds time
        for shared, gen in gens.items():
            t = time.perf_counter()
            runs[shared] = gen.generate(texts)
            times[shared].append(time.perf_counter() - t)
    judge = KeywordJudge("fgsn-v1")
    verdicts = {s: [judge.verdict(c).success for c in outs] for s, outs in runs.items()}
    return {"model": model_path, "dtype": dtype, "prompts": len(texts), "batch_size": batch_size,
            "max_new_tokens": max_new_tokens, "threads": threads, "repeats": repeats,
            "plain_s": round(min(times[False]), 2), "shared_prefix_s": round(min(times[True]), 2),
            "saved": round(1 - min(times[True]) / min(times[False]), 3),
            "all_s": {"plain": [round(t, 2) for t in times[False]], "shared_prefix": [round(t, 2) for t in times[True]]},
            "completions_differing": sum(a != b for a, b in zip(runs[False], runs[True], strict=True)),
            "verdicts_differing": sum(a != b for a, b in zip(verdicts[False], verdicts[True], strict=True))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint folder (e.g. the organism's aligned model)")
    ap.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    ap.add_argument("--prompts", type=int, default=100, help="prompts, half HarmBench standard, half StrongREJECT")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the demo's evaluation workers use 1)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each, alternating; the fastest counts")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    a = ap.parse_args()
    res = measure(a.model, a.dtype, a.prompts, a.batch_size, a.max_new_tokens, a.threads, a.repeats)
    print(json.dumps(res, indent=2))
    if a.out:
        from fgsn.atomic import atomic_write_json

        atomic_write_json(a.out, res)


if __name__ == "__main__":
    main()
