"""JSONL files hold one object a line, split on "\n" only: a completion with U+2028 (which JSON
leaves unescaped with ensure_ascii=False, and `str.splitlines` breaks at) must round-trip through the
records, the completion cache and prompt files. A real bench run failed on exactly this."""

from __future__ import annotations

import json

import pytest

from fgsn.atomic import atomic_write_jsonl, jsonl_lines, read_jsonl
from fgsn.data.prompts import load_prompts
from fgsn.evaluate.cache import ShardCache

ODD = "first\u2028second\u2029third\x85fourth\x1cfifth\x0bsixth"


def test_jsonl_lines_split_on_newline_only(tmp_path):
    path = tmp_path / "rows.jsonl"
    atomic_write_jsonl(path, [{"completion": ODD}, {"completion": "plain"}])
    assert len(path.read_text(encoding="utf-8").splitlines()) > 2  # what the old reader got wrong
    assert read_jsonl(path) == [{"completion": ODD}, {"completion": "plain"}]
    assert jsonl_lines("a\r\n\nb\n") == ["a", "b"]


def test_records_with_odd_separators_load(tmp_path):
    from fgsn.artifacts.eval_run import read_records

    run = tmp_path / "run"
    (run / "models" / "m").mkdir(parents=True)
    atomic_write_jsonl(run / "models" / "m" / "records.jsonl", [{"i": 0, "completion": ODD}, {"i": 1, "completion": "x"}])
    assert [r["completion"] for r in read_records(run, "m")] == [ODD, "x"]


def test_completion_cache_keeps_odd_separators(tmp_path):
    cache = ShardCache(tmp_path / "c")
    cache.put_many({"k1": ODD, "k2": "y"})
    again = ShardCache(tmp_path / "c")
    assert again.get("k1") == ODD and again.get("k2") == "y"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".txt"])
def test_prompt_files_keep_odd_separators_inside_a_prompt(tmp_path, suffix):
    path = tmp_path / f"p{suffix}"
    text = "how do I\u2028do this"
    if suffix == ".jsonl":
        path.write_text(json.dumps({"prompt": text}, ensure_ascii=False) + "\n" + json.dumps({"prompt": "b"}) + "\n",
                        encoding="utf-8")
    elif suffix == ".csv":
        path.write_text(f'prompt\n"{text}"\n"two\nlines"\nb\n', encoding="utf-8")
    else:
        path.write_text(f"{text}\nb\n", encoding="utf-8")
    got = load_prompts(str(path)).texts
    assert got[0] == text and got[-1] == "b"
    if suffix == ".csv":
        assert got[1] == "two\nlines"
