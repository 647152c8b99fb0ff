"""Reports of evaluation runs: results.json, report.md, report.html and plots."""

from __future__ import annotations

from typing import Any


def build_report(rundir, echo: bool = False) -> dict[str, Any]:
    """Write RUNDIR/results.json, report.md, report.html and plots/; return the results dict."""
    from fgsn.report.build import build_report as _build

    return _build(rundir, echo=echo)


__all__ = ["build_report"]
