"""Reports: render results (results.json) and edit manifests as report.md, report.html and plots.
It reads artifacts (fgsn.artifacts) and computes nothing; the results come from fgsn.evaluate."""

from __future__ import annotations

from fgsn.report.write import write_report

__all__ = ["write_report"]
