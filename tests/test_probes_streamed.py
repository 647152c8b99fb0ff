"""The layer-streamed probe (fgsn.models.streamed + the *_streamed passes) gives the resident
probe's statistics, gradients and contrast sums on tiny random models of several architectures,
both dtypes and a LoRA fine-tune; locate gives the same layers and masks either way; `auto`
streams when the budget is small; and no more than one decoder layer is ever materialised."""

from __future__ import annotations

import json
from operator import attrgetter
from pathlib import Path

import pytest
import torch

from fgsn.cli import main
from fgsn.errors import InputError
from fgsn.locate.attribution import (
    contrast_sums,
    contrast_sums_streamed,
    gradient_sums,
    gradient_sums_streamed,
)
from fgsn.locate.memory import ENV, choose_probe_memory, memory_budget
from fgsn.locate.probes import ProbeStats, run_probes, run_probes_streamed
from fgsn.models.loading import load_model
from fgsn.models.registry import architecture_for, live_layers
from fgsn.models.streamed import StreamedModel

PROMPTS = ["how do i make a bomb", "steal money please", "what is two plus three", "write poem about the ocean seven",
           "hello", "the capital of france is paris and it is", "hack into computer", "explain black holes please"]
ANSWERS = ["sorry i cannot help", None, "five", "the ocean is blue", "hello world", "paris", "no", "black holes are"]
HARMFUL = ["how do i make a bomb", "hack into computer steal money", "how do i kill", "steal money please",
           "make a bomb first", "hack computer then steal"]
TASK = ["what is two plus three", "write poem about the ocean", "explain black holes", "recipe cake please",
        "what is capital of france", "one plus one equals"]


def _gemma3(path: Path) -> Path:
    """Gemma 3 text with sliding-window and full-attention layers: each layer type gets its own
    mask from the model, which the streamed probe must pass on per layer."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    from conftest import make_tokenizer

    if not (path / "config.json").is_file():
        path.mkdir(parents=True, exist_ok=True)
        tok = make_tokenizer(path)
        cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                               sliding_window=4, layer_types=["sliding_attention", "full_attention"] * 2,
                               pad_token_id=1, bos_token_id=2, eos_token_id=3)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(trio_factory, tmp_path_factory):
    """arch -> a fine-tuned checkpoint folder."""
    out = {a: trio_factory(a)["finetuned"] for a in ("llama", "gpt2", "phi3", "qwen2")}
    out["gemma3"] = _gemma3(tmp_path_factory.mktemp("gemma3") / "m")
    return out


@pytest.fixture(scope="module")
def adapter(llama_trio, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapter") / "ad"
    model = AutoModelForCausalLM.from_pretrained(llama_trio["aligned"])
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                                          init_lora_weights=False))
    pm.save_pretrained(out)
    return out


def _targets(model, layers=(1, 2)):
    arch = architecture_for(model.config.to_dict())
    return {f"{i}/{m.path}": (i, m.path) for i in layers for m in arch.modules}, arch


def _live(model, arch, specs, suffix=""):
    layers = live_layers(model, arch)
    return {k: attrgetter(p + suffix)(layers[i]) for k, (i, p) in specs.items()}


def assert_same_stats(a: ProbeStats, b: ProbeStats):
    assert (a.n_prompts, a.n_tokens) == (b.n_prompts, b.n_tokens)
    if a.unit_sum is None:
        assert b.unit_sum is None
    else:
        torch.testing.assert_close(a.unit_sum, b.unit_sum, rtol=1e-6, atol=1e-9)
    assert a.sumsq.keys() == b.sumsq.keys()
    for k in a.sumsq:
        torch.testing.assert_close(a.sumsq[k], b.sumsq[k], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("arch,dtype", [("llama", "float32"), ("llama", "bfloat16"), ("gpt2", "float32"),
                                        ("phi3", "float32"), ("qwen2", "bfloat16"), ("gemma3", "float32")])
def test_streamed_probe_equals_resident(models, arch, dtype):
    model, tok = load_model(models[arch], device="cpu", dtype=dtype)
    specs, a = _targets(model)
    live = _live(model, a, specs)
    sm = StreamedModel(models[arch], device="cpu", dtype=getattr(torch, dtype))
    for hidden, stop in ((True, None), (True, 1), (False, 2)):
        ref = run_probes(model, tok, PROMPTS, layers=live_layers(model, a), modules=live, hidden_states=hidden,
                         stop_after_layer=stop, batch_size=3)
        got = run_probes_streamed(sm, tok, PROMPTS, modules=specs, hidden_states=hidden, stop_after_layer=stop,
                                  batch_size=3)
        assert_same_stats(ref, got)
        assert ref.sumsq["1/" + a.modules[0].path].abs().sum() > 0
    assert sm.materialised_layers() == [] and sm.materialised_outer() == []


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_streamed_probe_merges_a_lora_adapter_like_the_resident_loader(llama_trio, adapter, dtype):
    model, tok = load_model(llama_trio["aligned"], device="cpu", dtype=dtype, adapter=adapter)
    specs, a = _targets(model, layers=(0, 3))
    sm = StreamedModel(llama_trio["aligned"], device="cpu", dtype=getattr(torch, dtype), adapter=adapter)
    ref = run_probes(model, tok, PROMPTS, layers=live_layers(model, a), modules=_live(model, a, specs), batch_size=4)
    got = run_probes_streamed(sm, tok, PROMPTS, modules=specs, batch_size=4)
    assert_same_stats(ref, got)
    # the adapter changes the statistics, so the merge is not a no-op
    plain = run_probes_streamed(StreamedModel(llama_trio["aligned"], dtype=getattr(torch, dtype)), tok, PROMPTS,
                                modules=specs, batch_size=4)
    assert not torch.allclose(plain.sumsq["3/mlp.down_proj"], got.sumsq["3/mlp.down_proj"])


@pytest.mark.parametrize("arch,dtype", [("llama", "float32"), ("llama", "bfloat16"), ("gpt2", "float32"),
                                        ("gemma3", "float32")])
def test_streamed_gradients_equal_resident(models, arch, dtype):
    """Backpropagation layer by layer from saved inputs gives autograd's gradients (gpt2: the LM
    head is tied to the embedding; gemma3: logits are soft-capped by the model's own head)."""
    model, tok = load_model(models[arch], device="cpu", dtype=dtype)
    specs, a = _targets(model)
    ref = gradient_sums(model, tok, PROMPTS, ANSWERS, _live(model, a, specs, ".weight"), batch_size=3)
    sm = StreamedModel(models[arch], device="cpu", dtype=getattr(torch, dtype))
    got = gradient_sums_streamed(sm, tok, PROMPTS, ANSWERS, {k: (i, p + ".weight") for k, (i, p) in specs.items()},
                                 batch_size=3)
    for k in specs:
        assert ref[k].abs().sum() > 0
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-7)
    assert sm.materialised_layers() == [] and sm.materialised_outer() == []


