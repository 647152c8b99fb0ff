"""Task compensation after any entry-wise edit (`--compensate task`): the OBS / SparseGPT update of
the entries an edit kept, so that the module's outputs on task inputs move as little as possible.

Per output row w (1 x d_in) of a linear module, with w_f the fine-tuned row, R the entries the
edit changed (reverted, projected, pruned) and F the rest, and H = sum_t x_t x_t^T the Gram of
the module's inputs on task examples (SparseGPT's 2 X X^T up to a factor, which changes nothing
below), dampened like SparseGPT: H_d = H + damp * mean(diag H) * I. The row's change e = w' - w_f
has e_R = Delta_R (the edit, fixed) and e_F free; the task-output error is e H_d e^T
(= ||e X||^2 + lambda ||e||^2). Its minimiser over e_F is

    e_F = -Delta_R H_RF H_FF^-1                                     (normal equations over F)
        =  Delta_R (H^-1_RR)^-1 H^-1_RF                             (the OBS form, H^-1 = H_d^-1)

i.e. e = Delta_R (H^-1_RR)^-1 H^-1_{R,:}: the standard OBS update for fixing a set of weights
and compensating with the rest (with Delta_R = w_R' - w_R; OBS writes it with the opposite sign
for the amount removed, w_R - w_R'). The two lines are the same matrix by the block-inverse
identity; `exact` solves whichever system is smaller per row (|R| or |F| unknowns).

`sparsegpt` is the reference algorithm of SparseGPT and of IRR's `sparsegpt.py`: one sweep over
the columns in order, with U the upper Cholesky factor of H^-1, err = (w_i - q_i) / U_ii and
W[:, i:] -= err U[i, i:]. It compensates only to the right of each fixed column, so it is the
exact minimiser when every row's edited entries precede its kept ones, and an approximation
otherwise (never better than `exact` on the objective); it costs one d_in^3 factorisation per
module instead of one small solve per row, which matters when R is half the row (IRR).

The model pass (`compensate_checkpoint`) is sequential at layer granularity, as SparseGPT and
IRR's `--true-sequential`: layer by layer, the Grams are taken on the model repaired so far
(earlier layers already edited and compensated, this layer still fine-tuned), then this layer's
modules are compensated in place. Only the linear target modules are compensated; other tensors
of the edited checkpoint (norms, embeddings) are copied as they are.
"""

from __future__ import annotations

import gc
import logging
import shutil
from pathlib import Path

import torch

from fgsn.data.promptset import PromptSet
from fgsn.edit.options import CompensateOptions
from fgsn.errors import InputError, NumericalError
from fgsn.models.registry import EditTarget, from_out_in, live_layers, live_module, to_out_in

log = logging.getLogger(__name__)

SOLVERS = ("exact", "sparsegpt")
# Batched row solves: at most this many float64 elements in the gathered (rows x k x d) blocks.
_BLOCK_ELEMENTS = 1 << 24


# -- the maths ------------------------------------------------------------------------------------
def damped(H: torch.Tensor, damp: float) -> torch.Tensor:
    """H + damp * mean(diag H) * I in float64; refuses a Gram with no signal."""
    H = H.double()
    mean_diag = float(torch.diagonal(H).mean())
    if not mean_diag > 0.0:
        raise InputError("the task Gram of a module is zero (no task token reached it); the compensation needs "
                         "task examples: give --task prompts (with answers) or use --compensate none")
    return H + damp * mean_diag * torch.eye(H.shape[0], dtype=torch.float64, device=H.device)


def task_error(E: torch.Tensor, H: torch.Tensor) -> float:
    """sum over rows of e H e^T: the squared task-output change of a weight change E (out, in)."""
    return float(((E.double() @ H.double()) * E.double()).sum())


