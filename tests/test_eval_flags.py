"""`fgsn eval`'s flags are generated from its options' fields like every other command's: every
field has a flag that fills it, the old spellings still work, and the flag that data/chat.py's
error names exists in every command that applies chat templates."""

from __future__ import annotations

import argparse
import re
import typing

import pytest

from fgsn.cli import build_parser
from fgsn.errors import InputError

# values for fields whose type alone does not give a valid one
SAMPLES = {"dtype": "float16", "backend": "vllm", "judge": "openai", "models": "a=b", "judge_success_score": "4.5",
           "bootstrap_resamples": "200"}


def parser_for(command: str) -> argparse.ArgumentParser:
    parser = build_parser(load=[command])
    return next(a for a in parser._actions if a.dest == "command").choices[command]


def sample(name: str, field) -> tuple[list[str], object]:
    """(flag words that set `name`, the value the options should then hold)."""
    flag = "--" + name.replace("_", "-")
    ann = field.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    base = args[0] if args and typing.get_origin(ann) is not typing.Literal else ann
    if name in SAMPLES:
        v = SAMPLES[name]
        want = {"a": "b"} if "=" in v else float(v) if v[0].isdigit() else v
        return [flag, v], want
    if ann is bool:
        return ([f"--no-{flag[2:]}"], False) if field.default else ([flag], True)
    if typing.get_origin(ann) is typing.Literal:
        return [flag, typing.get_args(ann)[-1]], typing.get_args(ann)[-1]
    if typing.get_origin(base) is dict or typing.get_origin(ann) is dict:
        return [flag, "a=b"], {"a": "b"}
    if typing.get_origin(base) is list or typing.get_origin(ann) is list:
        return [flag, "x"], ["x"]
    if base is int:
        return [flag, "9"], 9
    if base is float:
        return [flag, "0.5"], 0.5
    return [flag, "some text"], "some text"


def test_every_eval_option_has_a_flag_that_fills_it():
    from fgsn.cli.evaluate import EvalCommand, command_from_args
    from fgsn.evaluate.options import EvalOptions

    p = parser_for("eval")
    assert set(EvalOptions.model_fields) <= set(EvalCommand.model_fields)
    for name, field in EvalCommand.model_fields.items():
        words, want = sample(name, field)
        ns = p.parse_args([*words, "--models", "a=b"] if name != "models" else words)
        got = getattr(command_from_args(ns), name)
        assert got == want, (name, words, got)


@pytest.mark.parametrize(("old", "field", "want"), [
    (["--model", "a=ckpt/a", "--model", "b=ckpt/b"], "models", {"a": "ckpt/a", "b": "ckpt/b"}),
    (["--adapter", "a=ad"], "adapters", {"a": "ad"}),
    (["--system-for", "a=be kind"], "systems", {"a": "be kind"}),
    (["--suffix-for", "a= please"], "suffixes", {"a": " please"}),
    (["--no-chat-template"], "use_chat_template", False),
    (["--no-report"], "report", False),
    (["--trust-remote-code"], "trust_remote_code", True),
    (["--batch-size", "4"], "batch_size", 4),
])
def test_old_spellings_still_work(old, field, want):
    from fgsn.cli.evaluate import command_from_args

    assert getattr(command_from_args(parser_for("eval").parse_args(old)), field) == want


def test_bad_pairs_are_input_errors():
    from fgsn.cli.evaluate import command_from_args

    p = parser_for("eval")
    with pytest.raises(InputError, match="NAME=PATH"):
        command_from_args(p.parse_args(["--model", "nopath"]))
    with pytest.raises(InputError, match="given twice"):
        command_from_args(p.parse_args(["--model", "a=x", "--model", "a=y"]))


def test_the_chat_template_error_names_a_flag_every_command_has():
    from fgsn.data.chat import render_chat

    class NoTemplate:
        name_or_path = "tok"
        chat_template = None

    with pytest.raises(InputError) as e:
        render_chat(NoTemplate(), "hello")
    flags = re.findall(r"--[a-z][a-z-]+", str(e.value))
    assert flags
    for command in ("eval", "locate", "project", "compare"):
        for flag in flags:
            ns = parser_for(command).parse_args([flag])
            assert ns.use_chat_template is False, (command, flag)


def test_compare_offers_no_flag_it_would_ignore(tmp_path):
    text = parser_for("compare").format_help()
    for flag in ("--systems", "--suffixes", "--adapters", "--system-for", "--suffix-for", "--adapter "):
        assert flag not in text
    from fgsn.errors import ConfigError
    from fgsn.pipeline.compare import Comparison
    from fgsn.pipeline.options import CompareOptions

    opts = CompareOptions(base="B", aligned="A", finetuned="F", methods=["resta"], eval={"systems": {"resta": "x"}},
                          out=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="'systems' has no meaning in fgsn compare"):
        Comparison(opts).check()
