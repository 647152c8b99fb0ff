"""Utility items and exact-match scoring.

Sources (`--utility`, repeatable):
- `gsm_symbolic`, `basic_arithmetic` (or `rg:NAME` for any other reasoning-gym dataset), with an
  optional query `?limit=N&seed=S` (defaults: --utility-limit, --utility-seed). Items are generated
  offline by reasoning-gym from the seed, so the same spec is the same items everywhere, and are
  scored with the dataset's own `score_answer` on the extracted final answer (exact match =
  score 1.0).
- a prompt file or `builtin:NAME` whose rows carry an `answer`: exact match of the extracted final
  answer after normalisation (case, whitespace, trailing period; numbers compared as numbers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from fgsn.errors import InputError

RG_TASKS = ("gsm_symbolic", "basic_arithmetic")


@dataclass
class UtilityItem:
    task: str
    question: str
    answer: str
    uid: str
    scorer: Any = field(default=None, repr=False)  # (reasoning-gym dataset, entry) or None

    def score(self, completion: str) -> bool:
        extracted = extract_answer(completion, numeric=_is_number(self.answer))
        if self.scorer is not None:
            ds, entry = self.scorer
            if extracted is None:
                return False
            try:
                return float(ds.score_answer(extracted, entry)) >= 1.0
            except Exception:  # noqa: BLE001 - a scorer crash on odd model output is a wrong answer
                return False
        return exact_match(extracted, self.answer)


_NUM_RX = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_MARKERS = [
    re.compile(r"\\boxed\{([^{}]*)\}"),
    re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*(.+)", re.IGNORECASE),
    re.compile(r"^####\s*(.+)$", re.MULTILINE),
]


def _is_number(s: str) -> bool:
    return bool(re.fullmatch(r"\s*-?\d[\d,]*(?:\.\d+)?\s*", s or ""))


def _num(s: str) -> float | None:
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def normalize(s: str) -> str:
    s = " ".join(s.strip().split()).lower()
    s = s.strip("*`\"' ")
    return s.rstrip(".").strip()


def extract_answer(text: str, numeric: bool = False) -> str | None:
    """The model's final answer: the last `\\boxed{}`, else after the last "answer is/Answer:",
    else after "####"; for numeric references the last number in that span (or in the whole
    text), otherwise the last non-empty line."""
    if not text or not text.strip():
        return None
    span = None
    for rx in _MARKERS:
        hits = rx.findall(text)
        if hits:
            span = hits[-1].strip().splitlines()[0] if hits[-1].strip() else None
            break
    if numeric:
        nums = _NUM_RX.findall(span if span is not None else text)
        if not nums and span is not None:
            nums = _NUM_RX.findall(text)
        return nums[-1].replace(",", "") if nums else None
    if span is not None:
        return span
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else None


def exact_match(extracted: str | None, reference: str) -> bool:
    if extracted is None:
        return False
    if _is_number(reference):
        a, b = _num(extracted.strip()), _num(reference.strip())
        return a is not None and b is not None and abs(a - b) <= 1e-9 * max(1.0, abs(b))
    return normalize(extracted) == normalize(reference)


def _rg_items(name: str, limit: int, seed: int, instruction: str) -> list[UtilityItem]:
    try:
        import reasoning_gym
    except ImportError:
        raise InputError("utility tasks from reasoning-gym need it installed: pip install reasoning-gym==0.1.25"
                         ) from None
    try:
        ds = reasoning_gym.create_dataset(name, seed=seed, size=limit)
    except (ValueError, KeyError) as e:
        raise InputError(f"reasoning-gym has no dataset {name!r} ({e})") from None
    items = []
    for i in range(limit):
        entry = ds[i]
        items.append(UtilityItem(task=name, question=entry["question"] + instruction, answer=str(entry["answer"]),
                                 uid=f"{name}-s{seed}-{i}", scorer=(ds, entry)))
    return items


def load_utility(spec: str, *, limit: int = 100, seed: int = 0, instruction: str = "") -> list[UtilityItem]:
    """Items of one `--utility` source (see module doc)."""
    base, _, query = spec.partition("?")
    rg_name = base[3:] if base.startswith("rg:") else (base if base in RG_TASKS else None)
    if rg_name is not None:
        params = dict(parse_qsl(query)) if query else {}
        unknown = set(params) - {"limit", "seed"}
        if unknown:
            raise InputError(f"--utility {spec}: unknown option {sorted(unknown)}; use limit= and seed=")
        try:
            n = int(params.get("limit", limit))
            s = int(params.get("seed", seed))
        except ValueError:
            raise InputError(f"--utility {spec}: limit and seed must be integers") from None
        if n < 1:
            raise InputError(f"--utility {spec}: limit must be >= 1")
        return _rg_items(rg_name, n, s, instruction)
    from fgsn.data.prompts import load_prompts

    pset = load_prompts(spec)
    missing = [p.text[:60] for p in pset if p.answer is None]
    if missing:
        raise InputError(f"--utility {spec}: {len(missing)} rows have no 'answer' (e.g. {missing[0]!r}); utility "
                         f"files need prompt/answer pairs, or use one of {', '.join(RG_TASKS)}")
    return [UtilityItem(task=pset.name, question=p.text + instruction, answer=str(p.answer), uid=p.uid)
            for p in pset]
