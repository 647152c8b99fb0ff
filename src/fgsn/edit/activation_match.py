"""Closed-form activation matching, one linear module at a time (the maths; the run is in
activation_match_run.py).

With K_h the module's inputs on harmful prompts, K_t its inputs on task examples and
G = K Kᵀ / n their Grams (in x in), the repaired weight W is the exact minimiser of

    ||W K_h - W_a K_h||² / n_h  +  λ ||W K_t - W_f K_t||² / n_t  +  μ ||W - W_f||²

(reproduce the aligned model's outputs on harmful inputs, keep the fine-tuned model's outputs on
task inputs, move no further than needed). Setting the gradient in D = W - W_f to zero,
(D - (W_a - W_f)) G_h + λ D G_t + μ D = 0, gives the ridge form

    W = W_f + (W_a - W_f) G_h (G_h + λ G_t + μ I)⁻¹.

The revert prior α adds α ||W - W_a||² to the objective: the gradient condition gains α (D -
(W_a - W_f)), so

    W = W_f + (W_a - W_f) (G_h + α I)(G_h + λ G_t + (μ + α) I)⁻¹.

Why: without it an input direction that neither the harmful nor the task prompts reach keeps the
fine-tuned weights (μ pulls toward W_f), so a harmful prompt unlike the fitted ones meets the
eroded model there; with α ≫ μ such directions return to the aligned model's, while directions the
task inputs fill (λ G_t ≫ α) still keep the fine-tune's. α → ∞ is the full revert W_a.

The null-space form (AlphaEdit-style) replaces the soft task term by a hard constraint: the
change may only act on U, the eigenvectors of G_t whose eigenvalues hold at most a share ε of
its trace, so W K_t moves by at most ||D||·sqrt(ε·tr G_t) per token (exactly not at all when
G_t is rank-deficient and U its null space). Minimising the harmful term plus μ||D||² over
D = B Uᵀ gives

    W = W_f + (W_a - W_f) G_h U (Uᵀ G_h U + μ I)⁻¹ Uᵀ.

Both are D = (W_a - W_f) M with one (in x in) matrix M per distinct input (q/k/v share it), so
the cost is a Cholesky factorisation and a solve of (in x in), then one (out x in) @ (in x in)
product per module; no (out x out) matrix is ever formed. μ is given relative to the mean
diagonal of G_h, so that one setting means the same at every layer whatever its activation scale.

Continual (a ledger of harm categories, fgsn.edit.activation_match_ledger): step k starts from
W_{k-1}, the output of step k-1, and repairs a new category's harmful inputs K_h while keeping
what earlier steps restored, their categories' inputs K_o (Gram G_o) taken on W_{k-1}. With
D = W - W_{k-1}, it minimises

    ||(W_{k-1} + D - W_a) K_h||²/n_h + λ ||(W_{k-1} + D - W_f) K_t||²/n_t + κ ||D K_o||²/n_o + μ ||D||²

(W_f: the original fine-tune, the task's reference at every step), optionally with D = B Pᵀ
confined to an orthonormal basis P of allowed input directions (the eigenvectors of G_o holding
at most a share ε of its trace: the hard form; the task null space U of the null-space form; or
both). Setting the gradient in B to zero, with A = G_h + λ G_t + κ G_o and C = (W_a - W_{k-1}) G_h
+ λ (W_f - W_{k-1}) G_t:

    D = C P (Pᵀ A P + μ I)⁻¹ Pᵀ     (P = I: D (A + μ I) = C)

i.e. D = (W_a - W_{k-1}) M_h + (W_f - W_{k-1}) M_t with two (in x in) maps (`continual_maps`).
Since D = 0 is feasible, κ tr(D G_o Dᵀ) is at most the objective at D = 0: the outputs on earlier
categories' inputs move, in mean square per token, by at most (harmful gap + λ task gap) / κ.
With no earlier category (step 1) W_{k-1} = W_f and this is the ridge / null-space form above.

That term keeps the earlier outputs as W_{k-1} gives them, unrepaired residual included, so a new
category whose inputs resemble an earlier one's can hardly be repaired at all. The variant
`old_target = aligned` replaces it by κ ||(W_{k-1} + D - W_a) K_o||²/n_o (the earlier
categories' harmful term stays in the objective, at weight κ): C gains κ (W_a - W_{k-1}) G_o, so
M_h = (G_h + κ G_o) P (Pᵀ A P + μ I)⁻¹ Pᵀ, and by the same argument the earlier categories'
output gap can rise by at most (harmful gap + λ task gap) / κ over what W_{k-1} left.

`old_target = joint` drops κ: step k is the one-shot edit of categories 1..k together. Their
harmful Grams, all taken on the original fine-tune W_f as step 1's are, pool by tokens,
G_p = (n_h G_h + n_o G_o) / (n_h + n_o), and with M the one-shot map of G_p (ridge or null-space
form, `ridge_map` / `nullspace_map`) the step writes W_f + (W_a - W_f) M, i.e. from W_{k-1}

    D = (W_a - W_{k-1}) M + (W_f - W_{k-1}) (I - M)             (M_h = M, M_t = I - M)

so the result does not depend on the order in which the categories came, and step k changes
W_{k-1} by (W_a - W_f)(M_k - M_{k-1}): only as much as its category moves the pooled Gram. A
category whose inputs the earlier ones already span changes little; the earlier categories stay
in the objective at their share of the tokens.
"""

