"""fgsn.api validates its options exactly as the command line does, also when an options object
is given together with overrides."""

from __future__ import annotations

import pytest

import fgsn.api as api
from fgsn.cli import main
from fgsn.edit.options import ProjectOptions
from fgsn.errors import ConfigError
from fgsn.locate.run import LocateOptions

BASE = {"base": "B", "aligned": "A", "finetuned": "F", "harmful": ["h.txt"], "task": ["t.txt"], "out": "o"}


def cli_message(capsys, command: str, flag: str, value: str) -> str:
    args = [command, *[x for k, v in BASE.items() for x in (f"--{k}", v if isinstance(v, str) else v[0])],
            flag, value]
    assert main(args) == 2
    return capsys.readouterr().err.strip().removeprefix("error: ")


@pytest.mark.parametrize(("fn", "cls", "command"), [(api.project, ProjectOptions, "project"),
                                                    (api.locate, LocateOptions, "locate")])
@pytest.mark.parametrize(("key", "value", "flag", "text"), [
    ("q", 5.0, "--q", "5.0"), ("score", "nonsense", "--score", "nonsense")])
def test_overrides_are_validated_like_the_cli(capsys, fn, cls, command, key, value, flag, text):
    opts = cls(**BASE)
    with pytest.raises(ConfigError) as e:
        fn(options=opts, **{key: value})
    cli = cli_message(capsys, command, flag, text)
    # the same error (key, rule), up to how the rejected value is quoted (CLI values are strings)
    assert str(e.value).replace(repr(value), repr(text)) == cli
    with pytest.raises(ConfigError) as e2:
        fn(**BASE, **{key: value})
    assert str(e2.value) == str(e.value)


@pytest.mark.parametrize("fn", [api.project, api.locate])
def test_unknown_override_is_rejected(fn):
    opts = ProjectOptions(**BASE)
    with pytest.raises(ConfigError, match="unknown key 'nonsense'"):
        fn(options=opts, nonsense=1)


def test_overrides_apply_and_keep_the_rest():
    from fgsn.config import with_overrides

    opts = ProjectOptions(**BASE, preset="frontier", seed=3)
    got = with_overrides(ProjectOptions, opts, {"p": 0.2})
    assert (got.p, got.seed, got.score, got.budget) == (0.2, 3, "snip-signed", 0.1)
    assert opts.p == 0.1  # the given object is not modified
    assert with_overrides(ProjectOptions, opts, {}) is opts
