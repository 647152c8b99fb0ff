"""`fgsn --help` and `fgsn COMMAND --help` answer without importing torch (or transformers), for
every command of the table and every sub-command: the command line imports a command's module only
when that command runs, and the options modules are torch-free. Each check runs in a fresh
interpreter and reads its `sys.modules`, so no other test's imports can hide one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = r"""
import json, sys
from fgsn.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "heavy": sorted(m for m in ("torch", "transformers", "safetensors", "numpy")
                                                   if m in sys.modules)}))
"""

NAMES = ["locate", "project", "eval", "report", "demo", "compare", "baseline", "sweep", "bench", "repair", "organism",
         "revert", "activation-match"]
BASELINES = ["safelora", "resta", "wanda", "irr", "sgdg"]
CASES = [[], *([c] for c in NAMES), ["organism", "build"], *(["baseline", b] for b in BASELINES)]


def help_run(args: list[str]) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1])


@pytest.mark.parametrize("args", CASES, ids=lambda a: " ".join(a) or "fgsn")
def test_help_does_not_import_torch(args):
    got, text = help_run(args)
    assert got["code"] == 0 and text.startswith("usage: fgsn")
    assert got["heavy"] == [] or got["heavy"] == ["numpy"], got  # numpy is cheap; torch never
    if args == ["project"]:
        assert "--locate-run" in text and "--score" in text


def test_the_cases_cover_every_command_and_baseline():
    from fgsn.cli import COMMANDS
    from fgsn.pipeline.registry import methods

    assert sorted(COMMANDS) == sorted(NAMES)
    assert [m.kind for m in methods("baseline")] == BASELINES


def test_every_command_is_in_the_table_with_its_own_help():
    """COMMANDS lists the commands the modules define, with the one-line help they give."""
    from fgsn.cli import COMMANDS, build_parser

    assert sorted(COMMANDS) == sorted(NAMES)
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    defined = {a.dest: a.help for a in sub._choices_actions}
    assert defined == {name: help_text for name, (_, help_text) in COMMANDS.items()}
    lazy = next(a for a in build_parser(load=[])._actions if a.dest == "command")
    assert {a.dest: a.help for a in lazy._choices_actions} == defined
