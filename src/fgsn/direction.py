"""The safety direction of one module, V = W_aligned - W_base, and the projectors onto it
(method.md step 3): the one place the projection formula lives, used by locate (the `offsafety`
score), the edit (FGSN's sparse projection) and SafeLoRA.

Neither projector ever forms a d_out x d_out matrix, and both run on the device of V (CPU or CUDA):
- `safelora`: C Y = V (V^T Y) / ||V||_F (SafeLoRA, Hsu et al. 2024). Not idempotent: its scale
  follows V. Computed in row blocks as (V_R V^T) Y when d_out <= d_in, else in column blocks as
  V_R (V^T Y_J), whichever costs fewer flops; blocks keep memory bounded.
- `svd`: P Y = U_k (U_k^T Y), U_k the top-k left singular vectors of V, k by `rank` or by the
  smallest k whose singular values hold `energy` of ||V||_F^2. An exact orthogonal projector.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fgsn.errors import InputError

PROJECTORS = ("safelora", "svd")
BLOCK_ELEMS = 1 << 24  # ~64 MB of float32 per intermediate block


@dataclass
class Projector:
    kind: str
    V: torch.Tensor                 # (d_out, d_in) float32
    rank: int | None = None
    energy: float = 0.99
    _U: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in PROJECTORS:
            raise InputError(f"unknown --projector {self.kind!r}; use {' or '.join(PROJECTORS)}")
        # ||V||_F in float64, accumulated in row blocks (no full float64 copy of V)
        step = max(1, BLOCK_ELEMS // max(1, self.V.shape[1]))
        sq = sum(float(self.V[r:r + step].double().pow(2).sum()) for r in range(0, self.V.shape[0], step))
        self.norm = sq ** 0.5

    @property
    def is_zero(self) -> bool:
        return self.norm == 0.0

    def basis(self) -> torch.Tensor:
        """U_k for the svd projector (computed once)."""
        if self._U is None:
            U, S, _ = torch.linalg.svd(self.V.double(), full_matrices=False)
            if self.rank is not None:
                k = min(self.rank, S.numel())
            else:
                e = (S**2).cumsum(0) / (S**2).sum().clamp_min(1e-300)
                k = int((e < self.energy).sum()) + 1
                k = min(k, S.numel())
            self._U = U[:, :k].float().contiguous()
        return self._U

    @property
    def k(self) -> int | None:
        return None if self._U is None else self._U.shape[1]

    def apply(self, Y: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(C Y)[rows] for Y of shape (d_out, m); `rows` a 1-D index tensor or None for all."""
        d_out = self.V.shape[0]
        if Y.shape[0] != d_out:
            raise ValueError(f"projector for {d_out} rows applied to {tuple(Y.shape)}")
        n_rows = d_out if rows is None else rows.numel()
        if self.is_zero:
            return torch.zeros(n_rows, Y.shape[1], dtype=torch.float32, device=Y.device)
        if self.kind == "svd":
            U = self.basis()
            Ur = U if rows is None else U[rows]
            return Ur @ (U.T @ Y)
        V = self.V
        Vr = V if rows is None else V[rows]
        d_in = V.shape[1]
        m = Y.shape[1]
        out = torch.empty(n_rows, m, dtype=torch.float32, device=Y.device)
        # flops: row blocks ~ n_rows*d_out*(d_in + m); column blocks ~ d_out*d_in*m + n_rows*d_in*m
        if n_rows * d_out * (d_in + m) <= d_out * d_in * m + n_rows * d_in * m:
            step = max(1, BLOCK_ELEMS // max(d_out, m))
            for r in range(0, n_rows, step):
                C_block = (Vr[r:r + step] @ V.T) / self.norm
                out[r:r + step] = C_block @ Y
        else:
            step = max(1, BLOCK_ELEMS // max(d_in, n_rows))
            for c in range(0, m, step):
                out[:, c:c + step] = Vr @ (V.T @ Y[:, c:c + step]) / self.norm
        return out

    def describe(self) -> dict:
        d = {"kind": self.kind, "v_norm": self.norm}
        if self.kind == "svd":
            d.update(rank=self.k, energy=self.energy if self.rank is None else None)
        return d


def safety_direction(w_aligned: torch.Tensor, w_base: torch.Tensor) -> torch.Tensor:
    """V = W_aligned - W_base in float32, both (out, in)."""
    return w_aligned.float() - w_base.float()


def part_projectors(kind: str, V: torch.Tensor, parts: list[tuple[str, int]], rank: int | None = None,
                    energy: float = 0.99) -> Iterator[tuple[str, int, int, Projector]]:
    """(part, first row, end row, projector) for each logical part of a (fused) module, in row
    order: a fused module (e.g. Phi-3's qkv) has one V and one projector per part, never one
    across parts (`parts` as `Architecture.part_sizes` gives them)."""
    r0 = 0
    for part, size in parts:
        yield part, r0, r0 + size, Projector(kind, V[r0:r0 + size], rank=rank, energy=energy)
        r0 += size


def project_parts(Y: torch.Tensor, V: torch.Tensor, parts: list[tuple[str, int]], kind: str,
                  rank: int | None = None, energy: float = 0.99) -> torch.Tensor:
    """C Y for Y of shape (d_out, m), each part's rows by its own projector."""
    out = torch.empty_like(Y)
    for _, r0, r1, proj in part_projectors(kind, V, parts, rank, energy):
        out[r0:r1] = proj.apply(Y[r0:r1])
    return out


def dense_matrix(kind: str, V: torch.Tensor, rank: int | None = None, energy: float = 0.99) -> torch.Tensor:
    """The textbook d_out x d_out matrix; for tests and small checks only."""
    if kind == "safelora":
        n = torch.linalg.matrix_norm(V.double(), "fro")
        return (V.double() @ V.double().T / n).float() if n > 0 else torch.zeros(V.shape[0], V.shape[0])
    U = Projector("svd", V, rank=rank, energy=energy).basis().double()
    return (U @ U.T).float()
