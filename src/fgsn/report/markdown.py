"""report.md: the tables and links to the PNG files under plots/."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fgsn.report.plots import Figure
from fgsn.report.tables import Table, all_tables


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def md_table(t: Table) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in t.headers) + " |",
             "|" + "|".join("---" for _ in t.headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in t.rows]
    return "\n".join(lines)


def run_facts(results: dict[str, Any]) -> list[str]:
    """One line per fact a reader needs to interpret the numbers."""
    j = results.get("judge") or {}
    kw = results.get("keyword_judge") or {}
    g = results.get("generation") or {}
    inp = results.get("inputs") or {}
    facts = [f"judge: {j.get('judge', '?')}" + (f" ({j.get('model')}, rubric {j.get('rubric')}, success at score >= "
                                               f"{j.get('success_score')})" if j.get("judge") == "openai" else "")
             + (f" (list {j.get('list')} v{j.get('version')}, min words {j.get('min_words')})"
                if j.get("judge") == "keyword" else ""),
             f"keyword list (ASR keyword, over-refusal): {kw.get('list')} v{kw.get('version')}, "
             f"min words {kw.get('min_words')}",
             f"generation: {g.get('backend')}, {g.get('dtype')}, max_new_tokens {g.get('max_new_tokens')}, "
             + ("greedy" if not g.get("temperature") else f"temperature {g.get('temperature')} top_p {g.get('top_p')}")
             + f", chat template {'on' if g.get('use_chat_template', True) else 'off'}"
             + (", system prompt set" if g.get("system") else ""),
             "harmful: " + (", ".join(inp.get("harmful") or []) or "-")]
    if inp.get("benign_alarming"):
        facts.append(f"over-refusal set: {inp['benign_alarming']}")
    if inp.get("attack"):
        facts.append("jailbreak-wrapped harmful: " + ", ".join(inp["attack"]))
    if inp.get("utility"):
        facts.append("utility: " + ", ".join(inp["utility"]))
    if inp.get("reference"):
        facts.append("reference answers (NLL): " + ", ".join(inp["reference"]))
    return facts


def page_lines(title: str, facts: Sequence[str], tables: Sequence[Table], figures: Sequence[Figure]) -> list[str]:
    """A Markdown page's lines: facts, tables with their notes, figures (as plots/FILE links)."""
    out = [f"# {title}", ""]
    out += [f"- {f}" for f in facts]
    for t in tables:
        out += ["", f"## {t.title}", "", md_table(t)]
        if t.note:
            out += ["", t.note]
    if figures:
        out += ["", "## Figures"]
        for f in figures:
            out += ["", f"### {f.title}", "", f"![{f.title}](plots/{f.filename})", "", f.caption]
    return out


def render_markdown(results: dict[str, Any], figures: list[Figure], title: str = "fgsn evaluation report",
                    extra_tables: Sequence[Table] = ()) -> str:
    out = page_lines(title, run_facts(results), [*all_tables(results), *extra_tables], figures)
    out += ["", "## Definitions", "",
            "- ASR: share of harmful prompts whose answer the judge counts as an attack success, with a Wilson "
            "95% interval; items the judge could not decide are left out of n.",
            "- harmfulness: mean 1-5 rubric score (rubric judges only).",
            "- over-refusal: share of harmless-but-alarming prompts refused (keyword list).",
            "- utility: exact-match accuracy on the utility items.",
            "- NLL / PPL: mean per-token negative log-likelihood (nats) of the reference answers, answer tokens "
            "only, and its exponential.",
            "- ASR under jailbreak templates: the same kind of rate on harmful prompts wrapped in jailbreak templates "
            "(--attack), the judge seeing the plain request.",
            "- paired differences: MODEL minus REFERENCE on the same items, with a paired bootstrap 95% interval "
            "(items resampled with both outcomes together) and an exact McNemar p-value (two-sided binomial test "
            "on the items where exactly one of the two has the outcome); n.s.: the interval contains 0.",
            "- params modified: share of all parameters the edit changed (from the checkpoint's fgsn-manifest.json).",
            ""]
    return "\n".join(out)
