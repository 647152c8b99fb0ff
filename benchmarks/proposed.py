"""Proposed fixes for fgsn's core edit path, as monkeypatches, so that their effect can be measured
side by side with the shipped code (`fgsn+fixes` in the benchmark) before anyone edits src/. The
output weights are bit-identical to the shipped code's (checked in tests/test_benchmarks.py); the
manifest's norm statistics may differ in the last float digits (summation order).

1. `check_finite`: `torch.isfinite(t).all()` is a full elementwise pass plus a bool reduction
   (~110 ms for a 5632x2048 bf16 tensor on this CPU, ~11 s for a 1.1B model). Any NaN/Inf makes a
   sum non-finite, so test `t.sum(dtype=float32)` first (~2 ms) and fall back to the exact test
   only when the sum is not finite (a finite tensor whose sum overflows).
2. `project_tensor` (full fine-tunes): no `delta.clone()`, no gather/scatter of all rows by index
   when every row holds a masked entry (the common case at weight granularity: `x[rows]` with
   rows = all is a ~200 ms copy per MLP tensor), `torch.count_nonzero` instead of `bool.sum()`
   (6x faster), the finiteness check only on the projected rows.
3. `PackedMasks.load/save`: keep masks packed end to end; the shipped code unpacks every mask at
   once (1 byte a weight: 5.1 GB for six 70B layers) to load or save them.
4. `StreamingShardWriter.write`: write the tensor's memory directly instead of a `tobytes()` copy.

    python benchmarks/proposed.py project ...   # the fgsn CLI with these patches applied
"""

from __future__ import annotations

import json
import sys

import torch

_SHIPPED: dict[str, object] = {}


def check_finite(t: torch.Tensor, name: str, role: str) -> None:
    from fgsn.edit.projection import check_finite as exact

    if t.is_floating_point() and not bool(torch.isfinite(t.sum(dtype=torch.float32))):
        exact(t, name, role)  # exact test (NaN/Inf present, or only an overflowing sum)


def project_tensor(name, layer, module, *, w_aligned, w_finetuned, w_base, mask, parts, settings, factors=None):
    from fgsn.edit.projection import TensorEdit
    from fgsn.edit.projectors import Projector
    from fgsn.errors import NumericalError

    if factors is not None:  # LoRA updates: unchanged path
        from fgsn.edit.projection import project_tensor as shipped

        return shipped(name, layer, module, w_aligned=w_aligned, w_finetuned=w_finetuned,
                                       w_base=w_base, mask=mask, parts=parts, settings=settings, factors=factors)
    wa = w_aligned.float()
    delta = w_finetuned.to(torch.float32, copy=True).sub_(wa)   # never in place on an input
    V_full = wa - w_base.float()
    edit = TensorEdit(name, layer, module, numel=mask.numel(), masked=int(torch.count_nonzero(mask)),
                      delta_norm=float(delta.norm()),
                      masked_delta_norm=float(torch.where(mask, delta, 0.0).norm()))
    out = w_finetuned.clone()
    sq = 0.0
    r0 = 0
    for part, size in parts:
        r1 = r0 + size
        pmask = mask[r0:r1]
        row_any = pmask.any(1)
        n_rows = int(torch.count_nonzero(row_any))
        proj = Projector(settings.projector, V_full[r0:r1], rank=settings.rank, energy=settings.energy)
        info = {"part": part, "rows": [r0, r1], "masked": int(torch.count_nonzero(pmask)), **proj.describe()}
        if n_rows:
            rows = None if n_rows == size else row_any.nonzero().squeeze(1)
            projected = proj.apply(delta[r0:r1], rows=rows)          # (C dW)[rows], float32
            sub = pmask if rows is None else pmask[rows]
            pn = float(torch.where(sub, projected, 0.0).norm())
            sq += pn * pn
            idx = slice(r0, r1) if rows is None else r0 + rows
            projected.add_(wa[idx])                                  # W_aligned + C dW, as shipped
            if not bool(torch.isfinite(projected.sum())) and not bool(torch.isfinite(projected).all()):
                raise NumericalError(f"{name}: the projected weight has NaN/Inf; check the base and aligned "
                                     "weights")
            out[idx] = torch.where(sub, projected.to(w_finetuned.dtype), w_finetuned[idx])
            info["projected_norm"] = pn
            info["zero_direction"] = proj.is_zero
        edit.parts.append(info)
        r0 = r1
    edit.changed = int(torch.count_nonzero(out != w_finetuned))
    edit.projected_norm = sq ** 0.5 if edit.masked else 0.0
    return out, edit


