"""The registry of edit methods (fgsn.pipeline.registry): every name `--methods` accepts builds valid
options of its method from a comparison's options, presets are what they say, and a method
registered once is known to every command that looks methods up."""

from __future__ import annotations

from pathlib import Path

import pytest

from fgsn.errors import InputError
from fgsn.locate.options import PRESETS
from fgsn.pipeline import registry
from fgsn.pipeline.compare import method_options
from fgsn.pipeline.options import CompareOptions
from fgsn.pipeline.registry import EditMethod, Method, option_class, parse_methods, variant_names


def _opts(tmp_path: Path, **kw) -> CompareOptions:
    return CompareOptions(base="B", aligned="A", finetuned="F", harmful=["h.jsonl"], task=["t.jsonl"],
                          methods=["fgsn"], out=str(tmp_path), **kw)


@pytest.mark.parametrize("name", variant_names())
def test_every_variant_builds_valid_options_of_its_method(name, tmp_path):
    m = registry.variant(name)
    if not m.edits_weights:
        with pytest.raises(InputError, match="writes no checkpoint"):
            option_class(m.kind)
        return
    d = method_options(_opts(tmp_path), m, tmp_path, num_layers=4)
    opts = option_class(m.kind)(**d)  # what the worker builds: every key is an option of the method
    assert opts.out == str(tmp_path / "models" / name) and opts.overwrite is True
    assert (opts.aligned, opts.finetuned) == ("A", "F")
    for k, v in m.overrides.items():  # the variant's preset is applied ("all" layers made explicit)
        assert getattr(opts, k) == ("0-3" if v == registry.ALL_LAYERS and m.kind == "fgsn" else v), (name, k)
    for need in m.spec.needs:  # what check() demands is what the method gets
        assert getattr(opts, need) == [f"{need[0]}.jsonl"]


def test_presets_of_fgsn_are_the_locate_presets(tmp_path):
    got = {n: option_class("fgsn")(**method_options(_opts(tmp_path, q=0.3, score="snip"), registry.variant(n),
                                                    tmp_path, 4)) for n in ("fgsn", "fgsn-paper", "fgsn-frontier")}
    assert (got["fgsn"].q, got["fgsn"].score) == (0.3, "snip")  # as given
    for name, preset in (("fgsn-paper", "paper"), ("fgsn-frontier", "frontier")):
        for k, v in PRESETS[preset].items():
            assert getattr(got[name], k) == ("0-3" if v == "all" else v), (name, k)


def test_method_options_override_compare_and_keep_out(tmp_path):
    opts = _opts(tmp_path, method_options={"resta": {"beta": 0.9, "out": "elsewhere"}})
    d = method_options(opts, registry.variant("resta"), tmp_path, 4)
    assert d["beta"] == 0.9 and d["out"] == str(tmp_path / "models" / "resta")


def test_a_registered_method_is_known_everywhere(tmp_path, monkeypatch):
    """register() is the one place a method is added: parse_methods, option_class, the runner and the
    comparison's options all find it, with no change anywhere else."""
    from fgsn.baselines.options import RestaOptions

    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    monkeypatch.setattr(registry, "_VARIANTS", dict(registry._VARIANTS))
    registry.register(EditMethod("resta-twice", "RESTA at twice the strength", RestaOptions,
                                 "fgsn.baselines.resta:run_resta", (),
                                 lambda c, over, out, n: {"aligned": c.aligned, "finetuned": c.finetuned,
                                                          "out": out, "beta": 2 * c.resta.beta, **over}),
                      variants={"resta-twice": {}, "resta-twice-dare": {"dare": 0.5}})
    ms = parse_methods(["fgsn,resta-twice-dare"])
    assert [(m.name, m.kind) for m in ms] == [("fgsn", "fgsn"), ("resta-twice-dare", "resta-twice")]
    d = method_options(_opts(tmp_path, resta={"beta": 0.25}), ms[1], tmp_path, 4)
    o = option_class("resta-twice")(**d)
    assert (o.beta, o.dare) == (0.5, 0.5)
    from fgsn.baselines.resta import run_resta

    assert registry.runner("resta-twice") is run_resta
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(EditMethod("resta-twice", "again", RestaOptions, "m:f", (), lambda *a: {}))
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(EditMethod("other", "x", RestaOptions, "m:f", (), lambda *a: {}), variants={"fgsn": {}})


def test_unknown_and_repeated_names(tmp_path):
    with pytest.raises(InputError, match="unknown method 'bogus'"):
        parse_methods(["fgsn,bogus"])
    with pytest.raises(InputError, match="twice"):
        parse_methods(["fgsn", "fgsn"])
    with pytest.raises(InputError, match="is empty"):
        parse_methods([" , "])
    with pytest.raises(InputError, match="unknown weight-editing method 'nope'"):
        option_class("nope")
    with pytest.raises(InputError, match="writes no checkpoint"):
        method_options(_opts(tmp_path), Method("self-reminder", "self-reminder"), tmp_path, 4)


def test_baselines_are_the_registered_baseline_group():
    assert [m.kind for m in registry.methods("baseline")] == ["safelora", "resta", "wanda", "irr", "sgdg"]
    assert {m.kind for m in registry.methods() if not m.edits_weights} == {"self-reminder"}
