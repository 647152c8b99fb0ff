"""The command line, in one place: `fgsn COMMAND ...` over fgsn.api and fgsn.pipeline.

One module per command (fgsn/cli/<command>.py) defines `configure(parser)` (its flags, generated
from its options' fields by fgsn.config.add_option_flags, and its handler) and may define
`DESCRIPTION`; COMMANDS below is the one table of commands. Every option can come from a YAML file
(`--config run.yaml`); flags win. Errors fgsn raises on purpose print as one line `error: ...` with
exit code 2; anything else is a bug and shows its traceback.

`fgsn --help` imports no command module; `fgsn NAME ...` imports NAME's only, so no command pays for
the imports of another, and help never imports torch (the options modules are torch-free; handlers
import the stages when they run).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fgsn.errors import FgsnError

# The one table of commands: name -> (module that configures it, the one-line help `fgsn --help` lists).
COMMANDS: dict[str, tuple[str, str]] = {
    "locate": ("fgsn.cli.locate", "find safety layers and neuron masks; save them as a run folder"),
    "project": ("fgsn.cli.project", "locate and project: write the repaired checkpoint"),
    "eval": ("fgsn.cli.evaluate", "generate, judge and score models; writes RUNDIR with results and a report"),
    "report": ("fgsn.cli.report", "write results.json, report.md and report.html of an eval run folder"),
    "organism": ("fgsn.cli.organism", "build the real small model organism (base / aligned / fine-tuned "
                                      "SmolLM2-135M)"),
    "demo": ("fgsn.cli.demo", "build the SmolLM2 organism, repair it with FGSN, evaluate and report"),
    "compare": ("fgsn.cli.compare", "run FGSN, its ablations and the baselines on the same inputs; evaluate them "
                                    "side by side"),
    "baseline": ("fgsn.cli.baseline", "run one baseline (safelora, resta, wanda, irr, sgdg) and write its "
                                      "checkpoint"),
    "sweep": ("fgsn.cli.sweep", "trace ASR / over-refusal / utility / NLL against the share of parameters modified, "
                                "for every score, with baselines as points"),
    "activation-match": ("fgsn.cli.activation_match", "repair by closed-form activation matching: each linear "
                                                      "module reproduces the aligned model on harmful inputs and the "
                                                      "fine-tune on task inputs"),
    "revert": ("fgsn.cli.revert", "iterative reversion with rollback: revert the fine-tuned entries whose return to "
                                  "the aligned value lowers a safety loss, round after round"),
    "bench": ("fgsn.cli.bench", "every method on every organism scenario, on large held-out sets"),
    "repair": ("fgsn.cli.repair", "search the repair methods and their strength; write the cheapest edit that "
                                  "restores safety and keeps the task"),
}


def build_parser(load: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command in `load` (default: all); the other commands are listed in
    `fgsn --help` with their one-line help, without importing their modules."""
    parser = argparse.ArgumentParser(prog="fgsn", description="Training-free repair of a fine-tuned LLM's safety.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if load is not None and name not in load:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=getattr(mod, "DESCRIPTION", None))
        mod.configure(p)
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
