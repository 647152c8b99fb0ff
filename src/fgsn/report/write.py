"""`write_report`: render the results of a run folder (results.json) and the manifests of its
models into plots/*.png, report.md and a self-contained report.html.

The report computes nothing: the numbers are those of results.json (fgsn.evaluate.results, or an
orchestrator's own results such as `fgsn compare`'s), the layer and mask figures come from each
model's edit manifest (fgsn.artifacts.manifest).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fgsn.artifacts.eval_run import read_results
from fgsn.artifacts.manifest import read_manifest
from fgsn.atomic import atomic_write_bytes, atomic_write_text

EVAL_TITLE = "fgsn evaluation report"


def write_report(rundir: str | Path, results: dict[str, Any] | None = None, *, title: str = EVAL_TITLE,
                 extra_tables: Sequence = (), echo: bool = False) -> dict[str, Any]:
    """Write RUNDIR/plots/, report.md and report.html from `results` (default: RUNDIR/results.json)
    with `extra_tables` after the standard ones; return the results. With `echo`, print the
    summary table. A figure of an earlier report (a model since dropped) is removed. Reference
    models of a comparison (kind "reference") get layer and mask figures only when they have a
    manifest."""
    from fgsn.report.html import render_html
    from fgsn.report.markdown import render_markdown
    from fgsn.report.plots import make_figures
    from fgsn.report.tables import summary_text

    rundir = Path(rundir).expanduser()
    results = read_results(rundir) if results is None else results
    manifests = {n: read_manifest(results["models"][n].get("path") or "") for n in results["order"]}
    manifests = {n: m for n, m in manifests.items() if results["models"][n].get("kind") != "reference" or m}
    figures = make_figures(results, manifests)
    for fig in figures:
        atomic_write_bytes(rundir / "plots" / fig.filename, fig.png)
    current = {f.filename for f in figures}
    for old in (rundir / "plots").glob("*.png") if (rundir / "plots").is_dir() else []:
        if old.name not in current:
            old.unlink()
    atomic_write_text(rundir / "report.md", render_markdown(results, figures, title=title, extra_tables=extra_tables))
    atomic_write_text(rundir / "report.html", render_html(results, figures, title=title, extra_tables=extra_tables))
    if echo:
        print(summary_text(results))
    return results
