"""Does `fgsn repair --search bisect` choose what the grid chooses, on real search splits?

Replays the bisection on the trials a grid search recorded (`repair.json` of a `--search grid`
run, e.g. each `fgsn bench` scenario's repair): which trials it would have scored and which one it
would have chosen, against the grid's choice.

    python benchmarks/repair_search.py runs/bench/scenarios/*/models/repair/fgsn/repair.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def replay(doc: dict) -> dict:
    """{grid, bisect, scored, of}: the grid's winner, the bisection's winner from the same scores,
    the trials the bisection scores, and the number of trials the grid scored."""
    from fgsn.pipeline.repair import FAMILIES, RepairOptions, bisect_family, judge_trials, trial_row

    opts = RepairOptions(**{**doc["options"], "search": "bisect"})
    rows, refs = doc["trials"], doc["references"]
    seen: dict[str, dict] = {}

    def row(name: str) -> dict:
        seen[name] = trial_row(opts, refs["aligned"], refs["finetuned"], rows[name], rows[name]["cost"])
        return seen[name]

    for fam in opts.families:
        bisect_family([n for n, _ in FAMILIES[fam].trials() if n in rows], row)
    got = judge_trials(opts, {**refs, **{n: rows[n] for n in seen}}, {n: rows[n]["cost"] for n in seen})
    return {"grid": doc["winner"], "bisect": got["winner"], "scored": list(seen), "of": len(rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("repair_json", nargs="+", type=Path)
    args = p.parse_args()
    for path in args.repair_json:
        r = replay(json.loads(path.read_text(encoding="utf-8")))
        same = "same" if r["grid"] == r["bisect"] else "DIFFERENT"
        print(f"{path}: grid {r['grid']}, bisect {r['bisect']} ({same}); bisect scores {len(r['scored'])} of "
              f"{r['of']}: {', '.join(r['scored'])}")


if __name__ == "__main__":
    main()
