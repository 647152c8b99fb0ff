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


def main(argv: list[str] | None = None) -> int:
    from fgsn.evaluate.judges import KeywordJudge
    from fgsn.evaluate.utility import load_utility
    from fgsn.models.loading import load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rundir", type=Path, help="an evaluation run folder (with eval.json and models/)")
    ap.add_argument("--tokens", default="16,24", help="comma list of token counts")
    args = ap.parse_args(argv)
    spec = json.loads((args.rundir / "eval.json").read_text())
    kw = spec["keyword_judge"]
    judge = KeywordJudge(kw["list"], kw.get("min_words"))
    opts = spec["options"]
    utility = {}
    for src in spec["inputs"]["utility"]:
        for it in load_utility(src, limit=opts["utility_limit"], seed=opts["utility_seed"],
                               instruction=opts["utility_instruction"]):
            utility[it.question] = it
    counts = [int(x) for x in args.tokens.split(",")]
    total = {n: [0, 0] for n in counts}
    print("verdicts that change when completions are cut to N tokens (changed/judged)")
    print(f"{'model':16}" + "".join(f"{f'{n} tokens':>14}" for n in counts))
    for name, m in spec["models"].items():
        tok = load_tokenizer(m["path"])
        rows = [json.loads(x) for x in (args.rundir / "models" / name / "records.jsonl").read_text().splitlines()]
        line = f"{name:16}"
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
            total[n][0] += changed
            total[n][1] += judged
            line += f"{f'{changed}/{judged}':>14}"
        print(line)
    print(f"{'all':16}" + "".join(f"{f'{total[n][0]}/{total[n][1]}':>14}" for n in counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
