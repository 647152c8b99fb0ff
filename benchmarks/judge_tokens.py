"""How many new tokens does the keyword judge need? Re-judge an evaluation's completions cut short.

Generation time grows with --max-new-tokens; the keyword judge only looks for refusal phrases,
which come first. This cuts every recorded completion of an evaluation run to N tokens (with the
model's own tokenizer), re-judges it with the run's keyword judge and utility scorer, and counts
the verdicts that change. No verdict change at N means a run at N tokens decides the same table.

    python benchmarks/judge_tokens.py runs/demo/eval --tokens 16,24

(`make demo` writes runs/demo/eval; this is how its 24-token setting was chosen.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def count_changes(rundir: Path, counts: list[int]) -> dict[str, dict[int, tuple[int, int]]]:
    """{model: {N: (verdicts changed, verdicts judged)}} when the run's completions are cut to N tokens."""
    from fgsn.evaluate.judges import KeywordJudge
    from fgsn.evaluate.utility import load_utility
    from fgsn.models.loading import load_tokenizer

    spec = json.loads((rundir / "eval.json").read_text())
    kw = spec["keyword_judge"]
    judge = KeywordJudge(kw["list"], kw.get("min_words"))
    opts = spec["options"]
    utility = {}
    for src in spec["inputs"]["utility"]:
        for it in load_utility(src, limit=opts["utility_limit"], seed=opts["utility_seed"],
                               instruction=opts["utility_instruction"]):
            utility[it.question] = it
    out: dict[str, dict[int, tuple[int, int]]] = {}
    for name, m in spec["models"].items():
        tok = load_tokenizer(m["path"])
        rows = [json.loads(x) for x in (rundir / "models" / name / "records.jsonl").read_text().splitlines()]
        out[name] = {}
        for n in counts:
            changed = judged = 0
            for r in rows:
                cut = tok.decode(tok(r["completion"], add_special_tokens=False)["input_ids"][:n]).strip()
                if r["kind"] == "harmful":
                    before, after = bool(r["keyword_success"]), bool(judge.verdict(cut).success)
                elif r["kind"] == "alarming":
                    before, after = bool(r["refused"]), bool(judge.verdict(cut).refused)
                elif r["prompt"] in utility:
                    before, after = bool(r["correct"]), bool(utility[r["prompt"]].score(cut))
                else:
                    continue
                judged += 1
                changed += before != after
            out[name][n] = (changed, judged)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rundir", type=Path, help="an evaluation run folder (with eval.json and models/)")
    ap.add_argument("--tokens", default="16,24", help="comma list of token counts")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.tokens.split(",")]
    changes = count_changes(args.rundir, counts)
    total = {n: [sum(c[n][0] for c in changes.values()), sum(c[n][1] for c in changes.values())] for n in counts}
    print("verdicts that change when completions are cut to N tokens (changed/judged)")
    print(f"{'model':16}" + "".join(f"{f'{n} tokens':>14}" for n in counts))
    for name, c in changes.items():
        print(f"{name:16}" + "".join(f"{f'{c[n][0]}/{c[n][1]}':>14}" for n in counts))
    print(f"{'all':16}" + "".join(f"{f'{total[n][0]}/{total[n][1]}':>14}" for n in counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