def _spd_solve(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched A x = b for symmetric positive definite A (B, k, k), b (B, k)."""
    L, info = torch.linalg.cholesky_ex(A)
    if bool((info != 0).any()):
        raise NumericalError("a principal block of the dampened task Gram is not positive definite; raise "
                             "--compensate-damp")
    return torch.cholesky_solve(b.unsqueeze(-1), L).squeeze(-1)


def _gather(mask_rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the column indices of its True entries (ascending), padded to k, and their validity."""
    order = torch.argsort((~mask_rows).to(torch.int8), dim=1, stable=True)[:, :k]
    valid = torch.arange(k).unsqueeze(0) < mask_rows.sum(1, keepdim=True)
    return torch.where(valid, order, 0), valid


def _exact(delta: torch.Tensor, mask: torch.Tensor, Hd: torch.Tensor) -> torch.Tensor:
    """The exact per-row minimiser (module doc): the change E (out, in), E_R = delta_R."""
    n_out, d = delta.shape
    E = delta.clone()
    n_r = mask.sum(1)
    partial = (n_r > 0) & (n_r < d)
    if not bool(partial.any()):
        return E
    use_r = partial & (n_r <= d - n_r)            # fewer edited than kept entries: the OBS form
    use_f = partial & ~use_r                       # fewer kept entries: the normal equations over F
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(Hd)) if bool(use_r.any()) else None
    g = delta @ Hd if bool(use_f.any()) else None  # (delta_R H_R,:) for every row
    C = torch.zeros_like(delta) if Hinv is not None else None  # OBS form: E_row = c_row H^-1, c on R
    for form, rows_mask in (("R", use_r), ("F", use_f)):
        rows = rows_mask.nonzero().squeeze(1)
        if not len(rows):
            continue
        side = mask[rows] if form == "R" else ~mask[rows]
        sizes = side.sum(1)
        order = torch.argsort(sizes)               # similar sizes together: little padding
        rows, side, sizes = rows[order], side[order], sizes[order]
        start = 0
        while start < len(rows):
            k = int(sizes[start])
            stop = min(len(rows), start + max(1, _BLOCK_ELEMENTS // max(1, k * k)))
            k = int(sizes[start:stop].max())
            r, s = rows[start:stop], side[start:stop]
            idx, valid = _gather(s, k)
            pair = valid.unsqueeze(2) & valid.unsqueeze(1)
            eye = torch.eye(k, dtype=torch.float64).expand(len(r), k, k)
            rr = r.unsqueeze(1).expand_as(idx)
            if form == "R":
                A = torch.where(pair, Hinv[idx.unsqueeze(2), idx.unsqueeze(1)], eye)
                c = _spd_solve(A, torch.where(valid, delta[r.unsqueeze(1), idx], 0.0))
                C[rr[valid], idx[valid]] = c[valid]
            else:
                A = torch.where(pair, Hd[idx.unsqueeze(2), idx.unsqueeze(1)], eye)
                eF = _spd_solve(A, torch.where(valid, -g[r.unsqueeze(1), idx], 0.0))
                E[rr[valid], idx[valid]] = eF[valid]
            start = stop
    if C is not None:
        r_rows = use_r.nonzero().squeeze(1)
        E[r_rows] = C[r_rows] @ Hinv
    return torch.where(mask, delta, E)


def _sparsegpt(W0: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, Hd: torch.Tensor,
               block: int = 128) -> torch.Tensor:
    """SparseGPT's sweep (module doc) with the edited entries' values as the 'quantised' targets."""
    d = W0.shape[1]
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(Hd)), upper=True)
    W = W0.clone()
    for i1 in range(0, d, block):
        i2 = min(i1 + block, d)
        if not bool(mask[:, i1:].any()):
            break
        W1 = W[:, i1:i2].clone()
        Err = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            m = mask[:, i1 + i]
            if not bool(m.any()):
                continue
            w = W1[:, i]
            q = torch.where(m, target[:, i1 + i], w)
            err = (w - q) / U1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            W1[:, i] = q
            Err[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= Err @ U[i1:i2, i2:]
    return W


def compensate_rows(w_edit: torch.Tensor, w_orig: torch.Tensor, mask: torch.Tensor, H: torch.Tensor,
                    damp: float = 0.01, solver: str = "exact") -> torch.Tensor:
    """The compensated weight (out, in) float64: entries in `mask` keep their edited value exactly,
    the others take the OBS update that preserves the outputs on the inputs behind `H` (module doc).
    `w_orig` is the weight before the edit (the fine-tuned one), `H` the (in, in) input Gram."""
    if w_edit.shape != w_orig.shape or mask.shape != w_orig.shape or w_orig.dim() != 2:
        raise InputError(f"compensation: weights {tuple(w_edit.shape)}/{tuple(w_orig.shape)} and mask "
                         f"{tuple(mask.shape)} must be one (out, in) shape")
    if H.shape != (w_orig.shape[1], w_orig.shape[1]):
        raise InputError(f"compensation: the Gram is {tuple(H.shape)}, the weight has {w_orig.shape[1]} inputs")
    if solver not in SOLVERS:
        raise InputError(f"unknown compensation solver {solver!r}; use {' or '.join(SOLVERS)}")
    W0, We = w_orig.double(), w_edit.double()
    mask = mask.bool()
    Hd = damped(H, damp)
    if solver == "exact":
        out = W0 + _exact(torch.where(mask, We - W0, 0.0), mask, Hd)
    else:
        out = _sparsegpt(W0, We, mask, Hd)
    out = torch.where(mask, We, out)
    if not bool(torch.isfinite(out).all()):
        raise NumericalError("the compensated weight has NaN/Inf; raise --compensate-damp")
    return out


# -- the model pass -------------------------------------------------------------------------------
def compensate_checkpoint(folder: str | Path, trio, targets: list[EditTarget], task: PromptSet, opts: CompensateOptions,
                          probe, max_shard_bytes: int, frozen: dict[str, torch.Tensor] | None = None) -> list[dict]:
    """Compensate the edited checkpoint in `folder` (written by any method from `trio`'s
    fine-tuned model) in place, layer by layer (module doc). `probe` carries how prompts are run
    (fgsn.locate.run.ProbeOptions fields: device, batch size, chat template). `frozen` (stored
    layout, per tensor): entries the compensation must not move either (a continual step's
    earlier edits). Returns one record
    per edited target: entries edited, kept entries the compensation changed, and the relative
    task-output error before and after, task_error(W' - W_f) / task_error(W_f)."""
    from fgsn.locate.grams import LayerReplay
    from fgsn.models.checkpoint import Checkpoint
    from fgsn.models.finetune import LoraFinetune
    from fgsn.models.loading import load_model
    from fgsn.models.safetensors_io import PlannedTensor
    from fgsn.models.writer import CheckpointWriter

    folder = Path(folder)
    examples = list(task.prompts)[: opts.compensate_samples] if opts.compensate_samples else list(task.prompts)
    if not examples:
        raise InputError("--compensate task needs task examples (--task prompts, ideally with answers) for the "
                         "Gram of every module's inputs; none were given or all were held out")
    edited = Checkpoint(folder)
    arch = trio.arch
    by_layer: dict[int, list[tuple[EditTarget, torch.Tensor]]] = {}
    for t in targets:
        mask = edited.get(t.tensor) != trio.finetuned.get(t.tensor)
        if bool(mask.any()):
            by_layer.setdefault(t.layer, []).append((t, mask))
    if not by_layer:
        log.warning("compensation: the edit changed no target entry; nothing to compensate")
        return []
    if isinstance(trio.finetuned, LoraFinetune):
        path, adapter = trio.aligned.path, trio.finetuned.path
    else:
        path, adapter = trio.finetuned.path, None
    # float32 always: a stored bfloat16 value survives the round trip, and the Grams want the precision
    model, tok = load_model(path, device=probe.device, dtype="float32", adapter=adapter,
                            trust_remote_code=probe.trust_remote_code, allow_pickle=trio.aligned.allow_pickle)
    records: list[dict] = []
    live: dict[str, torch.nn.Module] = {}
    try:
        replay = LayerReplay(model, tok, live_layers(model, arch), [p.text for p in examples],
                             [p.answer for p in examples], min(by_layer), max(by_layer),
                             batch_size=probe.batch_size, use_chat_template=probe.use_chat_template,
                             system=probe.system, max_length=probe.max_length)
        for layer in range(min(by_layer), max(by_layer) + 1):
            if layer in by_layer:
                mods = {t.tensor: live_module(model, arch, t) for t, _ in by_layer[layer]}
                grams = replay.grams(layer, mods)
                for t, mask in by_layer[layer]:
                    records.append(_compensate_module(t, mask, grams[t.tensor], trio, edited, mods[t.tensor], opts,
                                                      (frozen or {}).get(t.tensor)))
                    live[t.tensor] = mods[t.tensor]
                del grams
            if layer < max(by_layer):
                replay.advance()  # the next layer's inputs come from this layer as compensated: sequential
        del replay
        # The compensated weights live in the model (float32 copies of stored-dtype values): write
        # them from there, every other tensor from the edited checkpoint.
        plan = [PlannedTensor(n, edited.dtype(n), edited.shape(n)) for n in edited.names]
        stage = folder / ".compensated"
        stage.mkdir()
        writer = CheckpointWriter(stage, plan, max_shard_bytes)
        for n in edited.names:
            t = live[n].weight.detach().to("cpu", edited.dtype(n)) if n in live else edited.get(n)
            writer.write(n, t.contiguous())
        writer.close()
    finally:
        del model, live
        gc.collect()
    for f in [*edited.files, folder / "model.safetensors.index.json"]:
        f.unlink(missing_ok=True)
    for f in stage.iterdir():
        shutil.move(str(f), folder / f.name)
    stage.rmdir()
    return records


def _compensate_module(t: EditTarget, mask: torch.Tensor, gram, trio, edited, module: torch.nn.Module,
                       opts: CompensateOptions, frozen: torch.Tensor | None = None) -> dict:
    """Compensate one module, write the result into the live `module` (later layers then see it:
    sequential) and return its record."""
    arch = trio.arch
    w_f = to_out_in(trio.finetuned.get(t.tensor), arch)
    w_e = to_out_in(edited.get(t.tensor), arch)
    m = to_out_in(mask, arch)
    fixed = m if frozen is None else m | to_out_in(frozen, arch)  # frozen: kept at their value too
    new = compensate_rows(w_e, w_f, fixed, gram.H, opts.compensate_damp, opts.compensate_solver).to(w_f.dtype)
    wf64 = w_f.double()
    base = task_error(wf64, gram.H)
    rec = {"name": t.tensor, "layer": t.layer, "module": t.spec.name, "edited": int(m.sum()),
           "kept_changed": int(((new != w_e) & ~m).sum()), "task_tokens": gram.n_tokens,
           **({} if frozen is None else {"frozen": int((fixed & ~m).sum())}),
           "task_error_before": task_error(w_e.double() - wf64, gram.H) / base if base else None,
           "task_error_after": task_error(new.double() - wf64, gram.H) / base if base else None}
    module.weight.data.copy_(from_out_in(new, arch).to(module.weight.device, module.weight.dtype))
    return rec