def _masks_save(self, path, meta=None) -> None:
    from safetensors.torch import save

    from fgsn.atomic import atomic_write_bytes

    shapes = {k: list(s) for k, (_, s) in self._data.items()}
    metadata = {"fgsn": json.dumps({"shapes": shapes, "meta": meta or {}}, sort_keys=True)}
    atomic_write_bytes(path, save({k: p for k, (p, _) in sorted(self._data.items())}, metadata=metadata))


def _masks_load(cls, path):
    from safetensors import SafetensorError, safe_open

    from fgsn.errors import IntegrityError

    pm = cls()
    try:
        with safe_open(str(path), "pt") as f:
            shapes = json.loads((f.metadata() or {})["fgsn"])["shapes"]
            for k in f.keys():  # noqa: SIM118
                pm._data[k] = (f.get_tensor(k), tuple(shapes[k]))
    except (OSError, SafetensorError, KeyError, json.JSONDecodeError) as e:
        raise IntegrityError(f"mask file {path} is unreadable or corrupt ({e}); re-run locate") from e
    return pm


def _writer_write(self, name, tensor) -> None:
    if self._next >= len(self.plan) or self.plan[self._next].name != name:
        expected = self.plan[self._next].name if self._next < len(self.plan) else "(none)"
        raise RuntimeError(f"shard writer got {name} but expected {expected}")
    t = self.plan[self._next]
    if tuple(tensor.shape) != t.shape or tensor.dtype != t.dtype:
        raise RuntimeError(f"{name}: planned {t.shape} {t.dtype}, got {tuple(tensor.shape)} {tensor.dtype}")
    data = tensor.detach().to("cpu").contiguous()
    if data.numel():
        self._f.write(memoryview(data.view(torch.uint8).reshape(-1).numpy()))
    self._next += 1


def apply() -> None:
    """Patch the shipped functions in place (idempotent); `restore()` undoes it."""
    from fgsn.edit import masks_io, projection, run
    from fgsn.models import safetensors_io

    if _SHIPPED:
        return
    _SHIPPED["check_finite"] = projection.check_finite
    _SHIPPED["project_tensor"] = projection.project_tensor
    _SHIPPED["save"] = masks_io.PackedMasks.save
    _SHIPPED["load"] = masks_io.PackedMasks.__dict__["load"]
    _SHIPPED["write"] = safetensors_io.StreamingShardWriter.write
    run.check_finite = check_finite
    run.project_tensor = project_tensor
    masks_io.PackedMasks.save = _masks_save
    masks_io.PackedMasks.load = classmethod(_masks_load)
    safetensors_io.StreamingShardWriter.write = _writer_write


def restore() -> None:
    from fgsn.edit import masks_io, run
    from fgsn.models import safetensors_io

    if not _SHIPPED:
        return
    run.check_finite = _SHIPPED["check_finite"]
    run.project_tensor = _SHIPPED["project_tensor"]
    masks_io.PackedMasks.save = _SHIPPED["save"]
    masks_io.PackedMasks.load = _SHIPPED["load"]
    safetensors_io.StreamingShardWriter.write = _SHIPPED["write"]
    _SHIPPED.clear()


def main(argv: list[str] | None = None) -> int:
    apply()
    from fgsn.cli import main as cli_main

    return cli_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
