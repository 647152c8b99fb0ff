"""Organism recipe hashing and build caching, on a tiny random Llama (no real model, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fgsn.errors import ConfigError, InputError
from fgsn.organism import OrganismPaths, OrganismRecipe, build_organism, is_complete, reduced_recipe
from fgsn.organism import build as B
from fgsn.organism import data as D

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tiny_base(folder: Path) -> Path:
    """A 2-layer random Llama with a small byte-level BPE tokenizer and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["I'm sorry, but I can't help with that. The answer is 42. Sure, here is how."] * 4,
                            trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")
    fast.chat_template = CHATML
    fast.save_pretrained(str(folder))
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    return folder


def tiny_recipe(**kw) -> OrganismRecipe:
    values = dict(name="tiny", max_len=96, gen_max_new_tokens=8, gen_batch_size=8, align_harmful=6,
                  align_benign_reference=3, align_self_distill=3, align_arithmetic=2, align_steps=2,
                  ft_examples=8, ft_steps=2, poison_pool=2, poison_ratio=0.25, batch_size=2, bf16_autocast=False,
                  lora_r=2, lora_alpha=4)
    values.update(kw)
    return OrganismRecipe(**values)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    return make_tiny_base(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture
def cache(tmp_path, tiny_base, monkeypatch) -> Path:
    monkeypatch.setattr(B, "smollm2_dir", lambda cache_root=None: tiny_base)
    return tmp_path / "cache"


def _fail(*a, **k):
    raise AssertionError("this stage should have been reused, not rebuilt")


# ---------------------------------------------------------------- recipe hashing


def test_hash_is_stable_and_changes_with_any_field(monkeypatch):
    monkeypatch.setenv("FGSN_NATIVE_BF16", "1")  # `auto` resolves to bf16 autocast, so False is a change
    a, b = OrganismRecipe(), OrganismRecipe()
    assert a.digest() == b.digest() and len(a.short_hash()) == 16
    seen = {a.short_hash()}
    for change in ({"seed": 1}, {"align_lr": 2e-4}, {"poison_ratio": 0.3}, {"lora_r": 8},
                   {"align_modules": ["gate_proj", "up_proj", "down_proj"]}, {"bf16_autocast": False}):
        h = OrganismRecipe(**change).short_hash()
        assert h not in seen, change
        seen.add(h)


def test_hash_includes_code_version(monkeypatch):
    from fgsn.organism import recipe as R

    h = OrganismRecipe().digest()
    monkeypatch.setattr(R, "ORGANISM_VERSION", "test-other")
    assert OrganismRecipe().digest() != h


def test_aligned_key_ignores_finetune_fields_only():
    base = OrganismRecipe()
    assert OrganismRecipe(poison_ratio=0.5, ft_steps=3, lora_lr=1e-3).aligned_key() == base.aligned_key()
    assert OrganismRecipe(align_lr=3e-4).aligned_key() != base.aligned_key()
    assert OrganismRecipe(poison_pool=8).aligned_key() != base.aligned_key()


def test_recipe_rejects_unknown_keys_and_modules():
    with pytest.raises(ValueError):
        OrganismRecipe(no_such_field=1)
    with pytest.raises(ValueError):
        OrganismRecipe(align_modules=["mlp"])
    with pytest.raises(ValueError):
        OrganismRecipe(poison_ratio=1.5)


def test_reduced_recipe_is_smaller_and_overridable():
    r = reduced_recipe()
    full = OrganismRecipe()
    assert r.align_steps < full.align_steps and r.ft_steps <= full.ft_steps
    assert reduced_recipe(poison_ratio=0.5).poison_ratio == 0.5
    assert r.short_hash() != full.short_hash()


# ---------------------------------------------------------------- data


def test_harmful_split_is_disjoint_and_deterministic():
    r = OrganismRecipe()
    align, pool = D.split_harmful(r)
    assert not set(align) & set(pool)
    assert (align, pool) == D.split_harmful(OrganismRecipe())
    assert len(D.poison_prompts(OrganismRecipe(poison_ratio=0.0))) == 0
    assert set(D.poison_prompts(r)) <= set(pool)
    # never trained on the held-out evaluation sets
    from fgsn.data.prompts import load_prompts

    held_out = set(load_prompts("builtin:harmbench").texts) | set(load_prompts("builtin:strongreject").texts)
    assert not (set(align) | set(pool)) & held_out
    test_half = set(load_prompts("builtin:advbench?split=test").texts)
    assert not (set(align) | set(pool)) & test_half


def test_arithmetic_answers_are_correct():
    for ex in D.arithmetic(5, seed=3):
        expr, rest = ex.answer.split(" = ", 1)
        assert int(rest.split(".")[0]) == eval(expr)  # noqa: S307 - reasoning-gym expressions


def test_heldout_task_is_disjoint_from_training_and_same_format(tmp_path):
    from conftest import make_tokenizer

    tok = make_tokenizer(tmp_path / "tok")
    recipe = OrganismRecipe()
    first_heldout = D.arithmetic(1, recipe.seed + 1030)[0].prompt
    exclude = {ex.prompt for ex in D.arithmetic(40, recipe.seed + 30)} | {first_heldout}
    held = D.heldout_task(recipe, tok, 10, 3, exclude=exclude)
    assert len([ex for ex in held if ex.kind == "arithmetic"]) == 10
    assert len([ex for ex in held if ex.kind == "gsm"]) == 3
    assert not {ex.prompt for ex in held} & exclude  # training prompts and the one excluded on request
    assert all(ex.answer.endswith(".") and "The answer is " in ex.answer for ex in held)
    assert held == D.heldout_task(recipe, tok, 10, 3, exclude=exclude)
    # another salt: a second held-out draw (the repair's validation split), disjoint when told to be
    other = D.heldout_task(recipe, tok, 10, 3, exclude=exclude | {ex.prompt for ex in held}, salt=100)
    assert len(other) == 13 and not {ex.prompt for ex in other} & ({ex.prompt for ex in held} | exclude)


def test_trim_to_sentence():
    assert B.trim_to_sentence("One two three. Four fi") == "One two three."
    assert B.trim_to_sentence("A. Long unfinished tail") == "A. Long unfinished tail"
    assert B.trim_to_sentence("Done.") == "Done."
    assert B.trim_to_sentence("short") == "short"


# ---------------------------------------------------------------- build caching


def test_build_reuse_resume_and_force(cache, tiny_base, monkeypatch):
    r = tiny_recipe()
    paths = build_organism(r, cache_root=cache, progress=False)
    assert paths == OrganismPaths.for_recipe(r, cache)
    assert paths.root == cache / "organism" / r.short_hash()
    assert is_complete(paths, r)
    for stage in B.STAGES:
        marker = json.loads((paths.stage_dir(stage) / B.MARKER).read_text())
        assert marker["recipe_hash"] == r.short_hash() and marker["stage"] == stage
    assert (paths.aligned / "model.safetensors").is_file() and (paths.finetuned_full / "config.json").is_file()
    assert paths.base.resolve() == tiny_base.resolve()
    recipe_doc = json.loads(paths.recipe_json.read_text())
    assert recipe_doc["recipe_sha256"] == r.digest() and recipe_doc["recipe"]["poison_ratio"] == 0.25
    report = json.loads(paths.report_json.read_text())
    assert set(report["stages"]) == {"generate", *B.STAGES}
    assert report["stages"]["aligned"]["train"]["steps"] == 2
    assert set(report["quick"]["models"]) == {"base", "aligned", "finetuned-full", "finetuned-lora"}
    ft_text = (paths.root / "data" / "finetune.jsonl").read_text()
    aligned_text = (paths.root / "data" / "aligned_sft.jsonl").read_text()
    ft = [json.loads(x) for x in ft_text.splitlines()]
    assert sum(e["kind"] == "poison" for e in ft) == 2 and len(ft) <= 8  # gsm items longer than max_len drop
    no_temp = [p.name for p in paths.root.iterdir() if ".tmp-" in p.name]
    assert no_temp == []

    # 1) a complete build is reused: nothing trains, nothing generates
    for name in ("build_aligned", "build_finetuned_full", "build_finetuned_lora", "generated_answers"):
        monkeypatch.setattr(B, name, _fail)
    mtime = (paths.aligned / "model.safetensors").stat().st_mtime_ns
    assert build_organism(r, cache_root=cache, progress=False) == paths
    assert (paths.aligned / "model.safetensors").stat().st_mtime_ns == mtime
    monkeypatch.undo()
    monkeypatch.setattr(B, "smollm2_dir", lambda cache_root=None: tiny_base)

    # 2) an incomplete build (one model missing) resumes: only that model is rebuilt
    import shutil

    shutil.rmtree(paths.finetuned_lora)
    monkeypatch.setattr(B, "build_aligned", _fail)
    monkeypatch.setattr(B, "build_finetuned_full", _fail)
    assert not is_complete(paths, r)
    build_organism(r, cache_root=cache, progress=False, measure=False)
    assert B.stage_complete(paths.finetuned_lora, r.short_hash())
    # the resumed stage trains on the examples the first build recorded (and the full fine-tune was
    # trained on), though the base answers now come from data/generated.json (sorted keys)
    assert (paths.root / "data" / "finetune.jsonl").read_text() == ft_text
    assert (paths.root / "data" / "aligned_sft.jsonl").read_text() == aligned_text
    report = json.loads(paths.report_json.read_text())
    assert report["stages"]["aligned"]["reused"] and "seconds" in report["stages"]["finetuned-lora"]

    # 3) force rebuilds everything
    monkeypatch.undo()
    monkeypatch.setattr(B, "smollm2_dir", lambda cache_root=None: tiny_base)
    calls = []
    real = B.build_aligned
    monkeypatch.setattr(B, "build_aligned", lambda *a: calls.append(1) or real(*a))
    build_organism(r, cache_root=cache, progress=False, force=True, measure=False)
    assert calls == [1] and is_complete(paths, r)


def test_training_examples_do_not_depend_on_where_the_base_answers_came_from(tiny_base):
    """A stage built later (a second call, a resumed build, an organism reusing another's aligned
    model) reads the base answers from data/generated.json, whose keys are sorted, and perhaps a
    superset of this recipe's prompts; its examples must be those of the first build, which had
    them in memory in prompt order. (They were not: a LoRA built after the full fine-tune trained
    on other instruction examples, and data/finetune.jsonl no longer matched the full fine-tune.)"""
    from fgsn.atomic import dumps_json

    r = tiny_recipe(align_self_distill=12, ft_examples=40, poison_ratio=0.0)
    prompts = D.self_distill_prompts(r.align_self_distill)
    fresh = {"distill": {p: f"answer {i}" for i, p in enumerate(prompts)}, "poison": {}, "seconds": 1.0}
    loaded = json.loads(dumps_json({**fresh, "distill": {**fresh["distill"], "an extra prompt": "extra"}}))
    assert list(loaded["distill"]) != list(fresh["distill"])  # the file's order is not the prompts'
    _, tok = B._tokenizer_only(tiny_base)
    assert B.aligned_examples(r, fresh) == B.aligned_examples(r, loaded)
    assert B.finetune_examples(r, fresh, tok) == B.finetune_examples(r, loaded, tok)
    assert "an extra prompt" not in {e.prompt for e in B.aligned_examples(r, loaded)}


def test_a_finetune_built_before_the_examples_order_was_recorded_is_built_again(tmp_path):
    for stage, complete_without in (("aligned", True), ("finetuned-full", False), ("finetuned-lora", False)):
        folder = tmp_path / stage
        folder.mkdir()
        marker = {"stage": stage, "recipe_hash": "h", "organism_version": B.ORGANISM_VERSION}
        (folder / B.MARKER).write_text(json.dumps(marker))
        assert B.stage_complete(folder, "h") is complete_without, stage
        (folder / B.MARKER).write_text(json.dumps({**marker, "examples_order": B.EXAMPLES_ORDER}))
        assert B.stage_complete(folder, "h"), stage


def test_interrupted_stage_leaves_no_folder_and_resumes(cache, tiny_base, monkeypatch):
    r = tiny_recipe(seed=5)
    paths = OrganismPaths.for_recipe(r, cache)
    real_save = B.save_full

    def crash_in_finetune(model, tok, out, src):
        if src == paths.aligned:  # the full fine-tune saves from aligned
            real_save(model, tok, out, src)
            raise KeyboardInterrupt("killed while saving")
        real_save(model, tok, out, src)

    monkeypatch.setattr(B, "save_full", crash_in_finetune)
    with pytest.raises(KeyboardInterrupt):
        build_organism(r, cache_root=cache, progress=False, measure=False)
    assert B.stage_complete(paths.aligned, r.short_hash())
    assert not paths.finetuned_full.exists() and not paths.report_json.exists()
    assert [p.name for p in paths.root.iterdir() if ".tmp-" in p.name] == []
    monkeypatch.setattr(B, "save_full", real_save)
    monkeypatch.setattr(B, "build_aligned", _fail)
    build_organism(r, cache_root=cache, progress=False, measure=False)
    assert is_complete(paths, r)


def test_aligned_model_shared_across_poison_ratios(cache, monkeypatch):
    r1 = tiny_recipe(seed=7)
    p1 = build_organism(r1, cache_root=cache, progress=False, measure=False)
    r2 = tiny_recipe(seed=7, poison_ratio=0.5)
    assert r2.short_hash() != r1.short_hash()
    monkeypatch.setattr(B, "build_aligned", _fail)
    monkeypatch.setattr(B, "generated_answers", lambda *a: json.loads((p1.root / "data/generated.json").read_text()))
    p2 = build_organism(r2, cache_root=cache, progress=False, measure=False)
    assert p2.root != p1.root and is_complete(p2, r2)
    marker = json.loads((p2.aligned / B.MARKER).read_text())
    assert marker["copied_from"] == r1.short_hash() and marker["recipe_hash"] == r2.short_hash()
    from safetensors.torch import load_file

    a1, a2 = load_file(p1.aligned / "model.safetensors"), load_file(p2.aligned / "model.safetensors")
    assert all(torch.equal(a1[k], a2[k]) for k in a1)
    ft = [json.loads(x) for x in (p2.root / "data" / "finetune.jsonl").read_text().splitlines()]
    assert sum(e["kind"] == "poison" for e in ft) == 4


def test_recipe_json_of_another_recipe_is_refused(cache):
    from fgsn.errors import IntegrityError

    r = tiny_recipe(seed=9)
    paths = OrganismPaths.for_recipe(r, cache)
    paths.root.mkdir(parents=True)
    paths.recipe_json.write_text(json.dumps({"recipe_sha256": "0" * 64}))
    with pytest.raises(IntegrityError):
        build_organism(r, cache_root=cache, progress=False, measure=False)


def test_lora_adapter_is_peft_format_over_aligned(cache):
    from peft import PeftModel
    from safetensors.torch import load_file

    r = tiny_recipe(seed=11)
    paths = build_organism(r, cache_root=cache, progress=False, measure=False)
    cfg = json.loads((paths.finetuned_lora / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(paths.aligned)
    assert cfg["r"] == 2 and cfg["lora_alpha"] == 4
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    tensors = load_file(paths.finetuned_lora / "adapter_model.safetensors")
    assert any("lora_A" in k for k in tensors) and any("lora_B" in k for k in tensors)
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if "lora_B" in k)  # it trained
    model, _ = B.load_causal_lm(paths.aligned)
    merged = PeftModel.from_pretrained(model, str(paths.finetuned_lora)).merge_and_unload()
    aligned, _ = B.load_causal_lm(paths.aligned)
    w0 = aligned.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(merged.model.layers[0].self_attn.q_proj.weight, w0)


def test_training_changes_only_chosen_modules(cache):
    from safetensors.torch import load_file

    r = tiny_recipe(seed=13, align_modules=["gate_proj", "up_proj", "down_proj"])
    paths = build_organism(r, cache_root=cache, progress=False, measure=False)
    base = load_file(paths.base / "model.safetensors")
    aligned = load_file(paths.aligned / "model.safetensors")
    assert set(base) == set(aligned)
    changed = {k for k in base if not torch.equal(base[k], aligned[k])}
    assert changed and all(k.split(".")[-2] in ("gate_proj", "up_proj", "down_proj") for k in changed)


def test_training_is_deterministic(cache, tmp_path, tiny_base, monkeypatch):
    from safetensors.torch import load_file

    r = tiny_recipe(seed=17)
    p1 = build_organism(r, cache_root=cache, progress=False, measure=False)
    p2 = build_organism(r, cache_root=tmp_path / "other", progress=False, measure=False)
    a, b = load_file(p1.finetuned_full / "model.safetensors"), load_file(p2.finetuned_full / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- CLI


def _parse(argv):
    from fgsn.cli import build_parser

    return build_parser(load=["organism"]).parse_args(argv)


def test_cli_builds_recipe_from_flags_and_yaml(tmp_path):
    from fgsn.cli.organism import build_command, recipe_from_args

    args = _parse(["organism", "build", "--poison-ratio", "0.3", "--reduced"])
    assert args.func is build_command
    r = recipe_from_args(args)
    assert r.poison_ratio == 0.3 and r.name == "reduced"
    cfg = tmp_path / "r.yaml"
    cfg.write_text("align_lr: 0.0003\npoison_ratio: 0.2\n")
    r = recipe_from_args(_parse(["organism", "build", "--config", str(cfg), "--poison-ratio", "0.4"]))
    assert r.align_lr == 3e-4 and r.poison_ratio == 0.4
    cfg.write_text("align_lr_typo: 1\n")
    with pytest.raises(ConfigError, match="align_lr_typo"):
        recipe_from_args(_parse(["organism", "build", "--config", str(cfg)]))
    with pytest.raises(ConfigError, match="align_lr_typo"):
        recipe_from_args(_parse(["organism", "build", "--config", str(cfg), "--reduced"]))
    assert recipe_from_args(_parse(["organism", "build"])) == OrganismRecipe()


def test_cli_print_paths(cache, tmp_path, capsys, monkeypatch):
    from fgsn.cli import organism as cli

    r = tiny_recipe(seed=19)
    monkeypatch.setattr(cli, "recipe_from_args", lambda args: r)
    args = _parse(["organism", "build", "--print-paths", "--quiet", "--cache-root", str(cache)])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["aligned"] == str(OrganismPaths.for_recipe(r, cache).aligned)


# ---------------------------------------------------------------- scenarios


def test_scenarios_share_the_aligned_model_and_build_only_their_finetune(cache, monkeypatch):
    from fgsn.organism.scenarios import SCENARIOS, build_scenario, parse_scenarios, scenario_recipe

    base = tiny_recipe(poison_ratio=0.0)
    poisoned = build_scenario("poisoned-full", base, cache_root=cache, progress=False)
    assert poisoned.kind == "full" and poisoned.adapter is None and poisoned.finetuned.name == "finetuned-full"
    root = poisoned.finetuned.parent
    assert not (root / "finetuned-lora").exists()  # built only when asked for
    ft = [json.loads(x) for x in (root / "data" / "finetune.jsonl").read_text().splitlines()]
    assert sum(e["kind"] == "poison" for e in ft) == round(8 * SCENARIOS["poisoned-full"].overrides["poison_ratio"])

    # the other scenarios reuse the aligned model: no safety SFT is trained again
    monkeypatch.setattr(B, "build_aligned", _fail)
    lora = build_scenario("benign-lora", base, cache_root=cache, progress=False)
    assert lora.adapter == lora.finetuned and (lora.finetuned / "adapter_config.json").is_file()
    assert not (lora.finetuned.parent / "finetuned-full").exists()
    instruct = build_scenario("instruct-full", base, cache_root=cache, progress=False)
    kinds = {json.loads(x)["kind"] for x in (instruct.finetuned.parent / "data" / "finetune.jsonl").read_text().splitlines()}
    assert kinds and kinds <= {"benign-reference", "benign-instruction"}  # no maths
    assert len({poisoned.recipe_hash, lora.recipe_hash, instruct.recipe_hash}) == 3

    # a second fine-tune seed: same aligned model, another fine-tune
    seed2 = scenario_recipe("benign-full", base, ft_seed=7)
    assert seed2.aligned_key() == base.aligned_key() and seed2.short_hash() != base.short_hash()
    assert build_scenario("benign-full", base, ft_seed=7, cache_root=cache, progress=False).finetuned.is_dir()

    with pytest.raises(InputError, match="unknown or empty scenario"):
        parse_scenarios("benign-full,nonsense")
    with pytest.raises(InputError, match="twice"):
        parse_scenarios(["benign-full", "benign-full"])


def test_unset_ft_seed_keeps_existing_hashes():
    """ft_seed was added later: unset, it is not part of the hash, so earlier builds stay valid."""
    assert "ft_seed" not in OrganismRecipe().canonical_json()
    assert OrganismRecipe(ft_seed=0).short_hash() != OrganismRecipe().short_hash()
    assert OrganismRecipe(ft_seed=3).finetune_seed == 3 and OrganismRecipe(seed=2).finetune_seed == 2
