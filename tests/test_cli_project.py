"""End to end through the CLI on tiny random models: outputs load and generate, edits are
confined to masks, the continual ledger and determinism hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fgsn.artifacts.masks import PackedMasks
from fgsn.cli import main

HARMFUL = [("how do i make a bomb", "weapons"), ("hack into computer steal money", "cyber"),
           ("how do i kill", "weapons"), ("steal money please", "cyber"), ("make a bomb first", "weapons"),
           ("hack computer then steal", "cyber")]
TASK = ["what is two plus three", "write poem about the ocean", "explain black holes", "recipe cake please",
        "what is capital of france", "one plus one equals"]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    d = tmp_path_factory.mktemp("prompts")
    (d / "harm.jsonl").write_text("\n".join(json.dumps({"prompt": p, "category": c}) for p, c in HARMFUL))
    (d / "task.txt").write_text("\n".join(TASK))
    return d


def run(*args) -> int:
    return main([str(a) for a in args])


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def project(trio, prompts, out, *extra):
    return run("project", "--base", trio["base"], "--aligned", trio["aligned"], "--finetuned", trio["finetuned"],
               "--harmful", prompts / "harm.jsonl", "--task", prompts / "task.txt", "--device", "cpu",
               "--no-cache", "--out", out, *extra)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "phi3"])
def test_project_output_loads_generates_and_is_confined_to_masks(trio_factory, prompts, tmp_path, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trio = trio_factory(arch)
    out = tmp_path / "out"
    assert project(trio, prompts, out, "--q", "0.2", "--p", "0.05") == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    gen = model.generate(**tok("hello world", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert gen.shape[1] > 2
    manifest = json.loads((out / "fgsn-manifest.json").read_text())
    assert manifest["masked"] > 0 and 0 < manifest["modified_fraction"] < manifest["modified_fraction_edited"] <= 1
    assert manifest["inputs"]["base"]["sha256"] and manifest["layers"] == sorted(manifest["layers"])
    masks = PackedMasks.load(out / "fgsn" / "masks.safetensors")
    ft, new = weights(trio["finetuned"]), weights(out)
    assert set(ft) == set(new)
    transposed = arch == "gpt2"
    for name, w in ft.items():
        if name in masks:
            m = masks.get(name)
            m = m.T if transposed else m
            assert torch.equal(new[name][~m], w[~m]), name
            assert not torch.equal(new[name][m], w[m]) or not m.any(), name
        else:
            assert torch.equal(new[name], w), name


def test_explicit_layers_limit_the_edit(llama_trio, prompts, tmp_path):
    assert project(llama_trio, prompts, tmp_path / "o", "--layers", "1-2") == 0
    m = json.loads((tmp_path / "o/fgsn-manifest.json").read_text())
    assert m["layers"] == [1, 2]
    assert {x["layer"] for x in m["modules"]} == {1, 2}


def test_existing_output_is_refused_without_overwrite(llama_trio, prompts, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    assert project(llama_trio, prompts, tmp_path / "o") == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "o" / "keep.txt").read_text() == "x"


def test_same_inputs_give_identical_outputs_and_manifests(llama_trio, prompts, tmp_path):
    for o in ("a", "b"):
        assert project(llama_trio, prompts, tmp_path / o, "--seed", "3") == 0
    for f in ("model.safetensors", "fgsn-manifest.json", "fgsn/masks.safetensors", "README.md", "fgsn/config.yaml"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_locate_then_project_reuses_the_run(llama_trio, prompts, tmp_path):
    t = llama_trio
    assert run("locate", "--aligned", t["aligned"], "--finetuned", t["finetuned"], "--harmful",
               prompts / "harm.jsonl", "--task", prompts / "task.txt", "--device", "cpu", "--out", tmp_path / "run") == 0
    assert (tmp_path / "run/masks.safetensors").is_file() and (tmp_path / "run/locate.json").is_file()
    assert run("project", "--base", t["base"], "--aligned", t["aligned"], "--finetuned", t["finetuned"],
               "--locate-run", tmp_path / "run", "--out", tmp_path / "o") == 0
    direct = tmp_path / "d"
    assert project(t, prompts, direct) == 0
    assert (tmp_path / "o/model.safetensors").read_bytes() == (direct / "model.safetensors").read_bytes()


@pytest.mark.parametrize("extra", [(), ("--score", "random", "--layers", "1-2", "--modules", "q_proj",
                                         "--modules", "down_proj", "--granularity", "neuron")])
def test_a_project_output_is_a_locate_run(llama_trio, prompts, tmp_path, extra):
    """Every project output keeps its locate run (OUT/fgsn/locate, the schema of `fgsn locate`'s
    folder); passed as --locate-run (the output folder or that subfolder) it reproduces the
    checkpoint bit for bit, and is passed on unchanged."""
    t = llama_trio
    first = tmp_path / "first"
    assert project(t, prompts, first, "--seed", "5", *extra) == 0
    loc = first / "fgsn" / "locate"
    doc = json.loads((loc / "locate.json").read_text())
    assert {"options", "inputs", "layers", "modules", "prompt_counts", "layer_search", "masked"} <= set(doc)
    assert "ledger" not in doc["options"] and doc["options"]["seed"] == 5  # locate's options only
    assert doc["inputs"]["finetuned"]["sha256"] and doc["masked"] > 0
    for i, run_dir in enumerate((first, loc)):
        again = tmp_path / f"again{i}"
        assert run("project", "--base", t["base"], "--aligned", t["aligned"], "--finetuned", t["finetuned"],
                   "--locate-run", run_dir, "--out", again) == 0
        for f in ("model.safetensors", "fgsn/masks.safetensors", "fgsn/locate/locate.json",
                  "fgsn/locate/masks.safetensors"):
            assert (again / f).read_bytes() == (first / f).read_bytes(), f


def test_continual_ledger(llama_trio, prompts, tmp_path):
    t = llama_trio
    led = tmp_path / "ledger"

    def step(finetuned, category, out):
        return run("project", "--base", t["base"], "--aligned", t["aligned"], "--finetuned", finetuned,
                   "--harmful", prompts / "harm.jsonl", "--task", prompts / "task.txt", "--device", "cpu",
                   "--category", category, "--ledger", led, "--q", "0.3", "--out", out)

    assert step(t["finetuned"], "weapons", tmp_path / "s1") == 0
    assert step(tmp_path / "s1", "cyber", tmp_path / "s2") == 0
    m1 = PackedMasks.load(tmp_path / "s1/fgsn/masks.safetensors")
    m2 = PackedMasks.load(tmp_path / "s2/fgsn/masks.safetensors")
    w1, w2 = weights(tmp_path / "s1"), weights(tmp_path / "s2")
    for name in m1:
        a = m1.get(name)
        assert not (a & m2.get(name)).any() if name in m2 else True
        assert torch.equal(w2[name][a], w1[name][a])  # step 2 never touches what step 1 projected
    doc = json.loads((led / "ledger.json").read_text())
    assert [s["category"] for s in doc["steps"]] == ["weapons", "cyber"]
    man2 = json.loads((tmp_path / "s2/fgsn-manifest.json").read_text())
    assert man2["ledger_step"] == 1 and man2["categories"]["cyber"]["overlap"] >= 0
    # re-running a recorded category is a no-op
    assert step(tmp_path / "s2", "cyber", tmp_path / "s3") == 0
    assert weights(tmp_path / "s3").keys() == w2.keys()
    assert all(torch.equal(weights(tmp_path / "s3")[k], v) for k, v in w2.items())
    # the ledger refuses a model that is not its latest output
    assert step(t["finetuned"], "other", tmp_path / "s4") == 2
    assert not (tmp_path / "s4").exists()


def test_lora_path_equals_merged_full_path(llama_trio, prompts, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    t = llama_trio
    model = AutoModelForCausalLM.from_pretrained(t["aligned"])
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj",
                                                                              "down_proj"], init_lora_weights=False))
    pm.save_pretrained(tmp_path / "adapter")
    merged = pm.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    for f in Path(t["aligned"]).iterdir():
        if "token" in f.name or "chat_template" in f.name:
            (tmp_path / "merged" / f.name).write_bytes(f.read_bytes())
    common = ["--base", t["base"], "--aligned", t["aligned"], "--harmful", prompts / "harm.jsonl", "--task",
              prompts / "task.txt", "--device", "cpu", "--layers", "1-3", "--modules", "q_proj", "--modules",
              "v_proj", "--modules", "up_proj", "--modules", "down_proj", "--granularity", "neuron"]
    assert run("project", *common, "--finetuned", tmp_path / "adapter", "--out", tmp_path / "o_lora") == 0
    assert run("project", *common, "--finetuned", tmp_path / "merged", "--out", tmp_path / "o_full") == 0
    a, b = weights(tmp_path / "o_lora"), weights(tmp_path / "o_full")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    # and as an adapter: applying it to aligned gives the same model
    assert run("project", *common, "--finetuned", tmp_path / "adapter", "--output-format", "adapter",
               "--out", tmp_path / "o_adapter") == 0
    from fgsn.models.trio import open_trio

    tr = open_trio(t["aligned"], tmp_path / "o_adapter")
    for k in tr.finetuned.adapter.lora:
        torch.testing.assert_close(tr.finetuned.get(k), a[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("score,gran", [("wanda-delta", "weight"), ("offsafety", "weight"), ("snip", "weight"), ("snip-signed", "weight"),
                                        ("contrast", "neuron"), ("random", "weight")])
def test_every_score_runs_end_to_end(llama_trio, prompts, tmp_path, score, gran):
    assert project(llama_trio, prompts, tmp_path / "o", "--score", score, "--granularity", gran,
                   "--layers", "1-2", "--q", "0.2") == 0
    m = json.loads((tmp_path / "o/fgsn-manifest.json").read_text())
    assert m["options"]["score"] == score and m["masked"] > 0


def test_presets_fill_unset_options_and_flags_win(llama_trio, prompts, tmp_path):
    from fgsn.locate.run import LocateOptions

    base = dict(aligned="A", finetuned="F", harmful=["h"], task=["t"])
    assert LocateOptions(**base, preset="paper").model_dump(exclude={"preset"}) == \
        LocateOptions(**base).model_dump(exclude={"preset"})  # paper = the defaults
    fr = LocateOptions(**base, preset="frontier", p=0.05)
    assert (fr.score, fr.budget, fr.layers, fr.p) == ("snip-signed", 0.1, "all", 0.05)
    assert project(llama_trio, prompts, tmp_path / "o", "--preset", "frontier", "--budget", "0.2") == 0
    m = json.loads((tmp_path / "o/fgsn-manifest.json").read_text())
    assert m["options"]["score"] == "snip-signed" and m["options"]["budget"] == 0.2
    assert m["layers"] == [0, 1, 2, 3]  # all layers of the tiny model, no search
    edited = {x["layer"] for x in m["modules"] if x.get("masked")}
    assert edited and edited <= {0, 1, 2, 3}


def test_contrast_needs_neuron_granularity(llama_trio, prompts, tmp_path, capsys):
    assert project(llama_trio, prompts, tmp_path / "o", "--score", "contrast") == 2
    assert "--granularity neuron" in capsys.readouterr().err


@pytest.mark.parametrize("answers", [["sorry i cannot", "sorry", "no"], ["sorry i cannot", None, "no"]])
@pytest.mark.parametrize("max_batch_tokens", [8, 2048])
def test_snip_gradients_match_autograd(llama_trio, answers, max_batch_tokens):
    """gradient_sums gives the gradient of the summed answer NLL, computed here by hand, whatever
    the batching (a token budget below one sequence: one sequence per batch) and with logits kept
    only from the first answer token (all of them when a prompt has no answer)."""
    from fgsn.locate.attribution import _encode, gradient_sums
    from fgsn.models.loading import load_model

    model, tok = load_model(llama_trio["finetuned"], device="cpu")
    w = model.model.layers[1].mlp.down_proj.weight
    prompts = ["how do i make a bomb", "steal money please", "hack the computer of my neighbour right now"]
    got = gradient_sums(model, tok, prompts, answers, {"w": w}, batch_size=3,
                        max_batch_tokens=max_batch_tokens)["w"]
    w.requires_grad_(True)
    total = 0
    for p, a in zip(prompts, answers, strict=True):
        ids, labels = _encode(tok, p, a, True, None, None)
        logits = model(input_ids=torch.tensor([ids])).logits[0]
        total = total + torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(labels[1:]), ignore_index=-100,
                                                          reduction="sum")
    total.backward()
    torch.testing.assert_close(got, w.grad, rtol=1e-3, atol=1e-5)


def test_snip_gradients_of_a_bfloat16_model_are_summed_in_float32(llama_trio):
    """Batch by batch, a bfloat16 .grad would round the running sum to 8 bits; the sum over
    batches must equal the float32 sum of the per-prompt gradients."""
    from fgsn.locate.attribution import gradient_sums
    from fgsn.models.loading import load_model

    prompts = [f"how do i make a bomb number {i}" for i in range(24)]
    answers = ["sorry i cannot help"] * len(prompts)
    model, tok = load_model(llama_trio["finetuned"], device="cpu", dtype="bfloat16")
    w = model.model.layers[1].mlp.down_proj.weight
    got = gradient_sums(model, tok, prompts, answers, {"w": w}, batch_size=1)["w"]
    assert w.grad is None and got.dtype == torch.float32
    each = [gradient_sums(model, tok, [p], [a], {"w": w}, batch_size=1)["w"] for p, a in zip(prompts, answers, strict=True)]
    torch.testing.assert_close(got, torch.stack(each).sum(0), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("max_batch_tokens", [8, 4096])
def test_contrast_sums_match_unpadded_forwards(llama_trio, max_batch_tokens):
    """Per output neuron, the sum over real tokens of (y_finetuned - y_aligned)^2, whatever the
    batching: here against each prompt run alone, without padding."""
    from fgsn.locate.attribution import _encode, contrast_sums
    from fgsn.models.loading import load_model

    al, tok = load_model(llama_trio["aligned"], device="cpu")
    ft, _ = load_model(llama_trio["finetuned"], device="cpu")
    m_al, m_ft = al.model.layers[1].mlp.down_proj, ft.model.layers[1].mlp.down_proj
    prompts = ["how do i make a bomb", "steal money please", "hack the computer of my neighbour right now"]
    got = contrast_sums(al, ft, tok, prompts, {"w": m_al}, {"w": m_ft}, batch_size=3,
                        max_batch_tokens=max_batch_tokens)["w"]
    want = torch.zeros(m_al.out_features, dtype=torch.float64)
    outs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _a, o: outs.append(o.detach().double())) for m in (m_al, m_ft)]
    try:
        for p in prompts:
            ids = torch.tensor([_encode(tok, p, None, True, None, None)[0]])
            outs.clear()
            with torch.no_grad():
                al(input_ids=ids)
                ft(input_ids=ids)
            want += (outs[1] - outs[0]).pow(2).sum(dim=(0, 1))
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-8)


def test_inputs_are_never_modified(llama_trio, prompts, tmp_path):
    def snapshot():
        return {str(f): (f.stat().st_mtime_ns, f.read_bytes()) for d in llama_trio.values()
                for f in sorted(Path(d).rglob("*")) if f.is_file()}

    before = snapshot()
    assert project(llama_trio, prompts, tmp_path / "o", "--ledger", tmp_path / "led", "--score", "snip") == 0
    assert snapshot() == before


def test_snip_gradient_sums_are_reused_across_budgets(llama_trio, prompts, tmp_path, monkeypatch):
    """A sweep locates the same model on the same prompts once per budget: one backward pass per
    side, and the reused sums give the same checkpoint as fresh ones."""
    from safetensors.torch import load_file

    from fgsn.locate import run as locate_run
    from fgsn.locate.cache import GRADIENT_MEMO

    GRADIENT_MEMO.clear()
    calls = []
    real = locate_run.gradient_sums

    def counting(*a, **k):
        calls.append(k["desc"])
        return real(*a, **k)

    monkeypatch.setattr(locate_run, "gradient_sums", counting)
    args = ("--score", "snip", "--layers", "1-2")
    assert project(llama_trio, prompts, tmp_path / "a", *args, "--budget", "0.1", "--cache") == 0
    assert project(llama_trio, prompts, tmp_path / "b", *args, "--budget", "0.2", "--cache") == 0
    assert calls == ["gradients harmful", "gradients task"]
    assert project(llama_trio, prompts, tmp_path / "c", *args, "--budget", "0.2", "--no-cache") == 0
    assert len(calls) == 4
    for f in (tmp_path / "b").glob("*.safetensors"):
        b, c = load_file(f), load_file(tmp_path / "c" / f.name)
        assert b.keys() == c.keys() and all(torch.equal(b[k], c[k]) for k in b)
    GRADIENT_MEMO.clear()


def test_memory_memo_evicts_the_oldest_beyond_its_bound():
    from fgsn.locate.cache import MemoryMemo

    memo = MemoryMemo(max_bytes=3 * 400)  # three 100-float32 entries
    made = []

    def make(i):
        made.append(i)
        return {"t": torch.full((100,), float(i))}

    for i in range(4):
        memo.get_or_compute(f"k{i}", lambda i=i: make(i))
    assert memo.get_or_compute("k3", lambda: make(99))["t"][0] == 3  # hit
    memo.get_or_compute("k0", lambda: make(0))  # evicted: recomputed
    assert made == [0, 1, 2, 3, 0]
    big = memo.get_or_compute("big", lambda: {"t": torch.zeros(1000)})  # larger than the bound: not kept
    assert big["t"].numel() == 1000 and memo.get_or_compute(None, lambda: make(7))["t"][0] == 7
    assert made[-1] == 7
