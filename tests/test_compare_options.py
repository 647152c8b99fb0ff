"""`fgsn compare`'s nested options (fgsn.pipeline.options): every field of every section has a flag
that fills it, today's flag spellings still work, the evaluation's shared settings default to the
edits' unless given, and the old flat YAML keys are read with a deprecation warning."""

from __future__ import annotations

import typing
import warnings

import pytest

from fgsn.config import options_from_args
from fgsn.errors import ConfigError
from fgsn.pipeline.options import NOT_FOR_COMPARE, SECTIONS, SHARED, CompareOptions
from test_eval_flags import parser_for, sample

OWN = {"edit_device": ("cpu", "cpu"), "prefetch": ("2", 2)}  # values their validators accept
REQUIRED = ["--base", "B", "--aligned", "A", "--finetuned", "F", "--methods", "fgsn"]


def parse(*words: str, config=None) -> CompareOptions:
    ns = parser_for("compare").parse_args([*REQUIRED, *words, *(["--config", str(config)] if config else [])])
    return options_from_args(CompareOptions, ns, skip=("func", "config", "command", "verbose"))


def flag_of(section: str, name: str) -> str:
    if section == "eval":
        return f"--{'eval-' if name in SHARED else ''}{name.replace('_', '-')}"
    return f"--{section.replace('_', '-')}-{name.replace('_', '-')}"


def cases():
    top = [("", n) for n in CompareOptions.model_fields
           if n not in SECTIONS and n not in NOT_FOR_COMPARE and n not in ("base", "aligned", "finetuned", "methods")]
    nested = [(s, n) for s, cls in SECTIONS.items() for n in cls.model_fields
              if not (s == "eval" and n in (*NOT_FOR_COMPARE, "report"))]
    return top + nested


@pytest.mark.parametrize(("section", "name"), cases(), ids=lambda x: x or "top")
def test_every_option_of_every_section_has_a_flag_that_fills_it(section, name):
    cls = SECTIONS[section] if section else CompareOptions
    field = cls.model_fields[name]
    words, want = sample(name, field)
    literal = [a for a in typing.get_args(field.annotation) if typing.get_origin(a) is typing.Literal]
    if literal:  # an optional Literal: one of its values
        want = typing.get_args(literal[0])[-1]
        words = [words[0], want]
    if section:
        words = [flag_of(section, name), *words[1:]] if not words[0].startswith("--no-") else \
            ["--no-" + flag_of(section, name)[2:]]
    if name in OWN:
        words, want = [words[0], OWN[name][0]], OWN[name][1]
    if name == "method_options":
        words, want = ["--method-options", '{"sgdg": {"rounds": 2}}'], {"sgdg": {"rounds": 2}}
    opts = parse(*words)
    got = getattr(getattr(opts, section), name) if section else getattr(opts, name)
    assert got == want, (section, name, words, got)


def test_todays_flag_spellings_fill_the_sections():
    opts = parse("--safelora-select", "number", "--safelora-k", "5", "--resta-beta", "0.25", "--wanda-q", "0.2",
                 "--activation-match-lam", "3", "--activation-match-sequential", "--self-reminder-system", "be good",
                 "--max-new-tokens", "4", "--judge-url", "http://x/v1", "--no-cache", "--chat-template")
    assert (opts.safelora.select, opts.safelora.k, opts.resta.beta, opts.wanda.q) == ("number", 5, 0.25, 0.2)
    assert (opts.activation_match.lam, opts.activation_match.sequential) == (3.0, True)
    assert opts.self_reminder.system == "be good"
    assert (opts.eval.max_new_tokens, opts.eval.judge_url) == (4, "http://x/v1")
    assert opts.cache is False and opts.use_chat_template is True


def test_the_evaluation_shares_the_edits_settings_unless_given():
    opts = parse("--dtype", "bfloat16", "--batch-size", "4", "--device", "cpu")
    ev = opts.eval_options()
    assert (ev.dtype, ev.batch_size, ev.device) == ("bfloat16", 4, "cpu")
    opts = parse("--dtype", "bfloat16", "--batch-size", "4", "--eval-dtype", "float32", "--eval-batch-size", "64")
    assert (opts.dtype, opts.batch_size) == ("bfloat16", 4)  # the edits' probes
    ev = opts.eval_options()
    assert (ev.dtype, ev.batch_size) == ("float32", 64)
    assert parse().eval_options().model_dump() == CompareOptions(
        base="B", aligned="A", finetuned="F", methods=["fgsn"]).eval_options().model_dump()


def test_nested_yaml_and_flags_merge_flags_winning(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("eval: {max_new_tokens: 7, dtype: float32}\nsafelora: {k: 3, select: number}\ndtype: fast\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the nested form is not deprecated
        opts = parse("--safelora-k", "9", config=cfg)
    assert (opts.eval.max_new_tokens, opts.safelora.k, opts.safelora.select) == (7, 9, "number")
    assert (opts.dtype, opts.eval_options().dtype) == ("fast", "float32")


def test_old_flat_yaml_keys_still_work_with_a_deprecation_warning(tmp_path):
    flat, nested = tmp_path / "flat.yaml", tmp_path / "nested.yaml"
    flat.write_text("max_new_tokens: 7\nsafelora_k: 3\nactivation_match_lam: 2.0\nself_reminder_suffix: ' ok'\n"
                    "batch_size: 4\n")
    nested.write_text("eval: {max_new_tokens: 7}\nsafelora: {k: 3}\nactivation_match: {lam: 2.0}\n"
                      "self_reminder: {suffix: ' ok'}\nbatch_size: 4\n")
    with pytest.warns(FutureWarning, match=r"max_new_tokens -> eval\.max_new_tokens.*safelora_k -> safelora\.k"):
        old = parse(config=flat)
    assert old == parse(config=nested)
    assert old.eval_options().batch_size == 4  # a shared key stays at the top level, and the evaluation follows it
    with pytest.warns(FutureWarning):
        kw = CompareOptions(base="B", aligned="A", finetuned="F", methods=["fgsn"], resta_beta=0.25)
    assert kw.resta.beta == 0.25


def test_a_key_given_flat_and_nested_is_an_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("safelora_k: 3\nsafelora: {k: 4}\n")
    with pytest.raises(ConfigError, match=r"safelora_k is given twice"):
        parse(config=cfg)
    cfg.write_text("eval: {max_new_tokenz: 3}\n")
    with pytest.raises(ConfigError, match="max_new_tokenz"):
        parse(config=cfg)
