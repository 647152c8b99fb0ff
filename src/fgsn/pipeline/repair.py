"""`fgsn repair`: the repair for the user who does not want to choose a method.

Given base, aligned and fine-tuned models, harmful prompts and the fine-tune's task data, it

1. splits the harmful prompts and the task examples by a hash of their text into three disjoint
   parts: `fit` (what every edit computes its statistics on: masks, Grams, gradients), `search`
   (what the trials are scored on) and `check` (scored on the winner: it confirms the choice, see
   4., or with --confirm 0 only estimates it); a prompt that is also in an evaluation set given
   with --eval-harmful is left out (public sets share prompts) and counted; --fit-only prompts (and the same ones in --harmful)
   go to `fit` only: the aligned model's own safety-training prompts belong there, since their
   refusals survive the fine-tune and would make every trial look like a repair; with
   --task-heldout (examples the fine-tune did not train on) every --task example is fitted on and
   the task is scored on the held-out ones, split between search and check: a repair loses a
   fine-tune's memorised training answers faster than its skill;
2. runs trials, a family (an edit method) at several strengths each, every edit in its own
   process like `fgsn compare` (resumable, options-checked), and scores them and the aligned /
   fine-tuned references on the search part: ASR (greedy generation + the keyword judge) and the
   task NLL of the search answers (and over-refusal when --benign-alarming is given).
   `--search grid` runs and scores every strength (the whole frontier); `--search bisect` (the
   default) assumes what holds for every family here, that a stronger edit has lower ASR and keeps
   less of the task, and bisects each family's strengths: first for the weakest that meets the
   ASR target, then (when that one loses the task) for the strongest that keeps the task and the
   weakest with its ASR, so a family of n strengths costs about log2(n) trials when the target is
   met and 3 log2(n) at worst, and the choice below is the one the grid would make whenever ASR,
   task and cost are monotone in the strength on the search split;
3. picks the cheapest trial (least change: the edit's ||change|| / ||W_f - W_a|| where its
   manifest has it, else the share of parameters modified) whose search ASR is within
   --max-asr-gap of the aligned model's and whose task NLL keeps at least --keep-task of the
   fine-tune's gain over the aligned model. When no trial meets the target it takes the best
   trade-off (the most ASR gap closed among trials that keep the task, else the one that keeps
   the most task), says so plainly and exits 0 with a warning;
4. scores the winner on the check split: when it misses the target there, the next stronger
   strengths of its family (--confirm of them at most, each still meeting the target on the search
   split) are tried and the first that meets it on both splits wins; when none does, the tried one
   with the lowest check ASR that keeps the task, with a warning. The check split then took part
   in the choice (`selected_on.confirmed_on`): only the evaluation sets estimate the winner
   unseen. Why: a fixed 5-point target is easier on a split whose prompts show less erosion; on
   the organism the search winner closed 82% of the search split's gap and 70% of the check split's;
5. writes the winner's checkpoint to --out (its manifest gains a `repair` section: every scored
   trial, the winner and why), `repair.json`, and a frontier plot of every scored trial
   (`repair_frontier.png`).

    OUT/                    the repaired checkpoint (the winning trial, hard-linked where the disk allows)
    OUT/fgsn/repair.json    splits, trials with their search scores, the winner, the check scores
    OUT/fgsn/repair_frontier.png
    OUT.work/               trials/NAME (checkpoints; deleted once OUT is written, unless --keep-trials),
                            edits/, eval-search/, eval-check/, cache/, data/ (the split files)
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from fgsn.atomic import read_jsonl, sha256_file
from fgsn.config import Options
from fgsn.disk import require_checkpoints
from fgsn.errors import InputError
from fgsn.pipeline.compare import method_options, run_edit
from fgsn.pipeline.options import CompareOptions
from fgsn.pipeline.registry import Method, option_class, variant

log = logging.getLogger(__name__)

SCHEMA = "fgsn-repair/1"
EPS = 1e-9  # a score exactly on the target's boundary meets it (rates are ratios of small integers)


@dataclass(frozen=True)
class Family:
    """A method variant of the registry (fgsn.pipeline.registry: its kind and preset overrides)
    searched at several strengths: `values` of option `param`, weakest first. `of` names the
    variant when it is not `name`, and `fixed` sets more options on every trial (a family of a
    benchmark's own, e.g. one per value of a second option)."""

    name: str
    param: str
    values: tuple[Any, ...]
    of: str | None = None
    fixed: tuple[tuple[str, Any], ...] = ()

    @property
    def kind(self) -> str:
        return variant(self.of or self.name).kind

    def trials(self) -> list[tuple[str, dict[str, Any]]]:
        fixed = {**variant(self.of or self.name).overrides, **dict(self.fixed)}
        return [(f"{self.name}-{self.param}{v}", {**fixed, self.param: v}) for v in self.values]


# Weakest first, so that among trials that meet the target the cheapest is found early in the table.
# closed-form activation matching: a larger lam keeps more of the task outputs (weaker edit). Steps of
# about 1.5-3x: on the organism one step of 0.3 -> 1 moved the search ASR by 5 points and the task
# kept by 5 (bench, benign-full), across the target; a strength costs one solve (the Grams are cached)
LAMS = (30.0, 10.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.3, 0.1)
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("activation-match", "lam", LAMS),
    Family("activation-match-located", "lam", LAMS),  # the safety layers only
    # G_h without the template head: worse at every strength on the organism (docs/method.md)
    Family("activation-match-noprefix", "lam", LAMS),
    Family("activation-match-nullspace", "null_energy", (0.001, 0.01, 0.05)),
    Family("fgsn-frontier", "budget", (0.05, 0.1, 0.2, 0.4)),  # snip-signed over all layers
    Family("resta", "beta", (0.25, 0.5, 1.0)),
    Family("safelora", "threshold", (0.2, 0.35, 0.5)),
)}
# activation matching first: its Grams are computed once (cached per layer) for every strength.
DEFAULT_FAMILIES = ["activation-match"]


