"""`fgsn eval`: flags and YAML (`--config`) into EvalOptions, then `evaluate()` and the report.

Every option of EvalOptions is also a YAML key; the inputs (models, harmful, benign_alarming,
utility, reference, judge, out) may come from the YAML file too, e.g.

    models: {aligned: ckpt/aligned, finetuned: ckpt/ft, repaired: ckpt/fgsn}
    harmful: [builtin:harmbench]
    attack: ["builtin:jailbreak?wrap=harmbench&templates=dan"]
    benign_alarming: builtin:alarming
    utility: [gsm_symbolic?limit=50]
    reference: [builtin:pyrit-benign]
    out: runs/eval
"""

from __future__ import annotations

import argparse
from typing import Literal

from pydantic import Field

from fgsn.config import add_option_flags, options_from_args
from fgsn.errors import InputError
from fgsn.evaluate.options import EvalOptions


class EvalCommand(EvalOptions):
    """EvalOptions plus the inputs of one run (so a YAML file can hold a whole evaluation)."""

    models: dict[str, str] = Field(default_factory=dict, description="a model to evaluate, e.g. --model "
                                   "aligned=ckpt/aligned", json_schema_extra={"aliases": ["--model"],
                                                                              "metavar": "NAME=PATH"})
    harmful: list[str] = Field(default_factory=list, description="harmful prompts: .jsonl/.csv/.txt or "
                               "builtin:advbench|harmbench|strongreject|donotanswer, with optional "
                               "?split=&category=&limit=")
    attack: list[str] = Field(default_factory=list, description="harmful prompts wrapped in jailbreak templates, "
                              "scored apart as asr_attack, e.g. builtin:jailbreak?wrap=harmbench-standard&"
                              "templates=dan,inthewild&split=test")
    benign_alarming: str | None = Field(None, description="harmless prompts that sound alarming, for over-refusal "
                                                          "(e.g. builtin:alarming)")
    utility: list[str] = Field(default_factory=list, description="gsm_symbolic, basic_arithmetic or rg:NAME "
                               "(reasoning-gym, ?limit=&seed=), or a prompt/answer file")
    reference: list[str] = Field(default_factory=list, description="prompt/answer pairs whose answers' NLL is "
                                 "measured (e.g. builtin:pyrit-benign)")
    judge: Literal["keyword", "openai", "local"] = Field("keyword", description="primary ASR judge (keyword ASR is "
                                                                               "always reported too)")
    out: str | None = Field(None, description="run folder RUNDIR (default runs/eval)")


# Flags are generated from the fields (fgsn.config.add_option_flags), shown in these groups; a field
# in no group is listed under "other options", so every field has a flag.
GROUPS: dict[str, tuple[str, ...]] = {
    "inputs": ("models", "adapters", "systems", "suffixes", "harmful", "attack", "benign_alarming", "utility",
               "reference", "out"),
    "generation": ("backend", "tensor_parallel", "device", "dtype", "batch_size", "model_workers", "max_new_tokens",
                   "temperature", "top_p", "seed", "system", "use_chat_template", "trust_remote_code",
                   "allow_pickle", "cache_dir"),
    "judges": ("judge", "keyword_list", "keyword_min_words", "judge_url", "judge_model", "judge_key_env",
               "judge_timeout", "judge_retries", "judge_backoff", "judge_workers", "judge_success_score",
               "judge_path", "judge_max_new_tokens"),
    "utility and reference answers": ("utility_limit", "utility_seed", "utility_instruction", "nll_max_length"),
    "paired statistics": ("paired_against", "bootstrap_resamples", "bootstrap_seed"),
}


DESCRIPTION = ("Evaluate one or more models on harmful prompts (ASR, harmfulness), harmless-but-alarming prompts "
               "(over-refusal), utility items and reference answers (NLL), then write RUNDIR/results.json, report.md "
               "and report.html. Completions and verdicts are cached under RUNDIR/cache, so rerunning (after an "
               "interruption, or with one more model) only computes what is new.")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="YAML", help="options file (flags override it)")
    for title, names in GROUPS.items():
        add_option_flags(p.add_argument_group(title), EvalCommand, only=names)
    grouped = {n for names in GROUPS.values() for n in names}
    add_option_flags(p, EvalCommand, skip=tuple(grouped))
    p.set_defaults(func=run)


def command_from_args(args: argparse.Namespace) -> EvalCommand:
    return options_from_args(EvalCommand, args)


def run(args: argparse.Namespace) -> int:
    from fgsn.api import evaluate
    from fgsn.report.tables import summary_text

    cmd = command_from_args(args)
    if not cmd.harmful:
        raise InputError("fgsn eval needs at least one --harmful SOURCE (e.g. --harmful builtin:harmbench)")
    inputs = {"models", "harmful", "attack", "benign_alarming", "utility", "reference", "judge", "out"}
    opts = EvalOptions(**cmd.model_dump(exclude=inputs))
    out = cmd.out or "runs/eval"
    res = evaluate(cmd.models, cmd.harmful, benign_alarming=cmd.benign_alarming, utility=cmd.utility or None,
                   judge=cmd.judge, options=opts, out=out, reference=cmd.reference or None,
                   attack=cmd.attack or None)
    print(summary_text(res.results))
    new = sum(res.generated.values())
    print(f"\n{new} completions generated, {sum(res.cached.values())} from the cache")
    if opts.report:
        print(f"wrote {res.report_html}, {res.report_md}, {res.results_json}")
    else:
        print(f"wrote records under {res.rundir}; run `fgsn report {res.rundir}` for the report")
    return 0
