"""Report: manifest, Markdown/HTML report, plots."""
