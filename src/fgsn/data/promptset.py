"""PromptSet: the one in-memory form of every prompt source (user files and shipped benchmarks),
with its filters (category, hash split, limit) and the prompt-file reader (.jsonl, .json, .csv,
.txt). Which source a spec names (`builtin:NAME?query`, a path) is resolved by
`fgsn.data.prompts.load_prompts`. Splits are made by hashing the prompt text, so they do not
depend on file order and never leak a prompt between `train` and `test`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from fgsn.errors import InputError

log = logging.getLogger(__name__)

SPLITS = ("train", "test", "all")
QUERY_KEYS = {"split", "category", "limit", "sample", "train_fraction", "exclude_category"}


@dataclass(frozen=True)
class Prompt:
    """One prompt; `answer` is a reference answer (utility items, benign SFT), `category` a harm or
    task category."""

    text: str
    category: str = "uncategorized"
    answer: str | None = None
    source: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def uid(self) -> str:
        """Stable id: the sha256 of the text (prompt identity for caches and splits)."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]


def hash_split(text: str, train_fraction: float = 0.5) -> str:
    bucket = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if bucket < train_fraction else "test"


@dataclass
class PromptSet:
    """An ordered, de-duplicated list of prompts with a name (used in reports)."""

    name: str
    prompts: list[Prompt]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        unique: list[Prompt] = []
        for p in self.prompts:
            if p.text in seen:
                continue
            seen.add(p.text)
            unique.append(p)
        if len(unique) < len(self.prompts):
            log.warning("%s: dropped %d duplicate prompts", self.name, len(self.prompts) - len(unique))
        self.prompts = unique

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]

    @property
    def categories(self) -> list[str]:
        return sorted({p.category for p in self.prompts})

    def category_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(p.category for p in self.prompts).items()))

    def filter(self, category: str | Iterable[str] | None = None, split: str = "all",
               train_fraction: float = 0.5, limit: int | None = None,
               exclude_category: str | Iterable[str] | None = None) -> PromptSet:
        if split not in SPLITS:
            raise InputError(f"{self.name}: unknown split {split!r}; use one of {', '.join(SPLITS)}")
        cats = {category} if isinstance(category, str) else (set(category) if category else None)
        excl = {exclude_category} if isinstance(exclude_category, str) else set(exclude_category or ())
        out = [
            p for p in self.prompts
            if (cats is None or p.category in cats) and p.category not in excl
            and (split == "all" or hash_split(p.text, train_fraction) == split)
        ]
        if limit is not None:
            out = out[:limit]
        return PromptSet(self.name, out)

    def require(self, min_count: int = 1, what: str = "prompts") -> PromptSet:
        """Raise a clear error when the set is too small to use (empty, or duplicate-only)."""
        if len(self) < min_count:
            raise InputError(
                f"{self.name}: {len(self)} distinct {what} after filtering and de-duplication, "
                f"need at least {min_count}; check the file, its category/split filters and --limit"
            )
        return self

    def with_name(self, name: str) -> PromptSet:
        return PromptSet(name, list(self.prompts))

    def to_jsonl(self) -> str:
        rows = []
        for p in self.prompts:
            row = {"prompt": p.text, "category": p.category}
            if p.answer is not None:
                row["answer"] = p.answer
            rows.append(json.dumps(row, ensure_ascii=False))
        return "\n".join(rows) + ("\n" if rows else "")


def _row_prompt(row: dict, where: str) -> Prompt:
    text = row.get("prompt")
    if text is None:
        for alt in ("text", "instruction", "question", "behavior", "Behavior", "forbidden_prompt", "goal"):
            if row.get(alt) is not None:
                text = row[alt]
                break
    if not isinstance(text, str):
        raise InputError(f"{where}: no 'prompt' field (string) in row {row!r:.120}; each row needs one")
    text = text.strip()
    if not text:
        raise InputError(f"{where}: empty prompt text; remove the row")
    category = row.get("category") or "uncategorized"
    answer = row.get("answer", row.get("reference", row.get("response")))
    return Prompt(text=text, category=str(category), answer=None if answer is None else str(answer), source=where)


def read_prompt_file(path: Path) -> list[Prompt]:
    """The prompts of a .jsonl/.json/.csv/.txt file, with clear errors for a missing, unreadable or
    malformed file."""
    if not path.exists():
        raise InputError(f"prompt file {path} does not exist; give a .jsonl, .csv or .txt file, or builtin:NAME")
    if not path.is_file():
        raise InputError(f"prompt file {path} is not a file")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"prompt file {path} is not UTF-8 text ({e}); re-encode it as UTF-8") from e
    except OSError as e:
        raise InputError(f"prompt file {path} cannot be read: {e.strerror}") from e
    suffix = path.suffix.lower()
    prompts: list[Prompt] = []
    if suffix in (".jsonl", ".json"):
        lines = raw.split("\n")  # not splitlines(): JSON strings may hold U+2028 and the like
        if suffix == ".json":
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}: invalid JSON ({e})") from e
            if not isinstance(data, list):
                raise InputError(f"{path}: a .json prompt file must hold a list of objects or strings")
            rows = data
        else:
            rows = []
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{n}: invalid JSON line ({e.msg}); each line must be one object") from e
        for n, row in enumerate(rows, 1):
            if isinstance(row, str):
                row = {"prompt": row}
            if not isinstance(row, dict):
                raise InputError(f"{path}: row {n} is {type(row).__name__}, expected an object with a 'prompt' field")
            prompts.append(_row_prompt(row, f"{path}:{n}"))
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(raw, newline=""))  # quoted fields may hold line breaks
        if not reader.fieldnames or "prompt" not in reader.fieldnames:
            raise InputError(f"{path}: a .csv prompt file needs a 'prompt' column (found {reader.fieldnames})")
        for n, row in enumerate(reader, 2):
            if (row.get("prompt") or "").strip():
                prompts.append(_row_prompt(row, f"{path}:{n}"))
    elif suffix in (".txt", ""):
        prompts = [Prompt(text=line.strip(), source=str(path)) for line in raw.split("\n") if line.strip()]
    else:
        raise InputError(f"prompt file {path}: unknown format {suffix!r}; use .jsonl, .csv or .txt")
    return prompts


def concat(name: str, sets: Iterable[PromptSet]) -> PromptSet:
    return PromptSet(name, [p for s in sets for p in s])


def relabel(pset: PromptSet, category: str) -> PromptSet:
    return PromptSet(pset.name, [replace(p, category=category) for p in pset])


def validation_split(pset: PromptSet, share: float) -> tuple[PromptSet, PromptSet]:
    """(rest, validation): the prompts whose text hashes into the top `share` of the hash range
    are the validation part, so the split does not depend on file order and a prompt never sits
    on both sides. When the hash leaves one side empty and there are two prompts or more, the
    prompt nearest the boundary moves over: small task sets still get both parts."""
    if not 0.0 < share < 1.0:
        raise InputError(f"validation share {share} must lie strictly between 0 and 1")

    def bucket(p: Prompt) -> int:
        return int(hashlib.sha256(p.text.encode("utf-8")).hexdigest()[:8], 16)

    ranked = sorted(pset.prompts, key=lambda p: (bucket(p), p.text))
    cut = sum(1 for p in ranked if bucket(p) / 0xFFFFFFFF < 1.0 - share)
    if len(ranked) >= 2:
        cut = min(max(cut, 1), len(ranked) - 1)
    val = {p.text for p in ranked[cut:]}
    return (PromptSet(pset.name, [p for p in pset.prompts if p.text not in val]),
            PromptSet(f"{pset.name}-validation", [p for p in pset.prompts if p.text in val]))
