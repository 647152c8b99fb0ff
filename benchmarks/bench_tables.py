"""The README's per-scenario tables of an `fgsn bench` run, from its scenarios' results.json.

    python benchmarks/bench_tables.py runs/bench

One table per scenario: ASR with its 95% interval, jailbreak-wrapped ASR, over-refusal, task NLL,
the share of the ASR gap closed and of the task gain kept, the parameters modified, and each
model's paired ASR difference from the repair (McNemar p) on the same prompts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LABELS = {"repair": "**repair** (`fgsn repair`, defaults)", "fgsn": "fgsn (paper defaults)", "safelora": "SafeLoRA",
          "resta": "RESTA (β 0.5)", "wanda": "Wanda pruning", "self-reminder": "Self-Reminder", "irr": "IRR",
          "sgdg": "SGDG rollback"}
HEADER = ("| model | ASR [95% CI] | jailbreak ASR | over-refusal | task NLL | gap closed | task gain kept | "
          "params modified | vs repair: ΔASR [95% CI] |\n|---|---|---|---|---|---|---|---|---|")


def pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}%"


def paired(doc: dict, name: str) -> str:
    """The repair's ASR minus this model's (a reference) or this model's minus the repair's."""
    if name == "repair":
        return ""
    ref = name in ("aligned", "finetuned")
    p = doc["paired"].get(f"repair vs {name}" if ref else f"{name} vs repair")
    if not p:
        return "—"
    a = p["asr"]
    text = f"{100 * a['diff']:+.1f} [{100 * a['ci'][0]:+.1f}, {100 * a['ci'][1]:+.1f}] p={a['p']:.1g}"
    return f"repair {text}" if ref else text


def table(doc: dict) -> str:
    m = doc["models"]
    al, ft = m["aligned"], m["finetuned"]
    gap, gain = ft["asr"] - al["asr"], al["nll"] - ft["nll"]
    rows = [HEADER]
    for name in doc["order"]:
        r = m[name]
        ref = name in ("aligned", "finetuned")
        closed = "" if ref or gap <= 0 else f"{(ft['asr'] - r['asr']) / gap:.0%}"
        kept = "" if ref or gain <= 0 else f"{(al['nll'] - r['nll']) / gain:.0%}"
        ci = r["asr_ci"]
        rows.append(f"| {LABELS.get(name, name)} | {pct(r['asr'])} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}] | "
                    f"{pct(r.get('asr_attack'))} | {pct(r.get('over_refusal'))} | {r['nll']:.3f} | {closed} | {kept} | "
                    f"{'—' if ref else pct(r.get('modified_fraction'), 2)} | {paired(doc, name)} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rundir", type=Path)
    args = p.parse_args()
    for path in sorted((args.rundir / "scenarios").glob("*/results.json"), key=lambda q: q.stat().st_mtime):
        doc = json.loads(path.read_text(encoding="utf-8"))
        print(f"`{path.parent.name}`:\n\n{table(doc)}\n")


if __name__ == "__main__":
    main()
