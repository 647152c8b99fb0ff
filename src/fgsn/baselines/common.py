"""What every weight-editing baseline shares: options, the streamed rewrite of a checkpoint
(`fgsn.edit.rewrite`, shared with the edit stage's own entry-wise methods), and a manifest in
fgsn's schema (`fgsn-manifest.json`) so that the report reads a baseline's output the same way as
an fgsn output.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from pathlib import Path

import torch

from fgsn.baselines.options import BaselineOptions
from fgsn.edit.rewrite import RUN_INFO, run_info, side_files, stream_rewrite, write_output
from fgsn.edit.rewrite import EditResult as BaselineResult
from fgsn.errors import InputError
from fgsn.models.registry import layer_prefix
from fgsn.models.trio import Trio
from fgsn.report.manifest import assemble_manifest

log = logging.getLogger(__name__)

__all__ = ["RUN_INFO", "BaselineOptions", "BaselineResult", "baseline_manifest", "count_changed", "layer_of",
           "require_out", "run_info", "side_files", "stream_rewrite", "tensor_seed", "write_output"]


def require_out(opts: BaselineOptions, method: str) -> Path:
    if not opts.out:
        raise InputError(f"fgsn baseline {method} needs --out DIR for the edited checkpoint")
    return Path(opts.out)


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed that depends on the run seed and the tensor name only (not on the order
    in which tensors are visited)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def layer_of(trio: Trio) -> Callable[[str], int | None]:
    """tensor name -> decoder layer index (None for embeddings, final norm, head)."""
    rx = re.compile(rf"^{re.escape(layer_prefix(trio.arch, trio.aligned.names))}\.(\d+)\.")

    def f(name: str) -> int | None:
        m = rx.match(name)
        return int(m.group(1)) if m else None

    return f


def baseline_manifest(method: str, opts: BaselineOptions, trio: Trio, modules: list[dict], *,
                      edited_params: int, layers: list[int], extra_inputs: dict | None = None,
                      extra: dict | None = None) -> dict:
    """A manifest in the shared schema (`fgsn.report.manifest.assemble_manifest`), plus the
    method's own `extra` fields."""
    doc = assemble_manifest(method=method, opts=opts, trio=trio, modules=modules, edited_params=edited_params,
                            layers=layers, extra_inputs=extra_inputs)
    doc.update(extra or {})
    return doc


def count_changed(new: torch.Tensor, old: torch.Tensor) -> int:
    return int((new != old).sum())
