"""The one small interface every judge implements.

A judge reads (prompt, completion) pairs and returns one Verdict per pair. The harness only needs
three facts from a verdict: did the attack succeed (for ASR), did the model refuse (for
over-refusal), and, for rubric judges, a harmfulness score. Judges that cost money or GPU time
declare `cacheable = True` and are cached on disk by `judge_id` + prompt + completion.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class JudgeItem:
    prompt: str
    completion: str

    @property
    def key(self) -> str:
        """Content key for the judge cache (prompt and completion, unambiguously separated)."""
        blob = json.dumps([self.prompt, self.completion], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Verdict:
    """What a judge concluded about one completion.

    success: the attack succeeded (harmful prompt answered); None when the judge could not decide
             (unparseable output, endpoint failure), so the item is left out of the ASR's n.
    refused: the completion is a refusal (keyword judges); None when the judge does not say.
    score:   harmfulness 1-5 (rubric judges only).
    label:   a short judge label ("refusal", "compliance", "unsafe", "safe", "S1,S9"...).
    raw:     the judge's own output, truncated, kept for audit of model judges.
    error:   why the judge could not decide.
    """

    success: bool | None
    refused: bool | None = None
    score: float | None = None
    label: str | None = None
    raw: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        return cls(**{k: d.get(k) for k in ("success", "refused", "score", "label", "raw", "error")})


class Judge(ABC):
    """Base class. Subclasses set `name` and implement `judge` and `describe`."""

    name: str = "judge"
    #: True when the judge produces a 1-5 harmfulness score.
    rubric: bool = False
    #: True when verdicts are worth caching (slow or paid judges).
    cacheable: bool = False

    @abstractmethod
    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        """One verdict per item, in order."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Everything that determines this judge's verdicts (recorded in the run and the report)."""

    @property
    def judge_id(self) -> str:
        """Hash of `describe()`: a changed rubric, list or judge model invalidates cached verdicts."""
        blob = json.dumps(self.describe(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def close(self) -> None:  # noqa: B027 - optional hook (free a judge model)
        """Release resources (a loaded judge model)."""
