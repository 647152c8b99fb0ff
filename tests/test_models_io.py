"""Model I/O: the safetensors reader/writer against the reference library, the registry for every
family in it, LoRA adapters read like PEFT merges them."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from fgsn.errors import InputError, IntegrityError, MismatchError
from fgsn.models.checkpoint import Checkpoint
from fgsn.models.lora import LoraAdapter
from fgsn.models.registry import architecture_for, edit_targets, supported_model_types
from fgsn.models.safetensors_io import PlannedTensor, read_header, read_tensor
from fgsn.models.trio import open_trio
from fgsn.models.writer import CheckpointWriter


def test_reader_matches_reference(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(10, dtype=torch.int64),
               "c": torch.randn(5).to(torch.bfloat16), "d": torch.zeros(0, 3)}
    save_file(tensors, tmp_path / "x.safetensors")
    infos, meta = read_header(tmp_path / "x.safetensors")
    for k, v in tensors.items():
        got = read_tensor(tmp_path / "x.safetensors", infos[k])
        assert got.dtype == v.dtype and torch.equal(got, v)


def test_streaming_writer_shards_load_in_reference(tmp_path):
    tensors = {f"t{i}": torch.randn(16, 16) for i in range(6)}
    plan = [PlannedTensor(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    w = CheckpointWriter(tmp_path, plan, max_shard_bytes=2 * 16 * 16 * 4)
    for k, v in tensors.items():
        w.write(k, v)
    w.close()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    loaded = {}
    for f in set(index["weight_map"].values()):
        loaded.update(load_file(tmp_path / f))
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_writer_refuses_out_of_plan(tmp_path):
    w = CheckpointWriter(tmp_path, [PlannedTensor("a", torch.float32, (2,))])
    with pytest.raises(RuntimeError):
        w.write("b", torch.zeros(2))


@pytest.mark.parametrize("cut", [4, 20, -8])
def test_truncated_safetensors_is_refused(tmp_path, cut):
    save_file({"a": torch.randn(8, 8)}, tmp_path / "x.safetensors")
    raw = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "x.safetensors").write_bytes(raw[:cut] if cut > 0 else raw[:cut])
    with pytest.raises(IntegrityError, match="truncated|header"):
        read_header(tmp_path / "x.safetensors")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3", "gpt2"])
def test_registry_finds_every_module(trio_factory, arch):
    paths = trio_factory(arch) if arch in ("llama", "gpt2") else None
    if paths is None:
        import tempfile
        from pathlib import Path

        from conftest import save_tiny_model

        paths = {"aligned": save_tiny_model(Path(tempfile.mkdtemp()) / arch, arch)}
    ck = Checkpoint(paths["aligned"])
    a = architecture_for(ck.config)
    n = a.num_layers(ck.config)
    targets = edit_targets(a, ck.names, n)
    assert len(targets) == n * len(a.modules)
    for t in targets:
        rows = ck.shape(t.tensor)[1] if a.transposed else ck.shape(t.tensor)[0]
        assert sum(s for _, s in a.part_sizes(t.spec, ck.config, rows)) == rows


def test_registry_covers_the_promised_families():
    for mt in ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gemma3", "phi3", "gpt2"]:
        assert mt in supported_model_types()
    with pytest.raises(InputError, match="not in the architecture registry"):
        architecture_for({"model_type": "mamba"})


def _peft_adapter(aligned, out, use_rslora=False, targets=("q_proj", "v_proj", "down_proj")):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(aligned)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), use_rslora=use_rslora, init_lora_weights=False)
    pm = get_peft_model(model, cfg)
    pm.save_pretrained(out)
    merged = pm.merge_and_unload()
    return merged


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_merge_matches_peft(llama_trio, tmp_path, rslora):
    merged = _peft_adapter(llama_trio["aligned"], tmp_path / "ad", use_rslora=rslora)
    trio = open_trio(llama_trio["aligned"], tmp_path / "ad")
    assert trio.finetuned.kind == "lora"
    sd = merged.state_dict()
    for name in trio.finetuned.adapter.lora:
        torch.testing.assert_close(trio.finetuned.get(name), sd[name], rtol=1e-5, atol=1e-6)


def test_adapter_for_another_base_is_refused(trio_factory, tmp_path):
    llama, gpt2 = trio_factory("llama"), trio_factory("gpt2")
    _peft_adapter(llama["aligned"], tmp_path / "ad")
    with pytest.raises(MismatchError, match="another base"):
        open_trio(gpt2["aligned"], tmp_path / "ad")


def test_dora_adapter_is_refused(llama_trio, tmp_path):
    _peft_adapter(llama_trio["aligned"], tmp_path / "ad")
    cfg = json.loads((tmp_path / "ad/adapter_config.json").read_text())
    cfg["use_dora"] = True
    (tmp_path / "ad/adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="DoRA"):
        LoraAdapter(tmp_path / "ad")
