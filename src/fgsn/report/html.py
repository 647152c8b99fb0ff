"""report.html: one self-contained file (CSS inline, PNGs as base64 data URIs) that can be mailed
or archived without its folder. Every text taken from the run is HTML-escaped."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape
from typing import Any

from fgsn.report.markdown import run_facts
from fgsn.report.plots import Figure
from fgsn.report.tables import Table, all_tables

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;padding:0 1rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
th{background:#f3f3f3}
tr:nth-child(even) td{background:#fafafa}
figure{margin:1rem 0}
figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}
.note{font-size:.85rem;color:#555}
td.ns{color:#999}
"""


def html_table(t: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in t.headers)
    def cell(i: int, j: int, c: str) -> str:
        return f'<td class="ns">{escape(c)}</td>' if (i, j) in t.muted else f"<td>{escape(c)}</td>"

    body = "".join("<tr>" + "".join(cell(i, j, c) for j, c in enumerate(r)) + "</tr>" for i, r in enumerate(t.rows))
    note = f'<p class="note">{escape(t.note)}</p>' if t.note else ""
    return f"<h2>{escape(t.title)}</h2>\n<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


def html_figure(f: Figure) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    return (f'<figure id="{escape(f.id)}"><img alt="{escape(f.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(f.title)}: {escape(f.caption)}</figcaption></figure>")


def render_page(title: str, facts: Sequence[str], tables: Sequence[Table], figures: Sequence[Figure]) -> str:
    """One self-contained HTML page: a list of facts, the tables, then the figures."""
    items = "".join(f"<li>{escape(x)}</li>" for x in facts)
    body = "\n".join(html_table(t) for t in tables)
    figs = ("<h2>Figures</h2>\n" + "\n".join(html_figure(f) for f in figures)) if figures else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(title)}</title>\n"
            f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{escape(title)}</h1>\n<ul>{items}</ul>\n"
            f"{body}\n{figs}\n</body>\n</html>\n")


def render_html(results: dict[str, Any], figures: list[Figure], title: str = "fgsn evaluation report",
                extra_tables: Sequence[Table] = ()) -> str:
    return render_page(title, run_facts(results), [*all_tables(results), *extra_tables], figures)
