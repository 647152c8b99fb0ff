"""Minimal safetensors reading and streaming writing, tensor by tensor.

Reading uses plain positioned reads (no mmap), so memory holds only the tensor asked for and the
process RSS does not grow with the model. Writing lays out every shard's header up front from
the planned names, shapes and dtypes, then appends each tensor's bytes as it is produced: the
writer never holds more than one tensor. Both follow the format spec: an 8-byte little-endian
header length, a JSON header of {name: {dtype, shape, data_offsets}} plus `__metadata__`, then
the tensor bytes.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from fgsn.errors import IntegrityError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int      # absolute byte offset in the file
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header; truncated or corrupt files raise IntegrityError."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise IntegrityError(f"{path} is truncated ({size} bytes): not a safetensors file; re-download or re-save it")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise IntegrityError(f"{path}: header length {n} does not fit the {size}-byte file; the file is "
                                 "truncated or not safetensors")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IntegrityError(f"{path}: corrupt safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise IntegrityError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    infos: dict[str, TensorInfo] = {}
    data_start = 8 + n
    for name, h in header.items():
        try:
            dtype = DTYPES[h["dtype"]]
            shape = tuple(int(s) for s in h["shape"])
            a, b = (int(x) for x in h["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise IntegrityError(f"{path}: tensor {name!r} has a malformed header entry ({e})") from e
        info = TensorInfo(name, dtype, shape, data_start + a, data_start + b)
        if b < a or info.end > size:
            raise IntegrityError(f"{path}: tensor {name!r} ends at byte {info.end} but the file has {size} bytes; "
                                 "the file is truncated, re-download or re-save it")
        if info.nbytes != info.numel * torch.empty((), dtype=dtype).element_size():
            raise IntegrityError(f"{path}: tensor {name!r} has {info.nbytes} bytes for shape {shape} {h['dtype']}")
        infos[name] = info
    return infos, meta


def read_tensor(path: str | os.PathLike, info: TensorInfo) -> torch.Tensor:
    """Read one tensor with a positioned read into a fresh buffer (CPU, writable).

    The buffer is an uninitialised torch allocation, filled by `readinto`: no zero-fill, and the
    whole read runs inside the system call with the GIL released, so a prefetch thread
    (`fgsn.models.prefetch`) reads while the caller computes."""
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=info.dtype)
    raw = torch.empty(info.nbytes, dtype=torch.uint8)
    view = memoryview(raw.numpy())
    with open(path, "rb", buffering=0) as f:
        f.seek(info.start)
        got = 0
        while got < info.nbytes:
            k = f.readinto(view[got:])
            if not k:
                raise IntegrityError(f"{path}: unexpected end of file while reading {info.name}")
            got += k
    return raw.view(info.dtype).reshape(info.shape)


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = torch.empty((), dtype=self.dtype).element_size()
        for s in self.shape:
            n *= s
        return n


def plan_shards(tensors: list[PlannedTensor], max_shard_bytes: int) -> list[list[PlannedTensor]]:
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


class StreamingShardWriter:
    """Writes one safetensors file whose header is known in advance; tensors must arrive in plan
    order. `close()` checks that every planned tensor was written."""

    def __init__(self, path: str | os.PathLike, plan: list[PlannedTensor], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.plan = plan
        header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        for t in plan:
            header[t.name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                              "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # align tensor data to 8 bytes, as the reference writer does
        self._f = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        self._f.write(struct.pack("<Q", len(raw)) + raw)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self.plan) or self.plan[self._next].name != name:
            expected = self.plan[self._next].name if self._next < len(self.plan) else "(none)"
            raise RuntimeError(f"shard writer got {name} but expected {expected}")
        t = self.plan[self._next]
        if tuple(tensor.shape) != t.shape or tensor.dtype != t.dtype:
            raise RuntimeError(f"{name}: planned {t.shape} {t.dtype}, got {tuple(tensor.shape)} {tensor.dtype}")
        data = tensor.detach().to("cpu").contiguous()
        if data.numel():
            self._f.write(memoryview(data.view(torch.uint8).reshape(-1).numpy()))  # no extra copy
        self._next += 1

    def close(self) -> None:
        if self._next != len(self.plan):
            self._f.close()
            raise RuntimeError(f"{self.path}: {len(self.plan) - self._next} planned tensors were not written")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
