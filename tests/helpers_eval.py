"""Shared helpers of the eval/report tests: a synthetic run folder and an HTML checker."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class StrictHTML(HTMLParser):
    """Checks that every non-void element is closed in order; collects <img> sources."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def check_html(text: str) -> StrictHTML:
    p = StrictHTML()
    p.feed(text)
    p.close()
    assert text.startswith("<!DOCTYPE html>")
    assert not p.errors, p.errors
    assert not p.stack, f"unclosed: {p.stack}"
    for src in p.images:
        assert src.startswith("data:image/png;base64,"), src[:40]
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    return p


def write_manifest(folder: Path, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    base = {"method": "fgsn", "modified_fraction": 0.0467, "modified_fraction_edited": 0.12, "layers": [1, 2],
            "modules": [{"name": f"model.layers.{ly}.{m}.weight", "layer": ly, "module": m, "numel": 1000,
                         "masked": 10 * ly + k} for ly in (1, 2) for k, m in enumerate(["self_attn.q_proj", "mlp.down_proj"])]
                       + [{"name": "model.layers.3.mlp.up_proj.weight", "numel": 500, "masked": 0, "changed": 0}],
            "layer_search": {"curves": {"bb": [0.9, 0.8, 0.7, 0.7], "bh": [0.9, 0.6, 0.4, 0.45],
                                        "hh": [0.9, 0.85, 0.8, 0.8], "gap": [0.0, 0.2, 0.3, 0.25]},
                             "selected": [1, 2]},
            "categories": {"weapons": {"masked": 30, "modified_fraction": 0.01, "overlap": 0}}}
    base.update(fields)
    (folder / "fgsn-manifest.json").write_text(json.dumps(base))
    return folder


def harmful_row(cat: str, success: bool | None, score: float | None = None, kw: bool | None = None) -> dict:
    return {"kind": "harmful", "set": "h", "uid": "u", "category": cat, "prompt": "p", "completion": "c",
            "success": success, "refused": None if success is None else not success, "score": score,
            "label": None, "judge_error": None if success is not None else "x",
            "keyword_success": success if kw is None else kw, "keyword_refused": None}


def write_run(rundir: Path, models: dict[str, tuple[Path, list[dict]]], judge: dict | None = None,
              nll: dict[str, dict] | None = None) -> Path:
    """A run folder as fgsn eval writes it, from hand-made records."""
    rundir.mkdir(parents=True, exist_ok=True)
    for name, (_path, rows) in models.items():
        d = rundir / "models" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if nll and name in nll:
            (d / "nll.json").write_text(json.dumps(nll[name]))
    spec = {"schema": "fgsn-eval/1", "order": list(models),
            "models": {n: {"path": str(p), "adapter": None, "sha256": "0" * 64} for n, (p, _) in models.items()},
            "judge": judge or {"judge": "keyword", "list": "fgsn-v1", "version": "1", "min_words": 5},
            "keyword_judge": {"judge": "keyword", "list": "fgsn-v1", "version": "1", "min_words": 5},
            "generation": {"backend": "hf", "dtype": "float32", "max_new_tokens": 8, "temperature": 0.0},
            "inputs": {"harmful": ["h.jsonl"], "benign_alarming": None, "utility": [], "reference": []},
            "counts": {"harmful": 0, "alarming": 0, "utility": 0, "reference": 0}}
    (rundir / "eval.json").write_text(json.dumps(spec))
    return rundir


def report_from_records(rundir: Path, echo: bool = False) -> dict:
    """What `fgsn report RUNDIR` does: results.json from the records, then the report from it."""
    from fgsn.evaluate.results import write_results
    from fgsn.report import write_report

    return write_report(rundir, write_results(rundir), echo=echo)