from __future__ import annotations

import torch

from fgsn.errors import InputError, NumericalError


def absolute_mu(G_h: torch.Tensor, mu: float) -> float:
    """μ as a multiple of mean diag(G_h) (the mean squared input entry on harmful tokens)."""
    return mu * float(G_h.diagonal().mean())


def _cholesky(A: torch.Tensor, what: str, hint: str) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0 or not bool(torch.isfinite(L).all()):
        raise NumericalError(f"{what} is singular or not positive definite (Cholesky failed at column {int(info)}); "
                             f"{hint}")
    return L


def ridge_map(G_h: torch.Tensor, G_t: torch.Tensor | None, lam: float, mu: float, where: str = "module",
              prior: float = 0.0) -> torch.Tensor:
    """M = (G_h + α_abs I)(G_h + λ G_t + (μ_abs + α_abs) I)⁻¹ (in x in, float64), so that
    D = (W_a - W_f) M. `mu` and `prior` (α) are relative (see absolute_mu); `G_t` None means λ = 0;
    α = 0 is the plain ridge form, α > 0 its revert prior (module doc)."""
    G_h = G_h.double()
    N = G_h.clone()
    N.diagonal().add_(absolute_mu(G_h, prior))
    A = N.clone()
    if G_t is not None and lam:
        A.add_(G_t.double(), alpha=lam)
    A.diagonal().add_(absolute_mu(G_h, mu))
    L = _cholesky(A, f"{where}: G_h + λ G_t + μ I",
                  "too few harmful/task tokens for this input size with μ this small: raise --mu (e.g. 1e-3 or "
                  "1e-2, relative to mean diag G_h) or give more prompts")
    # A⁻¹ N is (in x in); M = (A⁻¹ N)ᵀ = N A⁻¹ because both are symmetric
    return torch.cholesky_solve(N, L).T.contiguous()


def null_basis(G_t: torch.Tensor, energy: float) -> tuple[torch.Tensor, dict]:
    """U (in x k): the eigenvectors of G_t with the smallest eigenvalues whose sum is at most
    `energy` x tr(G_t) (the task inputs' energy the edit may touch). Also its description."""
    evals, evecs = torch.linalg.eigh(G_t.double())          # ascending
    ev = evals.clamp_min(0)
    total = float(ev.sum())
    if total <= 0:
        raise InputError("the task Gram is zero (no task tokens reached this module); check --task")
    k = int((torch.cumsum(ev, 0) <= energy * total).sum())
    info = {"null_dim": k, "null_energy": float(ev[:k].sum()) / total, "input_dim": int(G_t.shape[0])}
    return evecs[:, :k].contiguous(), info


def nullspace_map(G_h: torch.Tensor, U: torch.Tensor, mu: float, where: str = "module") -> torch.Tensor:
    """M = G_h U (Uᵀ G_h U + μ_abs I)⁻¹ Uᵀ (in x in, float64); zero when U is empty."""
    G_h = G_h.double()
    n, k = U.shape
    if k == 0:
        return torch.zeros(n, n, dtype=torch.float64)
    UG = U.T @ G_h                                           # (k, in) = (G_h U)ᵀ
    S = UG @ U
    S.diagonal().add_(absolute_mu(G_h, mu))
    L = _cholesky(S, f"{where}: Uᵀ G_h U + μ I",
                  "the harmful inputs have (almost) no energy in the task null space: raise --mu, or raise "
                  "--null-energy to widen the space the edit may use")
    return (torch.cholesky_solve(UG, L).T @ U.T).contiguous()


def output_energy(D: torch.Tensor, G: torch.Tensor) -> float:
    """tr(D G Dᵀ): the mean over the Gram's tokens of ||D x||² (no (out x out) matrix), computed in
    D's dtype (float32 for the manifest's diagnostics) and summed in float64."""
    return float(((D @ G.to(D.dtype)) * D).sum(dtype=torch.float64))


