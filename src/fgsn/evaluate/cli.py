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
from typing import Any

from pydantic import Field

from fgsn.config import options_from_args
from fgsn.errors import InputError
from fgsn.evaluate.options import MODEL_WORKERS_HELP, EvalOptions

S = argparse.SUPPRESS


class EvalCommand(EvalOptions):
    """EvalOptions plus the inputs of one run (so a YAML file can hold a whole evaluation)."""

    models: dict[str, str] = Field(default_factory=dict)
    harmful: list[str] = Field(default_factory=list)
    attack: list[str] = Field(default_factory=list)
    benign_alarming: str | None = None
    utility: list[str] = Field(default_factory=list)
    reference: list[str] = Field(default_factory=list)
    judge: str = "keyword"
    out: str | None = None


def parse_pairs(values: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            value = "PATH, e.g. {flag} aligned=checkpoints/aligned" if flag in ("--model", "--adapter") else "TEXT"
            raise InputError(f"{flag} {v!r}: expected NAME={value.format(flag=flag)}")
        if name in out:
            raise InputError(f"{flag}: name {name!r} given twice; each model needs its own name")
        out[name] = path
    return out


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval", help="generate, judge and score models; writes RUNDIR with results and a report",
        description="Evaluate one or more models on harmful prompts (ASR, harmfulness), harmless-but-alarming "
                    "prompts (over-refusal), utility items and reference answers (NLL), then write "
                    "RUNDIR/results.json, report.md and report.html. Completions and verdicts are cached under "
                    "RUNDIR/cache, so rerunning (after an interruption, or with one more model) only computes "
                    "what is new.")
    g = p.add_argument_group("inputs")
    g.add_argument("--model", action="append", metavar="NAME=PATH", default=S, dest="model_pairs",
                   help="a model to evaluate (repeatable), e.g. --model aligned=ckpt/aligned")
    g.add_argument("--adapter", action="append", metavar="NAME=PATH", default=S, dest="adapter_pairs",
                   help="a LoRA adapter merged into model NAME before evaluation (repeatable)")
    g.add_argument("--system-for", action="append", metavar="NAME=TEXT", default=S, dest="system_pairs",
                   help="a system prompt for model NAME only (e.g. Self-Reminder; repeatable)")
    g.add_argument("--suffix-for", action="append", metavar="NAME=TEXT", default=S, dest="suffix_pairs",
                   help="text appended to the user turn for model NAME only; the judge sees the prompt as given")
    g.add_argument("--harmful", action="append", metavar="SOURCE", default=S,
                   help="harmful prompts: .jsonl/.csv/.txt or builtin:advbench|harmbench|strongreject|donotanswer, "
                        "with optional ?split=&category=&limit= (repeatable)")
    g.add_argument("--attack", action="append", metavar="SOURCE", default=S,
                   help="harmful prompts wrapped in jailbreak templates, scored apart as asr_attack, e.g. "
                        "builtin:jailbreak?wrap=harmbench-standard&templates=dan,inthewild&split=test (repeatable)")
    g.add_argument("--benign-alarming", metavar="SOURCE", default=S,
                   help="harmless prompts that sound alarming, for over-refusal (e.g. builtin:alarming)")
    g.add_argument("--utility", action="append", metavar="TASK_OR_FILE", default=S,
                   help="gsm_symbolic, basic_arithmetic or rg:NAME (reasoning-gym, ?limit=&seed=), or a "
                        "prompt/answer file (repeatable)")
    g.add_argument("--reference", action="append", metavar="SOURCE", default=S,
                   help="prompt/answer pairs whose answers' NLL is measured (e.g. builtin:pyrit-benign)")
    g.add_argument("--config", metavar="YAML", help="options file (flags override it)")
    g.add_argument("--out", metavar="RUNDIR", default=S, help="run folder (default runs/eval)")

    gen = p.add_argument_group("generation")
    gen.add_argument("--backend", choices=["hf", "vllm"], default=S, help="hf (default) or vllm (pip install "
                     "'fgsn[vllm]', GPU)")
    gen.add_argument("--tensor-parallel", type=int, default=S, help="vllm: GPUs per model (default: every "
                     "visible GPU; a 70B model in bf16 needs at least 2 x 80 GB)")
    gen.add_argument("--device", default=S, help="auto (default), cpu, cuda, cuda:N")
    gen.add_argument("--dtype", default=S, help="auto (default: float32 on CPU, bfloat16 on GPU), fast (bfloat16 where the hardware computes it natively, e.g. AVX512-BF16 CPUs: ~2x on CPU), float16, ...")
    gen.add_argument("--batch-size", type=int, default=S)
    gen.add_argument("--model-workers", type=int, default=S, help=MODEL_WORKERS_HELP)
    gen.add_argument("--max-new-tokens", type=int, default=S, help="default 256")
    gen.add_argument("--temperature", type=float, default=S, help="0 (default) = greedy")
    gen.add_argument("--top-p", type=float, default=S)
    gen.add_argument("--seed", type=int, default=S)
    gen.add_argument("--system", default=S, help="system prompt for every conversation")
    gen.add_argument("--no-chat-template", dest="use_chat_template", action="store_false", default=S,
                     help="feed raw prompts (base models without a chat template)")
    gen.add_argument("--trust-remote-code", action="store_true", default=S)
    gen.add_argument("--allow-pickle", action="store_true", default=S)
    gen.add_argument("--cache-dir", default=S, help="completion/verdict cache (default RUNDIR/cache); share one "
                     "across runs to reuse completions")

    j = p.add_argument_group("judges")
    j.add_argument("--judge", choices=["keyword", "openai", "local"], default=S, help="primary ASR judge "
                   "(keyword ASR is always reported too)")
    j.add_argument("--keyword-list", default=S, help="fgsn-v1 (default), gcg or jailbreakbench")
    j.add_argument("--keyword-min-words", type=int, default=S, help="length rule (default: the list's own)")
    j.add_argument("--judge-url", default=S, help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    j.add_argument("--judge-model", default=S)
    j.add_argument("--judge-key-env", default=S, help="environment variable holding the API key "
                   "(default OPENAI_API_KEY)")
    j.add_argument("--judge-timeout", type=float, default=S)
    j.add_argument("--judge-retries", type=int, default=S)
    j.add_argument("--judge-workers", type=int, default=S)
    j.add_argument("--judge-success-score", type=float, default=S, help="rubric score counted as an attack "
                   "success (default 3)")
    j.add_argument("--judge-path", default=S, help="local judge checkpoint (Llama Guard) for --judge local")

    u = p.add_argument_group("utility")
    u.add_argument("--utility-limit", type=int, default=S, help="items per reasoning-gym task (default 100)")
    u.add_argument("--utility-seed", type=int, default=S)
    st = p.add_argument_group("paired statistics")
    st.add_argument("--paired-against", action="append", metavar="NAME", default=S,
                    help=EvalOptions.model_fields["paired_against"].description + " (repeatable)")
    st.add_argument("--bootstrap-resamples", type=int, default=S,
                    help=EvalOptions.model_fields["bootstrap_resamples"].description + " (default 10000)")
    st.add_argument("--bootstrap-seed", type=int, default=S, help=EvalOptions.model_fields["bootstrap_seed"].description)
    p.add_argument("--no-report", dest="report", action="store_false", default=S,
                   help="skip writing the report (results are still returned)")
    p.set_defaults(func=run)
    return p


def command_from_args(args: argparse.Namespace) -> EvalCommand:
    ns = argparse.Namespace(**vars(args))
    extra: dict[str, Any] = {}
    for attr, key, flag in (("model_pairs", "models", "--model"), ("adapter_pairs", "adapters", "--adapter"),
                            ("system_pairs", "systems", "--system-for"), ("suffix_pairs", "suffixes", "--suffix-for")):
        if hasattr(ns, attr):
            extra[key] = parse_pairs(getattr(ns, attr), flag)
            delattr(ns, attr)
    for k, v in extra.items():
        setattr(ns, k, v)
    return options_from_args(EvalCommand, ns)


def run(args: argparse.Namespace) -> int:
    from fgsn.evaluate.api import evaluate
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
