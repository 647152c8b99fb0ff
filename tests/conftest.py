"""Tiny random models and a tiny offline tokenizer, built in-process (no downloads)."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch

# Tiny models run faster on one thread, and tests sharing two cores stop fighting over them.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs `-n auto --dist loadgroup`) the real-model tests run
    one after another on one worker: they share the organism and SmolLM2 caches, and on two cores
    the other worker runs the unit tests beside them."""
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group("real-model"))

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = ["i", "cannot", "help", "with", "that", "sorry", "how", "do", "make", "a", "bomb", "kill", "process", "python", "photo", "shoot", "write", "poem", "about", "the", "ocean", "what", "is", "capital", "of", "france", "paris", "answer", "sure", "here", "steps", "first", "second", "then", "you", "can", "it", "to", "and", "or", "not", "hack", "into", "computer", "steal", "money", "explain", "black", "holes", "recipe", "cake", "number", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "plus", "minus", "equals", "is", "are", "was", "were", "be", "this", "that", "these", "those", "please", "thanks", "hello", "world"]


def make_tokenizer(path: Path, vocab_words: int | None = None):
    """A WordLevel tokenizer with a ChatML template; saved with save_pretrained into `path`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
    words = list(dict.fromkeys(WORDS + list(string.ascii_lowercase) + list(string.digits) + list(".,!?:;'\"-")))
    vocab = {tok: i for i, tok in enumerate(specials + words[:vocab_words])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>",
                                  bos_token="<|im_start|>", eos_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    tok.save_pretrained(path)
    return tok


def tiny_config(arch: str, vocab_size: int):
    from transformers import GPT2Config, LlamaConfig, Phi3Config, Qwen2Config

    common = dict(vocab_size=vocab_size, pad_token_id=1, bos_token_id=2, eos_token_id=3)
    if arch == "llama":  # GQA: 4 query heads share 2 key/value heads
        return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, **common)
    if arch == "qwen2":
        return Qwen2Config(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=1, max_position_embeddings=256, **common)
    if arch == "phi3":
        return Phi3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=256, original_max_position_embeddings=256,
                          **common)
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=256, vocab_size=vocab_size,
                          bos_token_id=2, eos_token_id=3)
    raise ValueError(arch)


def save_tiny_model(path: Path, arch: str = "llama", seed: int = 0, tokenizer_dir: Path | None = None,
                    dtype: torch.dtype = torch.float32):
    """A random model of `arch` saved as a safetensors checkpoint with the tiny tokenizer."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(path)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tok)))
    model.to(dtype)
    model.save_pretrained(path)
    return path


def perturbed_copy(src: Path, dst: Path, scale: float, seed: int, only: str | None = None) -> Path:
    """A copy of a tiny model with random noise added to its linear weights (a synthetic
    alignment or fine-tuning update)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name and "wte" not in name and "wpe" not in name and (
                    only is None or only in name):
                p.add_(torch.randn(p.shape, generator=g) * scale)
    model.save_pretrained(dst)
    for f in Path(src).iterdir():
        if f.suffix != ".safetensors" and f.name != "config.json" and f.is_file():
            (Path(dst) / f.name).write_bytes(f.read_bytes())
    return Path(dst)


@pytest.fixture(scope="session")
def trio_factory(tmp_path_factory):
    """Build (and cache per session) a base/aligned/fine-tuned trio of a given architecture."""
    cache: dict[str, dict[str, Path]] = {}

    def build(arch: str = "llama") -> dict[str, Path]:
        if arch not in cache:
            root = tmp_path_factory.mktemp(f"trio-{arch}")
            base = save_tiny_model(root / "base", arch, seed=0)
            aligned = perturbed_copy(base, root / "aligned", 0.05, seed=1)
            finetuned = perturbed_copy(aligned, root / "finetuned", 0.02, seed=2)
            cache[arch] = {"base": base, "aligned": aligned, "finetuned": finetuned}
        return cache[arch]

    return build


@pytest.fixture(scope="session")
def llama_trio(trio_factory):
    return trio_factory("llama")


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fgsn-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(request, monkeypatch, _session_cache):
    """Fast tests keep probe and hash caches out of the user's ~/.cache; slow tests reuse the real
    cache so that the SmolLM2 organism is built once."""
    if "slow" not in request.keywords:
        monkeypatch.setenv("FGSN_CACHE", str(_session_cache))
