"""Iterative reversion with rollback (`fgsn revert`): `snip-signed` generalised to R rounds with
re-scoring after each round, the procedure of SGDG rollback (Yang et al., arXiv 2504.09757).

Each round r, on the model repaired so far (theta, fine-tuned entries not yet reverted):

    g      = dl/dtheta                    l: the refusal NLL on harmful prompts (`loss` refusal-nll,
                                          fgsn's snip score) or l = -cos(mean last-token hidden
                                          state at hidden_states[k], the aligned model's mean)
                                          (`loss` cosine, SGDG; k = floor(4L/6) by default)
    cand   = (theta - theta_a) * g > 0    moving the entry back to its aligned value lowers l to
                                          first order (entries already reverted have theta = theta_a)
    score  = (theta - theta_a) * g        (`rank` delta-grad: that first-order decrease, snip-signed)
             |g|                          (`rank` grad: SGDG's)
    revert the top `per_round` of the candidates by score: per module (`scope` module: that share
    of each module's entries) or over all target modules (`scope` global: that share of all the
    model's parameters, SGDG's "0.1% of all parameters"); theta <- theta_a there.

Rollback (`rollback`): the task data is split by prompt hash into a part for gradients (and the
compensation) and a validation part (`validation_share`). After the rounds, the validation task
NLL (token mean) of the repaired model is compared with a ceiling:

    gain:        NLL_f + (1 - keep) * (NLL_a - NLL_f)   the repair keeps at least `keep` of the
                                                         fine-tune's gain over the aligned model
    likelihood:  NLL_f - ln(keep)                        SGDG's "task metric >= 0.95 x the fine-
                                                         tune's" with the metric exp(-NLL), the
                                                         per-token likelihood of the answers

Above it, the `rollback_share` (SGDG: 20%) of the reverted entries that matter most on task
prompts get their fine-tuned value back: importance -delta * g_t (`rank` delta-grad: the first-
order decrease of the task loss from putting delta back) or |g_t| (`rank` grad, SGDG), with g_t
the gradient of the task NLL on the task part (`rollback_loss` task-nll) or of -cos(mean hidden
state on task prompts, the fine-tuned model's) (`rollback_loss` cosine, SGDG's benign loss); per
module or over all, as `scope`. Repeated at most `max_rollbacks` times while above the ceiling.

Optionally (`compensate` task) the kept entries are then recalibrated on task inputs
(fgsn.edit.compensate). The output is always a merged checkpoint: reverted entries are single
weights, which a LoRA adapter cannot represent.

Continual (`ledger`, `category`): one harm category per step on one ledger (fgsn.edit.ledger),
each from the latest step's output. The entries an earlier step reverted are frozen: they are
never candidates (they sit at the aligned value already, and are excluded explicitly too), the
rollback only puts back this step's, and the compensation keeps them at their value. The ledger
records per step the entries it reverted (bit-packed), how many an earlier step had reverted
(zero by construction) and the safety loss before and after.

Memory: the gradients need the fine-tuned model live (float32 on CPU by default), plus the
aligned values of the target weights, their gradients and one bit a weight for the reverted set:
about four copies of the target weights (the 135M organism: ~2 GB). Unlike the projection, this
does not stream layer by layer.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fgsn.artifacts.manifest import assemble_manifest
from fgsn.artifacts.masks import PackedMasks
from fgsn.data.prompts import load_prompts
from fgsn.data.promptset import PromptSet, concat, validation_split
from fgsn.edit.compensate import compensate_checkpoint
from fgsn.edit.ledger import Ledger
from fgsn.edit.options import RevertOptions
from fgsn.edit.rewrite import EditResult, stream_rewrite, write_output
from fgsn.errors import InputError
from fgsn.locate.attribution import gradient_sums
from fgsn.locate.layers import parse_layers
from fgsn.locate.losses import check_hidden_index, cosine_gradients, cosine_loss, example_nll, last_token_mean
from fgsn.models.checkpoint import Checkpoint
from fgsn.models.finetune import LoraFinetune
from fgsn.models.loading import load_model
from fgsn.models.registry import EditTarget, edit_targets, from_out_in, live_layers, live_module, to_out_in
from fgsn.models.trio import Trio, open_trio

log = logging.getLogger(__name__)

MERGED_NOTE = ("written as a merged checkpoint: the edit changes single entries of the merged update, which "
               "a LoRA adapter cannot represent")


@dataclass
class _State:
    """The live model and what the rounds need of it."""

    model: torch.nn.Module
    tok: object
    layers: object
    params: dict[str, torch.nn.Parameter]
    aligned: dict[str, torch.Tensor]                 # stored layout, the model's dtype
    reverted: dict[str, torch.Tensor] = field(default_factory=dict)
    rolled_back: dict[str, torch.Tensor] = field(default_factory=dict)


def top_entries(scores: dict[str, torch.Tensor], k: dict[str, int] | int) -> dict[str, torch.Tensor]:
    """Boolean masks of the top entries by score; -inf marks entries that may not be taken. `k` per
    tensor (a dict), or one count over all tensors together (an int; ties at the threshold are taken
    in the tensors' order). Fewer eligible entries than k: all of them."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(k, dict):
        for name, s in scores.items():
            out[name] = _top_mask(s, k[name])
        return out
    tops = [torch.topk(s.flatten(), min(k, s.numel())).values for s in scores.values() if k > 0]
    vals = torch.cat(tops) if tops else torch.zeros(0)
    vals = vals[torch.isfinite(vals)]
    if k <= 0 or not len(vals):
        return {n: torch.zeros(s.shape, dtype=torch.bool) for n, s in scores.items()}
    if len(vals) <= k:
        return {n: torch.isfinite(s) for n, s in scores.items()}
    thr = torch.topk(vals, k).values[-1]
    above = {n: s > thr for n, s in scores.items()}
    left = k - sum(int(m.sum()) for m in above.values())
    for n, s in scores.items():
        ties = (s == thr).flatten().nonzero().squeeze(1)[:max(left, 0)]
        m = above[n].flatten().clone()
        m[ties] = True
        left -= len(ties)
        out[n] = m.reshape(s.shape)
    return out


def _top_mask(s: torch.Tensor, k: int) -> torch.Tensor:
    flat = s.flatten()
    mask = torch.zeros(flat.shape, dtype=torch.bool)
    k = min(k, int(torch.isfinite(flat).sum()))
    if k > 0:
        mask[torch.topk(flat, k).indices] = True
    return mask.reshape(s.shape)


def loss_ceiling(nll_f: float, nll_a: float | None, floor: str, keep: float) -> float:
    """The validation task NLL above which the rollback acts (module doc)."""
    if floor == "likelihood":
        return nll_f - math.log(keep) if keep > 0 else math.inf
    if nll_a is None:  # pragma: no cover - the caller computes it for this floor
        raise ValueError("the gain floor needs the aligned model's NLL")
    if nll_a <= nll_f:
        log.warning("the fine-tune does not lower the validation task NLL (fine-tuned %.4f, aligned %.4f): the "
                    "gain floor is the fine-tuned NLL itself", nll_f, nll_a)
    return nll_f + (1.0 - keep) * max(nll_a - nll_f, 0.0)


def revert_targets(trio: Trio, modules: list[str] | None, layers: str | None, who: str = "") -> list[EditTarget]:
    """The linear modules an entry-wise edit considers: the registry's modules (or `modules`) in every
    layer (or `layers`); for a LoRA adapter only those it changes. `who` prefixes the error."""
    lay = parse_layers(layers, trio.num_layers)
    targets = edit_targets(trio.arch, trio.aligned.names, trio.num_layers, modules, lay)
    if isinstance(trio.finetuned, LoraFinetune):
        targets = [t for t in targets if trio.finetuned.changed(t.tensor)]
    if not targets:
        raise InputError(f"{who + ': ' if who else ''}the fine-tune changes none of the target modules; "
                         "check --modules / --layers")
    return targets


def task_parts(opts: RevertOptions) -> tuple[PromptSet, PromptSet]:
    """(task part for gradients and compensation, validation part)."""
    needs = opts.rollback or opts.compensate != "none"
    if not opts.task:
        if needs:
            raise InputError("the rollback and the compensation need task examples: give --task FILE (prompt + "
                             "answer rows), or --no-rollback (and --compensate none)")
        return PromptSet("task", []), PromptSet("task-validation", [])
    task = concat("task", [load_prompts(s) for s in opts.task])
    if not opts.rollback:
        return task, PromptSet("task-validation", [])
    task.require(2, "task examples (one for gradients, one for the rollback's validation)")
    return validation_split(task, opts.validation_share)


class _Runner:
    """One reversion run: the live model, the references, the rounds and the rollback."""

    def __init__(self, trio: Trio, opts: RevertOptions, targets: list[EditTarget], harmful: PromptSet,
                 task: PromptSet, val: PromptSet, frozen: dict[str, torch.Tensor] | None = None):
        self.trio, self.opts, self.targets = trio, opts, targets
        self.frozen = frozen  # continual: per tensor (stored layout), entries earlier steps reverted
        self.harmful, self.task, self.val = harmful, task, val
        self.index = opts.cosine_layer or (4 * trio.num_layers) // 6
        if "cosine" in (opts.loss, opts.rollback_loss if opts.rollback else ""):
            check_hidden_index(self.index, trio.num_layers)
        self.kw = dict(batch_size=opts.batch_size, use_chat_template=opts.use_chat_template, system=opts.system,
                       max_length=opts.max_length)
        self.log: dict = {"rounds": [], "rollbacks": []}

    # -- models ---------------------------------------------------------------------------------
    def _load(self, which: str):
        trio = self.trio
        path, adapter = trio.source(which)
        return load_model(path, device=self.opts.device, dtype=self.opts.dtype, adapter=adapter,
                          trust_remote_code=self.opts.trust_remote_code, allow_pickle=self.opts.allow_pickle)

    def references(self, st: _State) -> None:
        """What the rounds and the floor compare against: on the fine-tuned model (live, not yet
        edited) and on the aligned model (loaded, used, dropped)."""
        o = self.opts
        self.nll_f = example_nll(st.model, st.tok, self.val.texts, self._answers(self.val), **self.kw) \
            if o.rollback else None
        self.task_ref = last_token_mean(st.model, st.tok, self.task.texts, st.layers, self.index, **self.kw) \
            if o.rollback and o.rollback_loss == "cosine" else None
        self.nll_a = self.harm_ref = None
        need_nll_a = o.rollback and o.rollback_floor == "gain"
        if o.loss == "cosine" or need_nll_a:
            model, tok = self._load("aligned")
            try:
                if o.loss == "cosine":
                    self.harm_ref = last_token_mean(model, tok, self.harmful.texts, live_layers(model, self.trio.arch),
                                                    self.index, desc="aligned hidden mean", **self.kw)
                if need_nll_a:
                    self.nll_a = example_nll(model, tok, self.val.texts, self._answers(self.val), **self.kw)
            finally:
                del model
                gc.collect()

    @staticmethod
    def _answers(pset: PromptSet) -> list[str | None]:
        return [p.answer for p in pset]

    # -- losses ---------------------------------------------------------------------------------
    def safety(self, st: _State, params: dict[str, torch.nn.Parameter] | None) -> tuple[float, dict]:
        """(safety loss, its gradients w.r.t. `params`; {} when params is None)."""
        o = self.opts
        if o.loss == "cosine":
            if params is None:
                m = last_token_mean(st.model, st.tok, self.harmful.texts, st.layers, self.index, **self.kw)
                return cosine_loss(m, self.harm_ref), {}
            return cosine_gradients(st.model, st.tok, self.harmful.texts, self.harm_ref, params, st.layers,
                                    self.index, **self.kw)
        refusals = [o.refusal_text] * len(self.harmful)
        loss = example_nll(st.model, st.tok, self.harmful.texts, refusals, **self.kw)
        if params is None:
            return loss, {}
        return loss, gradient_sums(st.model, st.tok, self.harmful.texts, refusals, params, desc="gradients harmful",
                                   **self.kw)

    def task_grads(self, st: _State, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
        if self.opts.rollback_loss == "cosine":
            return cosine_gradients(st.model, st.tok, self.task.texts, self.task_ref, params, st.layers, self.index,
                                    desc="gradients task", **self.kw)[1]
        return gradient_sums(st.model, st.tok, self.task.texts, self._answers(self.task), params,
                             desc="gradients task", **self.kw)

    def _budget(self, st: _State, share: float, of: dict[str, int]) -> dict[str, int] | int:
        if self.opts.scope == "global":
            return int(round(share * sum(of.values())))
        return {n: int(round(share * c)) for n, c in of.items()}

    # -- the rounds -----------------------------------------------------------------------------
    def rounds(self, st: _State) -> None:
        o = self.opts
        # the cosine loss is read at hidden_states[k]: modules of layer k and later get no gradient
        grad_names = [t.tensor for t in self.targets if o.loss != "cosine" or t.layer < self.index]
        total = self.trio.aligned.total_params
        for r in range(o.rounds):
            params = {n: st.params[n] for n in grad_names}
            loss, grads = self.safety(st, params)
            scores = {}
            with torch.no_grad():
                for n in grad_names:
                    d = st.params[n].detach().float().cpu() - st.aligned[n].float()
                    g = grads[n]
                    gain = d * g
                    s = gain if o.rank == "delta-grad" else g.abs()
                    ok = gain > 0
                    if self.frozen is not None and n in self.frozen:
                        ok &= ~self.frozen[n]
                    scores[n] = torch.where(ok, s, float("-inf"))
                k = int(round(o.per_round * total)) if o.scope == "global" else \
                    {n: int(round(o.per_round * st.params[n].numel())) for n in grad_names}
                chosen = top_entries(scores, k)
                n_cand = sum(int(torch.isfinite(s).sum()) for s in scores.values())
                for n, m in chosen.items():
                    if bool(m.any()):
                        p = st.params[n]
                        p.data[m.to(p.device)] = st.aligned[n][m].to(p.device, p.dtype)
                        st.reverted[n] |= m
            del grads, scores
            self.log["rounds"].append({"round": r + 1, "safety_loss": loss, "candidates": n_cand,
                                       "reverted": sum(int(m.sum()) for m in chosen.values()),
                                       "reverted_total": sum(int(m.sum()) for m in st.reverted.values())})
            log.info("round %d: safety loss %.4f, %d candidates, %d reverted", r + 1, loss, n_cand,
                     self.log["rounds"][-1]["reverted"])
        self.log["safety_loss_final"] = self.safety(st, None)[0]

    # -- the rollback ---------------------------------------------------------------------------
    def rollback(self, st: _State) -> None:
        o = self.opts
        ceiling = loss_ceiling(self.nll_f, self.nll_a, o.rollback_floor, o.rollback_keep)
        nll = example_nll(st.model, st.tok, self.val.texts, self._answers(self.val), **self.kw)
        self.log["validation"] = {"examples": len(self.val), "nll_finetuned": self.nll_f, "nll_aligned": self.nll_a,
                                  "ceiling": ceiling, "nll_after_rounds": nll, "floor": o.rollback_floor,
                                  "keep": o.rollback_keep}
        n_done = 0
        while nll > ceiling and n_done < o.max_rollbacks:
            names = [n for n, m in st.reverted.items() if bool(m.any())]
            if not names:
                break
            grads = self.task_grads(st, {n: st.params[n] for n in names})
            scores = {}
            with torch.no_grad():
                for n in names:
                    delta_f = self.trio.finetuned.get(n).float() - st.aligned[n].float()  # what putting back adds
                    imp = -delta_f * grads[n] if o.rank == "delta-grad" else grads[n].abs()
                    scores[n] = torch.where(st.reverted[n], imp, float("-inf"))
                chosen = top_entries(scores, self._budget(st, o.rollback_share,
                                                          {n: int(st.reverted[n].sum()) for n in names}))
                for n, m in chosen.items():
                    if bool(m.any()):
                        p = st.params[n]
                        w_f = self.trio.finetuned.get(n)
                        p.data[m.to(p.device)] = w_f[m].to(p.device, p.dtype)
                        st.reverted[n] &= ~m
                        st.rolled_back[n] |= m
            del grads, scores
            before = nll
            nll = example_nll(st.model, st.tok, self.val.texts, self._answers(self.val), **self.kw)
            n_done += 1
            self.log["rollbacks"].append({"put_back": sum(int(m.sum()) for m in chosen.values()),
                                          "nll_before": before, "nll_after": nll})
            log.info("rollback %d: validation NLL %.4f -> %.4f (ceiling %.4f)", n_done, before, nll, ceiling)
        self.log["validation"].update(nll_final=nll, triggered=n_done > 0, met=nll <= ceiling)
        if n_done:
            self.log["safety_loss_after_rollback"] = self.safety(st, None)[0]
        if nll > ceiling:
            log.warning("the validation task NLL %.4f stays above the floor's ceiling %.4f after %d rollback(s)",
                        nll, ceiling, n_done)


def run_revert(opts: RevertOptions, method: str = "revert") -> EditResult:
    """Run the reversion (module doc) and write the checkpoint + manifest to `opts.out`."""
    if not opts.out:
        raise InputError(f"fgsn {method} needs --out DIR for the edited checkpoint")
    if opts.ledger and not opts.category:
        raise InputError("--ledger needs --category NAME: the harm category this continual step repairs")
    out = Path(opts.out)
    t0 = time.time()
    trio = open_trio(opts.aligned, opts.finetuned, opts.base, allow_pickle=opts.allow_pickle)
    if not opts.ledger:
        return _run(opts, method, trio, out, t0, None)
    ledger = Ledger(opts.ledger)
    with ledger.locked():  # held until the step is recorded
        ledger.check_new_step(method, opts.category, trio.base.sha256 if trio.base is not None else None,
                              trio.aligned.sha256, trio.finetuned.sha256)
        return _run(opts, method, trio, out, t0, ledger)


def _run(opts: RevertOptions, method: str, trio: Trio, out: Path, t0: float, ledger: Ledger | None) -> EditResult:
    torch.manual_seed(opts.seed)
    targets = revert_targets(trio, opts.modules, opts.layers)
    harmful = concat("harmful", [load_prompts(s) for s in opts.harmful])
    if opts.category and opts.category in {p.category for p in harmful}:
        harmful = harmful.filter(category=opts.category)
    if opts.harmful_limit:
        harmful = PromptSet(harmful.name, harmful.prompts[:opts.harmful_limit])
    harmful.require(1, "harmful prompts")
    task, val = task_parts(opts)
    frozen = None
    if ledger is not None:
        arch = trio.arch
        frozen = {}
        for t in targets:
            shape = tuple(to_out_in(torch.empty(trio.aligned.shape(t.tensor), device="meta"), arch).shape)
            frozen[t.tensor] = from_out_in(ledger.union(t.tensor, shape), arch)
    run = _Runner(trio, opts, targets, harmful, task, val, frozen)
    reverted, rolled = _live_phase(run)
    gc.collect()
    if isinstance(trio.finetuned, LoraFinetune):
        log.warning("%s: %s", method, MERGED_NOTE)
    step = len(ledger.steps) if ledger is not None else None
    res = write_output(out, opts, lambda tmp: _write(tmp, trio, opts, method, targets, reverted, rolled, task, run,
                                                     step), t0, "fgsn revert" if method == "revert" else None)
    if ledger is not None:
        m = res.manifest
        ledger.record(opts.category, run.masks, {"editor": method, **m["categories"][opts.category],
                                                 "safety_loss_start": m[method]["rounds"][0]["safety_loss"],
                                                 "safety_loss_final": m[method]["safety_loss_final"],
                                                 "rolled_back": sum(r["rolled_back"] for r in m["modules"])},
                      {"base": trio.base.sha256 if trio.base is not None else None, "aligned": trio.aligned.sha256,
                       "finetuned": trio.finetuned.sha256}, str(out), Checkpoint(out).sha256, editor=method,
                      paths={"finetuned_original": str(Path(trio.finetuned.path).resolve())} if step == 0 else None)
        log.info("ledger %s: step %d (%s) recorded", ledger.path, step, opts.category)
    return res


def _live_phase(run: _Runner) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Rounds and rollback on the live model; returns (reverted, rolled back) masks, stored layout.
    The model and everything holding its tensors go when this returns."""
    trio, arch = run.trio, run.trio.arch
    model, tok = run._load("fine-tuned")
    params = {t.tensor: live_module(model, arch, t).weight for t in run.targets}
    st = _State(model, tok, live_layers(model, arch), params,
                aligned={n: trio.aligned.get(n).to(p.dtype) for n, p in params.items()},
                reverted={n: torch.zeros(p.shape, dtype=torch.bool) for n, p in params.items()},
                rolled_back={n: torch.zeros(p.shape, dtype=torch.bool) for n, p in params.items()})
    run.references(st)
    run.rounds(st)
    if run.opts.rollback:
        run.rollback(st)
    return st.reverted, st.rolled_back


def _write(tmp: Path, trio: Trio, opts: RevertOptions, method: str, targets: list[EditTarget],
           reverted: dict[str, torch.Tensor], rolled: dict[str, torch.Tensor], task: PromptSet, run: _Runner,
           step: int | None = None) -> dict:
    arch = trio.arch
    records: list[dict] = []
    masks = run.masks = PackedMasks()
    overlap = 0
    by_name = {t.tensor: t for t in targets}

    def transform(name: str, w_ft: torch.Tensor) -> torch.Tensor | None:
        t = by_name.get(name)
        if t is None:
            return None
        nonlocal overlap
        m = reverted[name]
        masks.put(name, to_out_in(m, arch))
        if run.frozen is not None:
            overlap += int((m & run.frozen[name]).sum())  # zero by construction: counted, not assumed
        w_al = trio.aligned.get(name)
        new = torch.where(m, w_al, w_ft) if bool(m.any()) else w_ft
        delta = w_ft.float() - w_al.float()
        dn = float(delta.pow(2).sum())
        records.append({"name": name, "layer": t.layer, "module": t.spec.name, "numel": m.numel(),
                        "masked": int(m.sum()), "changed": int((new != w_ft).sum()),
                        "rolled_back": int(rolled[name].sum()),
                        "mask_update_energy": float(delta[m].pow(2).sum()) / dn if dn else 0.0})
        return new

    stream_rewrite(trio, tmp, transform, opts.max_shard_gb, desc=method)
    compensation = None
    if opts.compensate != "none":
        compensation = compensate_checkpoint(tmp, trio, targets, task, opts, opts, int(opts.max_shard_gb * 1024**3),
                                             frozen=run.frozen)
        by_rec = {r["name"]: r for r in compensation}
        for rec in records:
            if rec["name"] in by_rec:
                rec["changed"] += by_rec[rec["name"]]["kept_changed"]
    (tmp / "fgsn").mkdir(exist_ok=True)
    masks.save(tmp / "fgsn" / "masks.safetensors", meta={"method": method})
    layers = sorted({r["layer"] for r in records if r["masked"]})
    doc = assemble_manifest(method=method, opts=opts, trio=trio, modules=records,
                            edited_params=sum(r["numel"] for r in records), layers=layers,
                            prompt_counts={"harmful": len(run.harmful), "task": len(run.task),
                                           "task_validation": len(run.val)},
                            category=opts.category or "default", cat_stats={"overlap": overlap}, ledger_step=step)
    doc[method] = {**run.log, "cosine_layer": run.index if "cosine" in (opts.loss, opts.rollback_loss) else None,
                   "compensation": compensation,
                   "output": MERGED_NOTE if isinstance(trio.finetuned, LoraFinetune) else "merged checkpoint"}
    return doc
