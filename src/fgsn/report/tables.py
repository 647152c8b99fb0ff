"""The report's tables as plain data (title, headers, rows of strings), rendered by markdown.py,
html.py and the terminal printer alike, so the three never disagree."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MISSING = "—"


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str | None = None
    muted: set[tuple[int, int]] = field(default_factory=set)  # (row, column) of cells shown greyed (not significant)


def pct(x: float | None, missing: str = MISSING) -> str:
    return missing if x is None else f"{100 * x:.1f}%"


def pct_ci(x: float | None, ci: list[float] | None, missing: str = MISSING) -> str:
    if x is None:
        return missing
    return f"{100 * x:.1f}%" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def num(x: float | None, digits: int = 2, missing: str = MISSING) -> str:
    return missing if x is None else f"{x:.{digits}f}"


def modified(x: float | None, missing: str = MISSING) -> str:
    return missing if x is None else f"{100 * x:.2f}%"


def summary_table(results: dict[str, Any], missing: str = MISSING) -> Table:
    judge = (results.get("judge") or {}).get("judge", "?")
    kw = results.get("keyword_judge") or {}
    attack = any(results["models"][n].get("n_attack") for n in results["order"])
    headers = ["model", f"ASR ({judge}) [95% CI]"]
    if judge != "keyword":
        headers.append(f"ASR (keyword {kw.get('list', '?')})")
    if attack:
        headers.append("ASR under jailbreak templates [95% CI]")
    headers += ["harmfulness 1-5", "over-refusal", "utility", "NLL", "PPL", "params modified"]
    rows = []
    for name in results["order"]:
        m = results["models"][name]
        row = [name, pct_ci(m["asr"], m["asr_ci"], missing)]
        if judge != "keyword":
            row.append(pct(m["asr_keyword"], missing))
        if attack:
            row.append(pct_ci(m.get("asr_attack"), m.get("asr_attack_ci"), missing))
        row += [num(m["harmfulness"], 2, missing), pct(m["over_refusal"], missing), pct(m["utility"], missing),
                num(m["nll"], 3, missing), num(m["perplexity"], 2, missing), modified(m["modified_fraction"], missing)]
        rows.append(row)
    n = results.get("counts") or {}
    note = (f"{n.get('harmful', 0)} harmful, " + (f"{n['attack']} jailbreak-wrapped harmful, " if n.get("attack") else "")
            + f"{n.get('alarming', 0)} alarming-but-harmless, "
            f"{n.get('utility', 0)} utility and {n.get('reference', 0)} reference prompts; "
            f"{missing} = not measured.")
    return Table("Summary", headers, rows, note)


def _per_key_table(results: dict[str, Any], field: str, metric: str, title: str, first: str,
                   missing: str) -> Table | None:
    """Rows = keys of every model's `field` dict (categories, tasks), columns = models."""
    keys = sorted({k for n in results["order"] for k in results["models"][n].get(field) or {}})
    if not keys:
        return None
    rows = []
    for k in keys:
        row = [k]
        for name in results["order"]:
            d = (results["models"][name].get(field) or {}).get(k)
            row.append(f"{pct(d[metric], missing)} (n={d['n']})" if d else missing)
        rows.append(row)
    return Table(title, [first] + list(results["order"]), rows)


def category_table(results: dict[str, Any], missing: str = MISSING) -> Table | None:
    return _per_key_table(results, "categories", "asr", "ASR by harm category", "category", missing)


def attack_category_table(results: dict[str, Any], missing: str = MISSING) -> Table | None:
    return _per_key_table(results, "attack_categories", "asr", "ASR under jailbreak templates by harm category",
                          "category", missing)


PAIRED_COLUMNS = (("asr", "ΔASR"), ("asr_attack", "ΔASR under jailbreak templates"),
                  ("over_refusal", "Δover-refusal"), ("utility", "Δutility"), ("nll", "ΔNLL (nats)"))