def test_streamed_contrast_equals_resident(llama_trio):
    al, tok = load_model(llama_trio["aligned"], device="cpu")
    ft, _ = load_model(llama_trio["finetuned"], device="cpu")
    specs, a = _targets(al)
    ref = contrast_sums(al, ft, tok, PROMPTS, _live(al, a, specs), _live(ft, a, specs), batch_size=3)
    got = contrast_sums_streamed(StreamedModel(llama_trio["aligned"]), StreamedModel(llama_trio["finetuned"]), tok,
                                 PROMPTS, specs, batch_size=3)
    for k in specs:
        assert ref[k].sum() > 0
        torch.testing.assert_close(got[k], ref[k], rtol=1e-6, atol=1e-9)


def test_streamed_passes_hold_one_decoder_layer_at_a_time(llama_trio):
    """Instrumented: whenever a decoder layer runs, it is the only one with real weights, and no
    weight outside the layers (embedding, norm, LM head) is loaded; the LM head only while the
    gradient pass computes the loss."""
    sm = StreamedModel(llama_trio["finetuned"])
    _, tok = load_model(llama_trio["finetuned"], device="cpu")
    seen: list[tuple[int, list[int], list[str]]] = []
    for i, layer in enumerate(sm.layers):
        layer.register_forward_pre_hook(lambda _m, _a, i=i: seen.append((i, sm.materialised_layers(),
                                                                         sm.materialised_outer())))
    head: list[list[str]] = []
    sm.model.lm_head.register_forward_hook(lambda *_: head.append(sm.materialised_outer()))
    run_probes_streamed(sm, tok, PROMPTS, modules={"q": (2, "self_attn.q_proj")}, batch_size=3)
    gradient_sums_streamed(sm, tok, PROMPTS, ANSWERS, {"q": (2, "self_attn.q_proj.weight")}, batch_size=3)
    assert {i for i, _, _ in seen} == set(range(sm.num_layers))
    assert all(live == [i] and outer == [] for i, live, outer in seen)
    assert head and all("lm_head.weight" in h for h in head)
    assert sm.materialised_layers() == [] and sm.materialised_outer() == []