def rank_profile(D: torch.Tensor, energy: float = 0.99) -> dict:
    """`rank`: the numerical rank of D (numpy's tolerance: max singular value x max dim x float32
    eps); `rank_99`: how many singular directions hold `energy` of ||D||_F² (a dense solve is
    full rank numerically; this says how many directions carry the change)."""
    if not bool(D.any()):
        return {"rank": 0, "rank_99": 0}
    # singular values from the eigenvalues of the smaller Gram in float64: 10x faster than an SVD of
    # a (1536 x 576) float32 change, and resolved to ~1e-8 of the largest, far below the tolerance
    A = D.double()
    G = A.T @ A if A.shape[0] >= A.shape[1] else A @ A.T
    s = torch.linalg.eigvalsh(G).flip(0).clamp_(min=0).sqrt_()
    tol = float(s[0]) * max(D.shape) * torch.finfo(torch.float32).eps
    e = torch.cumsum(s * s, 0)
    return {"rank": int((s > tol).sum()), "rank_99": int((e < energy * e[-1]).sum()) + 1}


def check_correction(D: torch.Tensor, where: str) -> None:
    if not bool(torch.isfinite(D).all()):
        raise NumericalError(f"{where}: the closed-form change has NaN/Inf; raise --mu")


def continual_maps(G_h: torch.Tensor, G_t: torch.Tensor | None, G_o: torch.Tensor, lam: float, kappa: float,
                   mu: float, P: torch.Tensor | None = None, where: str = "module", old_target: str = "current"
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(M_h, M_t), float64 (in x in), of a continual step: D = (W_a - W_{k-1}) M_h + (W_f - W_{k-1}) M_t
    (module doc). `P` (in x p, orthonormal columns) confines the change to span(P); None: no
    constraint. `G_t` None or λ = 0: no task term (M_t None). `mu` relative to mean diag(G_h).
    `old_target`: current (keep W_{k-1}'s outputs on the earlier inputs) or aligned (pull them to
    W_a's)."""
    G_h = G_h.double()
    task = G_t is not None and lam > 0
    A = G_h.clone()
    if task:
        A.add_(G_t.double(), alpha=lam)
    A.add_(G_o.double(), alpha=kappa)
    mu_abs = absolute_mu(G_h, mu)
    rhs = G_h.add(G_o.double(), alpha=kappa) if old_target == "aligned" else G_h   # what W_a - W_{k-1} meets
    hint = ("raise --mu, or lower --kappa (the earlier categories' inputs leave little room), or give more "
            "prompts")
    if P is None:
        A.diagonal().add_(mu_abs)
        L = _cholesky(A, f"{where}: G_h + λ G_t + κ G_old + μ I", hint)
        M_h = torch.cholesky_solve(rhs, L).T.contiguous()  # rhs A⁻¹ (both symmetric)
        M_t = torch.cholesky_solve(G_t.double(), L).T.mul_(lam).contiguous() if task else None
        return M_h, M_t
    n, k = P.shape
    if k == 0:  # no direction allowed: no change
        return torch.zeros(n, n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64) if task else None
    P = P.double()
    S = P.T @ A @ P
    S.diagonal().add_(mu_abs)
    L = _cholesky(S, f"{where}: Pᵀ (G_h + λ G_t + κ G_old) P + μ I", hint + "; or raise --old-energy / --null-energy")
    M_h = (torch.cholesky_solve(P.T @ rhs, L).T @ P.T).contiguous()   # rhs P S⁻¹ Pᵀ
    M_t = (torch.cholesky_solve(P.T @ G_t.double(), L).T @ P.T).mul_(lam).contiguous() if task else None
    return M_h, M_t


def old_basis(G_o: torch.Tensor, energy: float, within: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """P (in x k): the directions (inside span(`within`) when given, e.g. the task null space) along
    which the earlier categories' inputs hold at most `energy` x tr(G_o) of their energy, so that
    ||D x_old||² sums to at most ||D||²·energy·tr(G_o) over their tokens for any D = B Pᵀ."""
    G_o = G_o.double()
    total = float(G_o.diagonal().clamp_min(0).sum())
    if total <= 0:
        raise InputError("the earlier categories' Gram is zero (no token of their prompts reached this module)")
    G = G_o if within is None else within.T.double() @ G_o @ within.double()
    evals, evecs = torch.linalg.eigh(G)                               # ascending
    k = int((torch.cumsum(evals.clamp_min(0), 0) <= energy * total).sum())
    P = evecs[:, :k] if within is None else within.double() @ evecs[:, :k]
    info = {"old_null_dim": k, "old_null_energy": float(evals[:k].clamp_min(0).sum()) / total}
    return P.contiguous(), info


def pooled_gram(G_h: torch.Tensor, n_h: int, G_o: torch.Tensor, n_o: int) -> torch.Tensor:
    """The per-token mean Gram of two token sets from their own means (float64)."""
    if n_h + n_o <= 0:
        raise InputError("no harmful token reached this module in this step or an earlier one")
    return (G_h.double() * n_h + G_o.double() * n_o) / (n_h + n_o)
