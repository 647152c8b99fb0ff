"""Options of `fgsn project`: torch-free, so that the command line builds its flags and help
without importing torch."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from fgsn.locate.options import LocateOptions


class ProjectOptions(LocateOptions):
    base: str  # type: ignore[assignment]  (required here: the safety direction is aligned - base)
    harmful: list[str] = Field(default_factory=list)
    task: list[str] = Field(default_factory=list)
    ledger: str | None = None
    locate_run: str | None = None
    output_format: Literal["merged", "adapter"] = "merged"
    max_shard_gb: float = Field(5.0, gt=0)
    edit_device: str = Field("auto", description="where the projection's arithmetic runs: auto (the first CUDA "
                             "GPU when there is one, else cpu), cpu, cuda or cuda:N. Tensors are read and written on "
                             "the host in their stored dtype either way; a GPU gives the CPU's result to float32 "
                             "rounding (TF32 is off)")
    prefetch: int = Field(1, ge=0, le=2, description="tensors whose inputs (fine-tuned, aligned, base, mask) are "
                          "read ahead in a background thread while the current one is projected; each adds at "
                          "most one tensor's inputs (as stored, and its mask) to memory; 0: read in turn; the "
                          "output is byte-identical either way")

    @field_validator("edit_device")
    @classmethod
    def _edit_device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"unknown edit device {v!r}; use auto, cpu, cuda or cuda:N")
        return v
