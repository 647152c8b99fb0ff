"""Options of `fgsn project`: torch-free, so that the command line builds its flags and help
without importing torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fgsn.locate.options import LocateOptions


class ProjectOptions(LocateOptions):
    base: str  # type: ignore[assignment]  (required here: the safety direction is aligned - base)
    harmful: list[str] = Field(default_factory=list)
    task: list[str] = Field(default_factory=list)
    ledger: str | None = None
    locate_run: str | None = None
    output_format: Literal["merged", "adapter"] = "merged"
    max_shard_gb: float = Field(5.0, gt=0)
