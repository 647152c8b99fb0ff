"""An evaluation run folder (`fgsn eval --out RUNDIR`) and its readers:

    RUNDIR/eval.json                  what was evaluated and how (schema EVAL_SCHEMA): model order,
                                      paths, hashes, inputs, counts, judge, generation, options
    RUNDIR/models/NAME/records.jsonl  one record per item (harmful, attack, alarming, utility)
    RUNDIR/models/NAME/nll.json       the reference answers' NLL (when references were given)
    RUNDIR/results.json               every number, aggregated from the records (schema
                                      RESULTS_SCHEMA, docs/results-schema.md; fgsn.evaluate.results)

Reports (fgsn.report) and orchestrators read a run through these functions only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fgsn.errors import InputError, IntegrityError

EVAL_SCHEMA = "fgsn-eval/1"
RESULTS_SCHEMA = "fgsn-results/1"
EVAL_JSON = "eval.json"
RESULTS_JSON = "results.json"


def read_eval_spec(rundir: Path) -> dict[str, Any]:
    path = rundir / EVAL_JSON
    if not rundir.is_dir():
        raise InputError(f"run folder {rundir} does not exist; run `fgsn eval --out {rundir}` first")
    if not path.is_file():
        raise InputError(f"{rundir} has no eval.json; it is not a finished `fgsn eval` run folder "
                         f"(rerun `fgsn eval ... --out {rundir}`: cached completions are reused)")
    return _read_doc(path, "an fgsn eval record", "rerun fgsn eval into this folder")


def read_records(rundir: Path, name: str) -> list[dict[str, Any]]:
    path = rundir / "models" / name / "records.jsonl"
    if not path.is_file():
        raise IntegrityError(f"{path} is missing; rerun fgsn eval into {rundir} (cached work is reused)")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):  # not splitlines(): see jsonl_lines
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise IntegrityError(f"{path}:{n} is corrupt ({e.msg}); rerun fgsn eval into {rundir}") from e
    return rows


def read_nll(rundir: Path, name: str) -> dict[str, Any] | None:
    """The reference NLL of model `name`, or None when the run scored no reference answers."""
    path = rundir / "models" / name / "nll.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_results(rundir: str | Path) -> dict[str, Any]:
    """RUNDIR/results.json (as `fgsn eval`, `fgsn compare` and the other orchestrators write it)."""
    path = Path(rundir).expanduser() / RESULTS_JSON
    if not path.is_file():
        raise InputError(f"{path.parent} has no results.json; run `fgsn eval --out {path.parent}` (or `fgsn report "
                         f"{path.parent}` on a run folder with records) first")
    return _read_doc(path, "an fgsn results file", f"rerun `fgsn report {path.parent}`")


def _read_doc(path: Path, what: str, rerun: str) -> dict[str, Any]:
    """eval.json or results.json: a JSON object with 'order' and 'models', or an error saying how
    to rewrite it."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{path} is corrupt ({e}); {rerun} to rewrite it") from e
    if not isinstance(doc, dict) or "order" not in doc or "models" not in doc:
        raise IntegrityError(f"{path} is not {what} (no 'order'/'models'); {rerun}")
    return doc