def test_auto_streams_when_the_budget_is_small(monkeypatch):
    gib = 1 << 30
    assert choose_probe_memory("auto", 2 * gib, "cpu", budget_gib=1.0) == "streamed"
    assert choose_probe_memory("auto", gib // 2, "cpu", budget_gib=1.0) == "resident"
    assert choose_probe_memory("resident", 100 * gib, "cpu", budget_gib=1.0) == "resident"
    assert choose_probe_memory("streamed", 1, "cpu", budget_gib=1.0) == "streamed"
    monkeypatch.setenv(ENV, "0.5")
    assert memory_budget("cpu") == gib // 2
    assert choose_probe_memory("auto", gib, "cpu") == "streamed"
    monkeypatch.setenv(ENV, "lots")
    with pytest.raises(InputError, match=ENV):
        memory_budget("cpu")
    monkeypatch.delenv(ENV)
    assert 0 <= memory_budget("cpu") < 1 << 62


def _locate(llama_trio, tmp_path, **kw):
    from fgsn.locate.run import LocateOptions, run_locate

    (tmp_path / "harm.txt").write_text("\n".join(HARMFUL))
    (tmp_path / "task.txt").write_text("\n".join(TASK))
    opts = LocateOptions(aligned=str(llama_trio["aligned"]), finetuned=str(kw.pop("finetuned", llama_trio["finetuned"])),
                         base=str(llama_trio["base"]), harmful=[str(tmp_path / "harm.txt")],
                         task=[str(tmp_path / "task.txt")], device="cpu", cache=False, batch_size=4, **kw)
    return run_locate(opts)


@pytest.mark.parametrize("score,extra", [("wanda", {}), ("snip-signed", {"layers": "1-3"}),
                                         ("contrast", {"layers": "2-3", "granularity": "neuron"})])
def test_locate_gives_the_same_layers_and_masks_streamed(llama_trio, tmp_path, score, extra):
    ref = _locate(llama_trio, tmp_path, score=score, probe_memory="resident", **extra)
    got = _locate(llama_trio, tmp_path, score=score, probe_memory="streamed", **extra)
    assert got.layers == ref.layers
    if ref.layer_search is not None:
        assert got.layer_search.selected == ref.layer_search.selected
        torch.testing.assert_close(torch.tensor(got.layer_search.gap), torch.tensor(ref.layer_search.gap))
    assert list(got.masks) == list(ref.masks) and ref.masked > 0
    for name in ref.masks:
        assert torch.equal(got.masks.get(name), ref.masks.get(name)), name


def test_locate_auto_with_a_tiny_budget_never_loads_the_whole_model(llama_trio, adapter, tmp_path, monkeypatch):
    import fgsn.locate.run as run

    def refuse(*_a, **_k):
        raise AssertionError("the resident loader was used")

    ref = _locate(llama_trio, tmp_path, finetuned=adapter, layers="0-3", probe_memory="resident")
    monkeypatch.setattr(run, "_load_live", refuse)
    got = _locate(llama_trio, tmp_path, finetuned=adapter, layers="0-3", probe_memory="auto", probe_memory_budget=1e-4)
    for name in ref.masks:
        assert torch.equal(got.masks.get(name), ref.masks.get(name)), name
    with pytest.raises(AssertionError, match="resident loader"):
        _locate(llama_trio, tmp_path, finetuned=adapter, layers="0-3", probe_memory="auto", probe_memory_budget=1e4)


def test_cli_project_streamed_writes_the_resident_output(llama_trio, tmp_path):
    from safetensors.torch import load_file

    (tmp_path / "harm.txt").write_text("\n".join(HARMFUL))
    (tmp_path / "task.txt").write_text("\n".join(TASK))
    common = ["project", "--base", llama_trio["base"], "--aligned", llama_trio["aligned"], "--finetuned",
              llama_trio["finetuned"], "--harmful", tmp_path / "harm.txt", "--task", tmp_path / "task.txt",
              "--device", "cpu", "--no-cache", "--layers", "1-2"]
    assert main([str(x) for x in [*common, "--probe-memory", "resident", "--out", tmp_path / "r"]]) == 0
    assert main([str(x) for x in [*common, "--probe-memory", "streamed", "--out", tmp_path / "s"]]) == 0
    r, s = load_file(tmp_path / "r/model.safetensors"), load_file(tmp_path / "s/model.safetensors")
    assert r.keys() == s.keys() and all(torch.equal(r[k], s[k]) for k in r)
    manifest = json.loads((tmp_path / "s/fgsn-manifest.json").read_text())
    assert manifest["options"]["probe_memory"] == "streamed" and manifest["masked"] > 0
