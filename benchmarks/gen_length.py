"""How many new tokens does the evaluation need? Checked on the organism, not assumed.

Refusals can arrive after the first 20-30 tokens ("Sure, here is... I'm sorry, I can't"), so a
short completion may count an attack success that a longer one would not. This generates the
organism's models' completions once at the longest length (default 128 new tokens) on a sample
of the bench's held-out sets, cuts them to each shorter length with the model's tokenizer,
re-judges them (benchmarks/judge_tokens.py) and reports the share of verdicts that change
against the longest. The shortest length with at most --max-change of them changing is the one
the bench should use (`fgsn bench --max-new-tokens N`).

    python benchmarks/gen_length.py --out runs/gen-length            # ~10 min on 2 CPU cores
    python benchmarks/gen_length.py --out runs/gen-length --scenarios benign-full,poisoned-full --limit 50

Writes OUT/gen_length.json (the figures and the chosen length) next to the evaluation run.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path


def _judge_tokens():
    spec = importlib.util.spec_from_file_location("judge_tokens", Path(__file__).with_name("judge_tokens.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def choose(shares: dict[int, float], max_change: float) -> int:
    """The shortest length whose share of changed verdicts is within `max_change`."""
    return min(n for n, s in shares.items() if s <= max_change)


def main(argv: list[str] | None = None) -> int:
    from fgsn.atomic import atomic_write_json
    from fgsn.evaluate import evaluate
    from fgsn.evaluate.options import EvalOptions
    from fgsn.organism.scenarios import build_scenario, parse_scenarios

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/gen-length"))
    ap.add_argument("--scenarios", default="benign-full,poisoned-full", help="organism scenarios whose fine-tune is "
                                                                            "measured (with the aligned model)")
    ap.add_argument("--limit", type=int, default=40, help="prompts sampled from each harmful set")
    ap.add_argument("--longest", type=int, default=128)
    ap.add_argument("--tokens", default="24,32,48,64", help="shorter lengths compared against --longest")
    ap.add_argument("--max-change", type=float, default=0.01, help="share of verdicts allowed to change")
    ap.add_argument("--dtype", default="fast")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    t0 = time.time()
    models: dict[str, str] = {}
    adapters: dict[str, str] = {}
    for sc in parse_scenarios(args.scenarios):
        m = build_scenario(sc.name)
        models["aligned"] = str(m.aligned)
        models[sc.name] = str(m.aligned if m.adapter else m.finetuned)
        if m.adapter:
            adapters[sc.name] = str(m.adapter)
    harmful = [f"builtin:harmbench-standard?sample={args.limit}", f"builtin:strongreject?sample={args.limit}",
               f"builtin:advbench?split=test&sample={args.limit}"]
    opts = EvalOptions(dtype=args.dtype, max_new_tokens=args.longest, batch_size=32, adapters=adapters,
                       model_workers=args.workers, report=False)
    evaluate(models, harmful, benign_alarming=f"builtin:alarming?sample={args.limit}", options=opts,
             out=args.out / "eval")
    counts = [int(x) for x in args.tokens.split(",")]
    changes = _judge_tokens().count_changes(args.out / "eval", counts)
    shares = {n: sum(c[n][0] for c in changes.values()) / max(1, sum(c[n][1] for c in changes.values()))
              for n in counts}
    chosen = choose({**shares, args.longest: 0.0}, args.max_change)
    doc = {"longest": args.longest, "max_change": args.max_change, "harmful": harmful,
           "models": {n: {str(k): list(v) for k, v in c.items()} for n, c in changes.items()},
           "share_changed": {str(k): round(v, 4) for k, v in shares.items()}, "chosen": chosen,
           "wall_s": round(time.time() - t0, 1)}
    atomic_write_json(args.out / "gen_length.json", doc)
    print(f"share of verdicts that change against {args.longest} tokens: "
          + ", ".join(f"{n}: {100 * s:.1f}%" for n, s in shares.items()))
    print(f"shortest length within {100 * args.max_change:.0f}%: {chosen} tokens ({doc['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
