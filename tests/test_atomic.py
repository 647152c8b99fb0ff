"""fgsn.atomic: a folder published by hard links shares the files' storage, and falls back to
copies where links fail; an interrupted atomic folder write leaves the old output alone."""

from __future__ import annotations

import os

import pytest

from fgsn.atomic import atomic_dir, link_tree


def _tree(root):
    (root / "sub").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"\x00" * 64)
    (root / "sub" / "repair.json").write_text("{}")


def test_link_tree_hard_links_every_file(tmp_path):
    _tree(tmp_path / "src")
    link_tree(tmp_path / "src", tmp_path / "dst")
    for rel in ("model.safetensors", "sub/repair.json"):
        assert os.path.samefile(tmp_path / "src" / rel, tmp_path / "dst" / rel)


def test_link_tree_copies_where_links_fail(tmp_path, monkeypatch):
    _tree(tmp_path / "src")

    def refuse(*_):
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    link_tree(tmp_path / "src", tmp_path / "dst")
    dst = tmp_path / "dst" / "model.safetensors"
    assert dst.read_bytes() == b"\x00" * 64 and not os.path.samefile(tmp_path / "src" / "model.safetensors", dst)


def test_atomic_dir_keeps_the_old_output_when_the_write_fails(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "old.txt").read_text() == "old"