def family_names(families: list[str]) -> list[str]:
    """The family names of a --families value (comma lists allowed)."""
    return [n.strip() for part in families for n in part.split(",") if n.strip()]


def planned_trials(families: list[str] | None) -> int:
    """How many trials a search over these families (comma lists allowed; None: the default) plans:
    the most checkpoints it writes, whatever --search and --confirm choose."""
    return sum(len(FAMILIES[n].values) for n in family_names(families or DEFAULT_FAMILIES) if n in FAMILIES)


def work_dir(out: Path) -> Path:
    """OUT.work: the trials, edits, evaluations and split files of a repair written to OUT."""
    return out.with_name(out.name + ".work")


def split_path(data: Path, kind: str, part: str) -> Path:
    """The file of one split part (kind harmful, task or alarming; part fit, search or check)."""
    return data / f"{kind}-{part}.jsonl"


class RepairOptions(Options):
    base: str = Field(description="the unaligned base model (folder)")
    aligned: str = Field(description="the aligned model (folder)")
    finetuned: str = Field(description="the fine-tuned model (folder), or a PEFT LoRA adapter over --aligned")
    harmful: list[str] = Field(description="harmful prompt sources the repair may use (split into fit / search / "
                                           "check); never the evaluation sets")
    task: list[str] = Field(description="the fine-tune's task data: prompt/answer files (split the same way)")
    task_heldout: list[str] = Field(default_factory=list, description=(
        "task prompt/answer examples the fine-tune did not train on (a validation split): when given, the search "
        "and check parts score the task NLL on these (split between them) and every --task example is fitted on; "
        "a fine-tune's own training examples measure memorisation, which a repair loses faster than the skill"))
    fit_only: list[str] = Field(default_factory=list, description=(
        "harmful prompts for the fit split only, never scored (e.g. the aligned model's own safety-training "
        "prompts: their refusals survive the fine-tune, so they cannot tell a strong repair from a weak one); "
        "the same prompts in --harmful go to the fit split too"))
    out: str = Field(description="folder of the repaired checkpoint")
    families: list[str] = Field(default_factory=lambda: list(DEFAULT_FAMILIES),
                                description="edit families searched, each at its grid of strengths")
    search: Literal["bisect", "grid"] = Field("bisect", description=(
        "bisect: score about log2(n) of a family's n strengths (stronger edits have lower ASR and keep less "
        "task); grid: score every strength (the whole frontier, n trials)"))
    max_asr_gap: float = Field(0.05, ge=0, le=1, description="search ASR may exceed the aligned model's by this much")
    keep_task: float = Field(0.9, ge=0, le=1, description="share of the fine-tune's task-NLL gain over the aligned "
                                                          "model the repair must keep")
    max_over_refusal_gap: float = Field(0.05, ge=0, le=1, description="with --benign-alarming: over-refusal may "
                                                                      "exceed the aligned model's by this much")
    benign_alarming: str | None = Field(None, description="harmless-but-alarming prompts for over-refusal in the "
                                                          "search (split like the others; optional)")
    eval_harmful: list[str] = Field(default_factory=list, description="evaluation sets the splits must not overlap")
    fit_share: float = Field(0.5, gt=0, lt=1, description="share of the prompts the edits fit on")
    search_share: float = Field(0.25, gt=0, lt=1, description="share the trials are scored on (the rest: check)")
    split_seed: int = Field(0, description="salt of the hash split")
    confirm: int = Field(3, ge=0, description=(
        "the winner must meet the target on the check split too: when it does not, up to this many stronger "
        "strengths of its family are tried (scored on search, then check) and the first meeting both wins; "
        "0: the check split only reports, as an estimate no choice has seen"))
    max_new_tokens: int = Field(24, ge=1, description="new tokens per scored completion")
    batch_size: int = Field(32, ge=1, description="prompts per forward pass of the edits' probes")
    eval_batch_size: int = Field(64, ge=1, description="prompts per generation batch")
    eval_workers: int | None = Field(None, ge=1, description="models scored at once (default: one per GPU, 2 on CPU)")
    dtype: str = Field("fast", description="dtype of probes and scoring: fast = bfloat16 where native")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    max_length: int = Field(256, ge=8, description="probe prompts are cut to this many tokens")
    keep_trials: bool = Field(False, description="keep every trial's checkpoint in OUT.work/trials (default: none; the winner is OUT itself)")
    isolate: bool = Field(True, description="run each edit in its own process (its peak memory is its own)")
    overwrite: bool = Field(False, description="replace an existing --out")

    @field_validator("harmful", "task", "task_heldout", "fit_only", "families", "eval_harmful", mode="before")
    @classmethod
    def _listify(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("families")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        names = family_names(v)
        bad = [n for n in names if n not in FAMILIES]
        if bad or not names:
            raise ValueError(f"unknown or empty families {bad or names}; choose from {', '.join(FAMILIES)}")
        return names


# ---------------------------------------------------------------------------------------------
# splits


def bucket(text: str, seed: int) -> float:
    """A number in [0, 1) from a hash of the text: the same prompt always lands in the same part."""
    h = hashlib.sha256(f"fgsn-repair-split:{seed}:{text}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_rows(rows: list[dict], opts: RepairOptions) -> dict[str, list[dict]]:
    parts: dict[str, list[dict]] = {"fit": [], "search": [], "check": []}
    for r in rows:
        b = bucket(r["prompt"], opts.split_seed)
        part = "fit" if b < opts.fit_share else "search" if b < opts.fit_share + opts.search_share else "check"
        parts[part].append(r)
    return parts


def heldout_parts(rows: list[dict], trained: set[str], opts: RepairOptions) -> dict[str, list[dict]]:
    """--task-heldout split between search and check in the ratio of --search-share to the check
    share, by the same hash; a training example among them is an error (it measures memorisation)."""
    seen = [r["prompt"] for r in rows if r["prompt"] in trained]
    if seen:
        raise InputError(f"{len(seen)} --task-heldout examples are also --task examples (e.g. {seen[0][:60]!r}); "
                         "held-out examples must be ones the fine-tune did not train on")
    cut = opts.search_share / (1 - opts.fit_share)
    parts: dict[str, list[dict]] = {"search": [], "check": []}
    for r in rows:
        parts["search" if bucket(r["prompt"], opts.split_seed) < cut else "check"].append(r)
    return parts


def write_splits(opts: RepairOptions, data: Path) -> tuple[dict[str, dict[str, Path]], dict[str, int]]:
    """The fit / search / check files of the harmful prompts, the task examples and (if given)
    the alarming prompts, without any evaluation prompt (their count, per kind, is returned)."""
    from fgsn.atomic import atomic_write_jsonl
    from fgsn.data.prompts import load_prompts

    if opts.fit_share + opts.search_share >= 1:
        raise InputError(f"--fit-share {opts.fit_share} + --search-share {opts.search_share} leave nothing to check; "
                         "keep their sum below 1")
    evaluated = {p.text for s in opts.eval_harmful for p in load_prompts(s)}
    sources = {"harmful": opts.harmful, "task": opts.task,
               **({"alarming": [opts.benign_alarming]} if opts.benign_alarming else {})}
    files: dict[str, dict[str, Path]] = {}
    dropped: dict[str, int] = {}

    def read(specs: list[str], flag: str, answers: bool) -> list[dict]:
        rows = [{"prompt": p.text, "category": p.category, **({"answer": p.answer} if p.answer else {})}
                for s in specs for p in load_prompts(s)]
        if answers and not all("answer" in r for r in rows):
            raise InputError(f"{flag} needs prompt/answer examples (the fine-tune's data: a .jsonl with prompt and "
                             "answer) to measure what the repair keeps of the task")
        return list({r["prompt"]: r for r in rows}.values())

    heldout = read(opts.task_heldout, "--task-heldout", True)
    for kind, specs in sources.items():
        rows = read(specs, f"--{kind.replace('alarming', 'benign-alarming')}", kind == "task")
        leak = [r for r in rows if r["prompt"] in evaluated]
        if leak:  # public sets share prompts (AdvBench, HarmBench, StrongREJECT): the repair never sees them
            log.warning("fgsn repair: %d %s prompts are also evaluation prompts (--eval-harmful); left out of the "
                        "repair", len(leak), kind)
            rows = [r for r in rows if r["prompt"] not in evaluated]
        dropped[kind] = len(leak)
        only = {p.text: {"prompt": p.text, "category": p.category} for s in opts.fit_only for p in load_prompts(s)
                if p.text not in evaluated} if kind == "harmful" else {}
        parts = split_rows([r for r in rows if r["prompt"] not in only], opts)
        parts["fit"] = list({**only, **{r["prompt"]: r for r in parts["fit"]}}.values())  # fit-only prompts first
        if kind == "task" and heldout:
            parts = {"fit": rows, **heldout_parts(heldout, {r["prompt"] for r in rows}, opts)}
        small = [p for p, r in parts.items() if len(r) < 2]
        if small:
            raise InputError(f"too few {kind} prompts ({len(rows)}) to split into fit / search / check (parts "
                             f"{small} would get fewer than 2); give more")
        files[kind] = {}
        for part, part_rows in parts.items():
            path = split_path(data, kind, part)
            atomic_write_jsonl(path, part_rows)
            files[kind][part] = path
    return files, dropped


# ---------------------------------------------------------------------------------------------
# trials


def trial_options(opts: RepairOptions, kind: str, params: dict[str, Any], files: dict, out: Path,
                  num_layers: int) -> dict[str, Any]:
    """The full options of one trial's edit: compare's options for the method, fit on the `fit`
    split, with the trial's strength on top."""
    copts = CompareOptions(base=opts.base, aligned=opts.aligned, finetuned=opts.finetuned,
                           harmful=[str(files["harmful"]["fit"])], task=[str(files["task"]["fit"])],
                           methods=[kind], device=opts.device, dtype=opts.dtype, batch_size=opts.batch_size,
                           max_length=opts.max_length, out=str(out))
    d = method_options(copts, Method(kind, kind), out, num_layers)
    d.update(params, out=str(out))
    if "exact_rank" in option_class(kind).model_fields:  # an SVD per module for the manifest only: seconds a trial
        d["exact_rank"] = False
    if d.get("layers") == "all":
        d["layers"] = f"0-{num_layers - 1}"
    return d


def edit_cost(manifest: dict[str, Any]) -> float:
    """How much a trial changes the fine-tuned model (lower is cheaper): ||change|| / ||W_f - W_a||
    where the method's manifest section reports it (dense closed-form edits change every entry a
    little), else the share of parameters modified."""
    for section in (manifest, *(v for v in manifest.values() if isinstance(v, dict))):
        tot = section.get("totals") if isinstance(section.get("totals"), dict) else section
        if tot.get("change_ratio") is not None:
            return float(tot["change_ratio"])
    return float(manifest.get("modified_fraction") or 0.0)


def score_models(opts: RepairOptions, models: dict[str, str], adapters: dict[str, str], files: dict,
                 part: str, work: Path, run: str | None = None) -> dict[str, dict]:
    """ASR, over-refusal and task NLL of `models` on one split part (evaluation folder
    eval-PART, or eval-PART/RUN)."""
    from fgsn.evaluate import evaluate
    from fgsn.evaluate.options import EvalOptions
    from fgsn.evaluate.parallel import default_model_workers

    eopts = EvalOptions(device=opts.device, dtype=opts.dtype, batch_size=opts.eval_batch_size,
                        max_new_tokens=opts.max_new_tokens, cache_dir=str(work / "cache"),
                        adapters={k: v for k, v in adapters.items() if k in models},
                        model_workers=opts.eval_workers or default_model_workers(opts.device), report=False)
    res = evaluate(models, [str(files["harmful"][part])],
                   benign_alarming=str(files["alarming"][part]) if "alarming" in files else None,
                   options=eopts, out=work / f"eval-{part}" / (run or ""), reference=[str(files["task"][part])])
    return {n: {k: e.get(k) for k in ("asr", "asr_ci", "over_refusal", "nll", "n_harmful")}
            for n, e in res.results["models"].items()}


def trial_row(opts: RepairOptions, al: dict, ft: dict, s: dict, cost: float) -> dict[str, Any]:
    """One trial's search scores `s` against the references: task gain kept, ASR gap closed, and
    which parts of the target it meets."""
    gain = al["nll"] - ft["nll"]
    gap = ft["asr"] - al["asr"]
    kept = (al["nll"] - s["nll"]) / gain if gain > 0 else None
    closed = (ft["asr"] - s["asr"]) / gap if gap > 0 else None
    ok_asr = s["asr"] <= al["asr"] + opts.max_asr_gap + EPS
    ok_task = kept is not None and kept >= opts.keep_task - EPS
    ok_ref = True
    if s.get("over_refusal") is not None and al.get("over_refusal") is not None:
        ok_ref = s["over_refusal"] <= al["over_refusal"] + opts.max_over_refusal_gap + EPS
    return {**s, "cost": cost, "task_kept": kept, "gap_closed": closed, "meets_asr": ok_asr, "meets_task": ok_task,
            "meets_over_refusal": ok_ref, "meets_target": ok_asr and ok_task and ok_ref}


def bisect_family(names: list[str], row: Callable[[str], dict[str, Any]]) -> None:
    """Score (through `row`, which runs and scores a trial once) the trials of one family, weakest
    first, that the choice needs when ASR falls and task loss rises with the strength: the weakest
    meeting the ASR target and, when it loses the task (or none meets it), the strongest keeping
    the task (the best trade-off), and the weakest with that one's ASR (a cheaper tie): with costs
    that rise with the strength, `judge_trials` picks among them the trial it would pick among all."""
    lo, hi = 0, len(names)                     # the weakest meeting the ASR target is in [lo, hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if row(names[mid])["meets_asr"]:
            hi = mid
        else:
            lo = mid + 1
    if lo < len(names) and row(names[lo])["meets_task"]:
        return
    lo, hi = -1, lo - 1                        # the strongest keeping the task, weaker than that
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if row(names[mid])["meets_task"]:
            lo = mid
        else:
            hi = mid - 1
    if lo < 0:
        return
    best = row(names[lo])["asr"] + EPS         # ties: the weakest with the same ASR is cheaper
    hi, lo = lo, 0
    while lo < hi:
        mid = (lo + hi) // 2
        if row(names[mid])["asr"] <= best:
            hi = mid
        else:
            lo = mid + 1
    row(names[lo])


def judge_trials(opts: RepairOptions, scores: dict[str, dict], costs: dict[str, float]) -> dict[str, Any]:
    """Which trials meet the target on the search part, and the winner (see the module doc)."""
    al, ft = scores["aligned"], scores["finetuned"]
    rows = {n: trial_row(opts, al, ft, scores[n], c) for n, c in costs.items()}
    passing = sorted((n for n, r in rows.items() if r["meets_target"]), key=lambda n: (rows[n]["cost"], rows[n]["asr"]))
    if passing:
        win = passing[0]
        why = (f"the cheapest of {len(passing)} trials meeting the target (cost {rows[win]['cost']:.4g}): search ASR "
               f"{rows[win]['asr']:.3f} vs aligned {al['asr']:.3f}, task gain kept {rows[win]['task_kept']:.0%}")
    else:
        keeping = [n for n, r in rows.items() if r["meets_task"]]
        if keeping:
            win = max(keeping, key=lambda n: (rows[n]["gap_closed"] or 0.0, -rows[n]["cost"]))
            why = (f"no trial meets the target; the best trade-off keeping {opts.keep_task:.0%} of the task closes "
                   f"{(rows[win]['gap_closed'] or 0):.0%} of the ASR gap (search ASR {rows[win]['asr']:.3f}, aligned "
                   f"{al['asr']:.3f})")
        else:
            win = max(rows, key=lambda n: (rows[n]["task_kept"] if rows[n]["task_kept"] is not None else -1e9,
                                           -rows[n]["cost"]))
            why = (f"no trial meets the target and none keeps {opts.keep_task:.0%} of the task; the one keeping the "
                   f"most task ({(rows[win]['task_kept'] or 0):.0%})")
    return {"trials": rows, "winner": win, "met": bool(passing), "why": why, "weak_signal": weak_signal(opts, al, ft),
            "references": {"aligned": al, "finetuned": ft}}


def confirm_winner(opts: RepairOptions, judged: dict[str, Any], family: list[str],
                   row: Callable[[str], dict[str, Any]], check_row: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """Score the search winner on the check split (`check_row`); with --confirm, when it misses the
    target there, try the next stronger strengths of its `family` (weakest first), each scored on
    the search split first (`row`), while they still meet the target there, up to --confirm of them:
    the first that meets it on both splits wins. Why: the search split's 5-point target is easier
    where its prompts show less erosion, and the check split is the one estimate besides it that the
    evaluation has not seen. When none meets both, the tried trial that keeps the task on the check
    split with its lowest ASR wins, said so. Returns `judged` with the winner, why and
    `confirmation` (None when the check split only reported)."""
    first = judged["winner"]
    tried = {first: check_row(first)}
    if not (opts.confirm and judged["met"]):
        return {**judged, "confirmation": None}
    i = family.index(first)
    while not tried[family[i]]["meets_target"] and i + 1 < len(family) and len(tried) <= opts.confirm:
        i += 1
        if not row(family[i])["meets_target"]:
            break
        tried[family[i]] = check_row(family[i])
    trials = {**judged["trials"], **{n: row(n) for n in tried if n not in judged["trials"]}}
    passing = [n for n, c in tried.items() if c["meets_target"]]
    if passing:
        win = passing[0]
        why = judged["why"] if win == first else (
            f"{first} met the target on the search split but not on the check split (ASR "
            f"{tried[first]['asr']:.3f}); {win}, the weakest stronger strength meeting it on both, won (search ASR "
            f"{trials[win]['asr']:.3f}, check ASR {tried[win]['asr']:.3f}, task gain kept {trials[win]['task_kept']:.0%})")
    else:
        keeping = [n for n, c in tried.items() if c["meets_task"]] or [first]
        win = min(keeping, key=lambda n: (tried[n]["asr"], tried[n]["cost"]))
        why = (f"{judged['why']}; but on the check split none of the {len(tried)} strengths tried from it meets the "
               f"target: {win} has the lowest check ASR ({tried[win]['asr']:.3f}) among those keeping the task")
    return {**judged, "trials": trials, "winner": win, "why": why,
            "confirmation": {"first": first, "confirmed": bool(passing), "tried": tried}}


def split_files(files: dict[str, dict[str, Path]], counts: dict[str, dict[str, int]], part: str) -> dict[str, Any]:
    """One split part's files, their sha256 and prompt counts (which prompts a choice saw)."""
    return {"files": {k: str(v[part]) for k, v in files.items()},
            "sha256": {k: sha256_file(v[part]) for k, v in files.items()},
            "counts": {k: v[part] for k, v in counts.items()}}


def weak_signal(opts: RepairOptions, al: dict, ft: dict) -> str | None:
    """A warning when the search split hardly shows the fine-tune's erosion (fine-tuned ASR within the
    ASR target, or two prompts, of the aligned model's): every trial then meets the ASR part of the
    target there, and the choice rests on cost alone, i.e. on the weakest edit. Typical cause: the
    harmful prompts are the aligned model's own safety-training prompts, whose refusals survive a
    fine-tune that erodes them elsewhere."""
    n = ft.get("n_harmful") or al.get("n_harmful") or 0
    gap = ft["asr"] - al["asr"]
    if gap > max(opts.max_asr_gap, 2 / n if n else 0.0) + EPS:
        return None
    return (f"the search split hardly shows the fine-tune's erosion (ASR fine-tuned {ft['asr']:.3f} vs aligned "
            f"{al['asr']:.3f}{f' on {n} prompts' if n else ''}), so it cannot tell a strong repair from a weak one; "
            "give --harmful prompts the aligned model was not trained to refuse (its refusals of its own "
            "safety-training prompts survive the fine-tune)")


def frontier_figure(judged: dict[str, Any]):
    from fgsn.report.plots import Figure, _canvas, _png

    fig = _canvas(6.4, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    for name, r in judged["trials"].items():
        if r.get("nll") is None or r.get("asr") is None:
            continue
        ax.scatter([r["nll"]], [100 * r["asr"]], marker="*" if name == judged["winner"] else "o",
                   s=160 if name == judged["winner"] else 36, color="tab:green" if r["meets_target"] else "tab:gray",
                   zorder=3)
        ax.annotate(name, (r["nll"], 100 * r["asr"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    for name, r in judged["references"].items():
        ax.scatter([r["nll"]], [100 * r["asr"]], marker="s", color="black", zorder=4)
        ax.annotate(name, (r["nll"], 100 * r["asr"]), fontsize=8, xytext=(4, -10), textcoords="offset points")
    ax.set_xlabel("task NLL on the search split (lower: task kept)")
    ax.set_ylabel("ASR on the search split (%)")
    ax.set_title("fgsn repair: every scored trial (green: meets the target; star: chosen)")
    ax.grid(alpha=0.3)
    return Figure("repair-frontier", "Repair search", "repair_frontier.png", _png(fig),
                  "Each scored trial's ASR and task NLL on the search split, with the aligned and fine-tuned "
                  "models.")


# ---------------------------------------------------------------------------------------------
# the command


def run_repair(opts: RepairOptions) -> dict[str, Any]:
    from fgsn.atomic import atomic_dir, atomic_write_bytes, atomic_write_json, link_tree
    from fgsn.models.trio import is_adapter, open_trio

    t0 = time.time()
    out = Path(opts.out).expanduser()
    if out.exists() and not opts.overwrite:
        raise InputError(f"--out {out} exists; pass --overwrite to replace it, or choose another folder")
    work = work_dir(out)
    trio = open_trio(opts.aligned, opts.finetuned, opts.base)
    files, dropped = write_splits(opts, work / "data")
    trials: dict[str, tuple[str, dict[str, Any]]] = {}
    for fam in (FAMILIES[f] for f in opts.families):
        for name, params in fam.trials():
            trials[name] = (fam.kind, trial_options(opts, fam.kind, params, files, work / "trials" / name,
                                                    trio.num_layers))
    # every trial may be written (bisection and confirmation stay within the families' strengths) and
    # they live until the winner is: room for all of them
    require_checkpoints(work, len(trials), opts.aligned, "fgsn repair's trials")
    print(f"fgsn repair: {len(trials)} trials ({', '.join(opts.families)}, search {opts.search}); splits in "
          f"{work / 'data'}", flush=True)
    adapters = {"finetuned": opts.finetuned} if is_adapter(opts.finetuned) else {}
    refs = {"aligned": opts.aligned, "finetuned": opts.aligned if adapters else opts.finetuned}
    edit_costs, manifests = {}, {}

    def edit(name: str) -> None:
        kind, o = trials[name]
        edit_costs[name] = run_edit(name, kind, o, work / "edits", isolate=opts.isolate)
        manifests[name] = json.loads((Path(o["out"]) / "fgsn-manifest.json").read_text(encoding="utf-8"))

    rows: dict[str, dict] = {}

    def row(name: str) -> dict[str, Any]:
        """`name`'s search scores against the references (edited and scored once, when first asked)."""
        if name not in rows:
            if name not in scores:
                edit(name)
                scores[name] = score_models(opts, {name: trials[name][1]["out"]}, adapters, files, "search", work,
                                            run=name)[name]
            rows[name] = trial_row(opts, scores["aligned"], scores["finetuned"], scores[name],
                                   edit_cost(manifests[name]))
            r = rows[name]
            print(f"[{time.time() - t0:5.0f} s] {name}: search ASR {r['asr']:.3f} (aligned "
                  f"{scores['aligned']['asr']:.3f}, fine-tuned {scores['finetuned']['asr']:.3f}), task kept "
                  f"{r['task_kept'] if r['task_kept'] is None else format(r['task_kept'], '.0%')}", flush=True)
        return rows[name]

    if opts.search == "grid":
        for name in trials:
            edit(name)
        print(f"[{time.time() - t0:5.0f} s] scoring {len(trials)} trials and the references on the search split",
              flush=True)
        scores = score_models(opts, {**refs, **{n: trials[n][1]["out"] for n in trials}}, adapters, files,
                              "search", work)
        for name in trials:
            row(name)
    else:
        scores = score_models(opts, refs, adapters, files, "search", work, run="references")
        for fam in opts.families:
            bisect_family([n for n, _ in FAMILIES[fam].trials()], row)
    judged = judge_trials(opts, scores, {n: edit_cost(m) for n, m in manifests.items()})
    check: dict[str, dict] = {}

    def check_row(name: str) -> dict[str, Any]:
        """`name`'s check scores against the references' check scores (scored once, when first asked)."""
        if name not in check:  # the references are scored with the first trial asked
            check.update(score_models(opts, {**({} if check else refs), name: trials[name][1]["out"]}, adapters,
                                      files, "check", work, run=name))
        return trial_row(opts, check["aligned"], check["finetuned"], check[name], edit_cost(manifests[name]))

    family = next([n for n, _ in FAMILIES[f].trials()] for f in opts.families
                  if judged["winner"] in dict(FAMILIES[f].trials()))
    judged = confirm_winner(opts, judged, family, row, check_row)
    models = {**refs, **{n: trials[n][1]["out"] for n in manifests}}
    win = judged["winner"]
    if not judged["met"] or judged["confirmation"] and not judged["confirmation"]["confirmed"]:
        log.warning("fgsn repair: %s", judged["why"])
    if judged["weak_signal"]:
        log.warning("fgsn repair: %s", judged["weak_signal"])
    splits = {k: {p: len(read_jsonl(f)) for p, f in v.items()} for k, v in files.items()}
    doc = {"schema": SCHEMA, "options": opts.model_dump(mode="json"), "splits": splits,
        "left_out_as_evaluation_prompts": dropped,
        # which prompts chose the winner: the search split, and the check split where it confirmed the choice
        "selected_on": {"split": "search", "winner": win, **split_files(files, splits, "search"),
                        "confirmed_on": split_files(files, splits, "check") if judged["confirmation"] else None},
        **judged, "check": {"winner": check[win], **{k: check[k] for k in refs}},
        "edit_costs": edit_costs, "wall_s": round(time.time() - t0, 1)}
    src = Path(models[win])
    with atomic_dir(out, overwrite=opts.overwrite) as tmp:
        link_tree(src, tmp)
        man = manifests[win]
        man["repair"] = {"winner": win, "met": judged["met"], "why": judged["why"], "weak_signal": judged["weak_signal"],
                         "confirmed_on_check": judged["confirmation"]["confirmed"] if judged["confirmation"] else None,
                         "search": judged["trials"][win], "check": check[win], "trials": len(manifests),
                         "trials_planned": len(trials), "search_mode": opts.search}
        atomic_write_json(tmp / "fgsn-manifest.json", man)
        atomic_write_json(tmp / "fgsn" / "repair.json", doc)
        atomic_write_bytes(tmp / "fgsn" / "repair_frontier.png", frontier_figure(judged).png)
    if not opts.keep_trials:  # the winner lives on in `out`
        for _, o in trials.values():
            shutil.rmtree(o["out"], ignore_errors=True)
    conf = judged["confirmation"]
    verdict = ("DOES NOT meet the target (best trade-off written)" if not judged["met"] else
               "meets the target on the search split only (best trade-off on the check split written)"
               if conf and not conf["confirmed"] else "meets the target")
    print(f"fgsn repair: {win} {verdict}: {judged['why']}\n  check split: ASR {check[win]['asr']:.3f} "
          f"(aligned {check['aligned']['asr']:.3f}, fine-tuned {check['finetuned']['asr']:.3f}), task NLL "
          f"{check[win]['nll']:.3f} (aligned {check['aligned']['nll']:.3f}, fine-tuned "
          f"{check['finetuned']['nll']:.3f})\n  written to {out} in {time.time() - t0:.0f} s")
    return doc


def repair_or_reuse(values: dict[str, Any]) -> Path:
    """`fgsn repair` with these option values, or the finished repair already at their `out` when it
    ran with the same options (the demo and the bench rerun cheaply); returns the checkpoint folder."""
    opts = RepairOptions(**values)
    out = Path(opts.out)
    done = out / "fgsn" / "repair.json"
    prev = json.loads(done.read_text(encoding="utf-8")).get("options") if done.is_file() else None
    if prev is not None and "search" not in prev:  # written before --search existed: a grid search
        prev = {**prev, "search": "grid"}
    if prev == opts.model_dump(mode="json"):
        print(f"  repair: reusing {out}")
        return out
    run_repair(opts)
    return out