def _paired_cell(d: dict[str, Any] | None, points: bool, missing: str) -> tuple[str, bool]:
    """(text, muted) of one paired difference."""
    if d is None:
        return missing, False
    if "skipped" in d:
        return "skipped (not the same items)", True
    scale, fmt = (100, "+.1f") if points else (1, "+.3f")
    text = f"{format(scale * d['diff'], fmt)} [{format(scale * d['ci'][0], fmt)}, {format(scale * d['ci'][1], fmt)}]"
    if "p" in d:
        text += f" p={d['p']:.2g}"
    text += f" n={d['n']}"
    if not d["significant"]:
        text += " n.s."
    return text, not d["significant"]


def paired_table(results: dict[str, Any], missing: str = MISSING) -> Table | None:
    """One row per compared pair: each difference with its interval and McNemar p; a difference
    whose interval holds 0 is marked n.s. (and greyed in the HTML). Renders results["paired"]."""
    paired = results.get("paired") or {}
    if not paired:
        return None
    cols = [(k, h) for k, h in PAIRED_COLUMNS if any(e.get(k) is not None for e in paired.values())]
    # grouped by reference, in model order (results.json sorts its keys, so the file's order is not this)
    pos = {n: i for i, n in enumerate(results.get("order") or [])}
    ranked = sorted(paired.items(), key=lambda kv: (pos.get(kv[1].get("reference"), len(pos)),
                                                    pos.get(kv[1].get("model"), len(pos)), kv[0]))
    rows, muted = [], set()
    for i, (key, entry) in enumerate(ranked):
        row = [key]
        for j, (k, _h) in enumerate(cols, 1):
            text, grey = _paired_cell(entry.get(k), k != "nll", missing)
            row.append(text)
            if grey:
                muted.add((i, j))
        rows.append(row)
    st = results.get("paired_settings") or {}
    note = ("Paired over the same prompts: MODEL minus REFERENCE, rates in percentage points, with a paired "
            f"bootstrap {100 * st.get('level', 0.95):.0f}% interval ({st.get('resamples', '?')} resamples, seed "
            f"{st.get('seed', '?')}) and, for rates, the exact McNemar p; n.s. = the interval contains 0 (not "
            "significant). NLL: token-weighted mean over the reference answers.")
    skipped = [f"{key}, {k}: {e[k]['skipped']}" for key, e in paired.items() for k, _h in cols
               if isinstance(e.get(k), dict) and "skipped" in e[k]]
    if skipped:
        note += " Skipped: " + "; ".join(skipped)
    return Table("Paired differences vs references", ["model vs reference"] + [h for _k, h in cols], rows, note,
                 muted)


def over_refusal_table(results: dict[str, Any], missing: str = MISSING) -> Table | None:
    return _per_key_table(results, "over_refusal_categories", "rate",
                          "Over-refusal by category (harmless prompts that sound alarming)", "category", missing)


def utility_table(results: dict[str, Any], missing: str = MISSING) -> Table | None:
    return _per_key_table(results, "utility_tasks", "accuracy", "Utility by task (exact-match accuracy)", "task",
                          missing)


def all_tables(results: dict[str, Any], missing: str = MISSING) -> list[Table]:
    tabs = [summary_table(results, missing), paired_table(results, missing), category_table(results, missing),
            attack_category_table(results, missing), over_refusal_table(results, missing),
            utility_table(results, missing)]
    return [t for t in tabs if t is not None]


def text_table(table: Table) -> str:
    widths = [max(len(h), *(len(r[i]) for r in table.rows)) if table.rows else len(h)
              for i, h in enumerate(table.headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(table.headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in table.rows]
    return "\n".join(out)


def summary_text(results: dict[str, Any]) -> str:
    """The terminal summary: the comparison table, the paired differences and ASR by category."""
    parts = []
    for t in (summary_table(results, "-"), paired_table(results, "-"), category_table(results, "-")):
        if t is not None:
            parts.append(f"{t.title}\n{text_table(t)}")
    return "\n\n".join(parts)
