"""Thin command line over fgsn.api: `fgsn locate | project | activation-match | revert | eval | report | organism | demo`.

Every option can come from a YAML file (`--config run.yaml`); flags win. Errors fgsn raises on
purpose print as one line `error: ...` with exit code 2; anything else is a bug and shows its
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fgsn.config import add_option_flags, options_from_args
from fgsn.errors import FgsnError

HELPS = {
    "aligned": "aligned model folder (the safety-aligned checkpoint)",
    "finetuned": "fine-tuned model: a checkpoint folder, or a PEFT LoRA adapter folder over --aligned",
    "base": "unaligned base model folder (the safety direction is aligned - base)",
    "harmful": "harmful prompts: .jsonl/.csv/.txt or builtin:NAME[?split=..&category=..&limit=..]",
    "task": "task prompts (what the fine-tune is for), same formats",
    "benign": "benign prompts for the layer search (default: the task prompts)",
    "category": "safety dimension name for this run (continual ledger); filters --harmful to it when it "
                "matches prompt categories",
    "preset": "named settings for the options not given: paper (the published recipe, = the defaults) or "
              "frontier (snip-signed over all layers at a 10%% budget: the best fine-grained setting measured on "
              "the SmolLM2 organism; needs a backward pass)",
    "layers": "safety layers as A-B (0-based, inclusive), a list, or all; default: found by the cosine-gap search",
    "layer_eps": "relative rise that counts in the layer search",
    "modules": "target modules (e.g. q_proj); default: every linear module of the layer",
    "q": "share of weights kept as harmful-important (top-q)",
    "p": "share of weights excluded as task-important (top-p)",
    "budget": "instead of q: mask exactly this share of each module (highest harmful scores outside the task "
              "top-p), to compare scores at equal parameter budgets",
    "granularity": "weight or neuron (whole output rows)",
    "score": "importance score: wanda (the paper), wanda-delta, offsafety, snip, snip-signed, contrast, random",
    "projector": "safelora (V V^T/||V||_F) or svd (exact projector on the top singular vectors of V)",
    "rank": "svd projector: fixed rank k",
    "energy": "svd projector: smallest k holding this share of ||V||_F^2",
    "device": "cpu, cuda, cuda:N or auto",
    "dtype": "float32, bfloat16, float16, auto (float32 on CPU, bfloat16 on GPU) or fast (bfloat16 where the hardware has it)",
    "ledger": "continual ledger folder (created if missing)",
    "locate_run": "reuse layers and masks from a `fgsn locate --out RUN` folder",
    "output_format": "merged checkpoint, or adapter (LoRA input with --granularity neuron only)",
    "out": "output folder (appears only when complete)",
    "overwrite": "replace an existing --out",
    "use_chat_template": "apply the tokenizer's chat template to prompts",
    "allow_pickle": "allow .bin/.pt weights (loaded with weights_only=True)",
    "trust_remote_code": "allow model code from the checkpoint folder",
    "cache": "reuse cached probe statistics (~/.cache/fgsn/probes)",
}


def _locate(args) -> int:
    from fgsn.locate.run import LocateOptions, run_locate

    opts = options_from_args(LocateOptions, args)
    if not opts.out:
        raise FgsnError("fgsn locate needs --out RUN")
    res = run_locate(opts, out=opts.out)
    print(f"layers {res.layers[0]}-{res.layers[-1]}; {res.masked:,} weights masked in {len(res.masks)} tensors; "
          f"run saved in {opts.out}")
    return 0


def _project(args) -> int:
    from fgsn.edit.options import ProjectOptions
    from fgsn.pipeline.project import run_project

    opts = options_from_args(ProjectOptions, args)
    res = run_project(opts)
    print_manifest_summary(res.manifest, res.out)
    return 0


def print_manifest_summary(m: dict, out) -> None:
    layers = m["layers"]
    span = f"{layers[0]}-{layers[-1]}" if layers else "none"
    print(f"edited checkpoint: {out}")
    print(f"  method: fgsn ({m['options']['score']}, {m['options']['projector']}, {m['options']['granularity']}, "
          f"q={m['options']['q']}, p={m['options']['p']})")
    print(f"  layers: {span}   modules edited: {sum(1 for x in m['modules'] if x['masked'])}/{len(m['modules'])}")
    print(f"  parameters modified: {m['masked']:,} = {100 * m['modified_fraction']:.3f}% of all, "
          f"{100 * m['modified_fraction_edited']:.2f}% of the edited modules")
    for cat, c in m["categories"].items():
        print(f"  category {cat}: {c['masked']:,} new, {c['overlap']:,} already projected earlier")
    if m.get("noop"):
        print("  (no-op: this category was already applied)")


# The one table of commands: name -> (module whose `add_parser(subparsers)` defines it, the one-line
# help `fgsn --help` lists). `fgsn --help` imports none of these modules; `fgsn NAME ...` imports
# NAME's module only, so no command pays for the imports of another (and help never imports torch).
COMMANDS: dict[str, tuple[str, str]] = {
    "locate": ("fgsn.cli", "find safety layers and neuron masks; save them as a run folder"),
    "project": ("fgsn.cli", "locate and project: write the repaired checkpoint"),
    "eval": ("fgsn.evaluate.cli", "generate, judge and score models; writes RUNDIR with results and a report"),
    "report": ("fgsn.report.cli", "write results.json, report.md and report.html of an eval run folder"),
    "organism": ("fgsn.organism.cli", "build the real small model organism (base / aligned / fine-tuned SmolLM2-135M)"),
    "demo": ("fgsn.demo", "build the SmolLM2 organism, repair it with FGSN, evaluate and report"),
    "compare": ("fgsn.baselines.cli", "run FGSN, its ablations and the baselines on the same inputs; evaluate them "
                                      "side by side"),
    "baseline": ("fgsn.baselines.cli", "run one baseline (safelora, resta, wanda, irr, sgdg) and write its checkpoint"),
    "sweep": ("fgsn.sweep", "trace ASR / over-refusal / utility / NLL against the share of parameters modified, for "
                            "every score, with baselines as points"),
    "activation-match": ("fgsn.edit.activation_match_run", "repair by closed-form activation matching: each linear "
                                                           "module reproduces the aligned model on harmful inputs "
                                                           "and the fine-tune on task inputs"),
    "revert": ("fgsn.edit.cli", "iterative reversion with rollback: revert the fine-tuned entries whose return to the "
                                "aligned value lowers a safety loss, round after round"),
    "bench": ("fgsn.bench", "every method on every organism scenario, on large held-out sets"),
    "repair": ("fgsn.repair", "search the repair methods and their strength; write the cheapest edit that restores "
                              "safety and keeps the task"),
}


def add_parser(sub) -> None:
    """`fgsn locate` and `fgsn project` (their options modules are torch-free; the handlers import the stages)."""
    from fgsn.edit.options import ProjectOptions
    from fgsn.locate.options import LocateOptions

    p = sub.add_parser("locate", help=COMMANDS["locate"][1])
    p.add_argument("--config", help="YAML file with any of these options (flags win)")
    add_option_flags(p, LocateOptions, HELPS)
    p.set_defaults(func=_locate)
    p = sub.add_parser("project", help=COMMANDS["project"][1])
    p.add_argument("--config", help="YAML file with any of these options (flags win)")
    add_option_flags(p, ProjectOptions, HELPS)
    p.set_defaults(func=_project)


def build_parser(load: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command in `load` (default: all); the other commands are listed in
    `fgsn --help` with their one-line help, without importing their modules."""
    parser = argparse.ArgumentParser(prog="fgsn", description="Training-free repair of a fine-tuned LLM's safety.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = None if load is None else {COMMANDS[c][0] for c in load}  # modules define sibling commands too
    for name, (module, help_text) in COMMANDS.items():
        if name in sub.choices:
            continue  # defined by a module loaded for an earlier command
        if wanted is not None and module not in wanted:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                continue  # that stage is not installed in this build
            raise
        mod.add_parser(sub)
    return parser


def command_of(argv: list[str]) -> str | None:
    """The command named in `argv` (its first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def _version() -> str:
    from fgsn import __version__

    return f"fgsn {__version__}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = build_parser(load=[c] if (c := command_of(argv)) in COMMANDS else [])
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except FgsnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished outputs are intact, unfinished ones were not written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
