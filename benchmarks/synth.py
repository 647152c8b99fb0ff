"""Synthetic base / aligned / fine-tuned trios of real Llama shapes, written as bf16 (or, with
`--dtype float32`, float32) safetensors tensor by tensor (never a whole model in memory), and a synthetic locate run (fixed layers,
random weight masks) in exactly the format `fgsn locate` saves, so that `fgsn project
--locate-run` accepts it.

Values: base ~ N(0, 0.02); aligned = base + N(0, 0.002); fine-tuned = aligned + N(0, 0.001) on
every weight matrix (norms and embeddings identical). Random numbers come from one pre-drawn pool
read at seeded offsets, which keeps writing a 3B trio bound by the disk rather than the RNG; the
arithmetic of an edit does not depend on the values.

    python benchmarks/synth.py --shape tinyllama-1.1b --out /tmp/trio [--layers 8-13 --density 0.05]

`--tokenizer DIR` copies a tokenizer (e.g. the shipped SmolLM2's, vocabulary 49152) into the three
folders so that commands that run prompts (`fgsn project` with its probes) accept the trio.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Shapes of real models (config.json values); params counted by `LlamaShape.params`.
SHAPES: dict[str, dict] = {
    # SmolLM2-360M: 0.36B (tied embeddings)
    "smollm2-360m": dict(hidden=960, intermediate=2560, layers=32, heads=15, kv_heads=5, vocab=49152, tied=True),
    # TinyLlama-1.1B
    "tinyllama-1.1b": dict(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4, vocab=32000, tied=False),
    # Llama-3.2-3B: 3.2B (tied embeddings)
    "llama3.2-3b": dict(hidden=3072, intermediate=8192, layers=28, heads=24, kv_heads=8, vocab=128256, tied=True),
    # Llama-3.1-8B, Llama-3.1-70B: only for the arithmetic of the 70B section (never written here)
    "llama3.1-8b": dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256, tied=False),
    "llama3.1-70b": dict(hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8, vocab=128256, tied=False),
    # 24 layers, 371M params: 1416 MiB a model in float32 (the trio of the probe-memory goal)
    "llama-0.4b": dict(hidden=1024, intermediate=2816, layers=24, heads=16, kv_heads=4, vocab=49152, tied=False),
    # Llama-3-8B at full width, 4 of its 32 decoder layers (benchmarks/gpu_check.py)
    "llama3-8b-slice4": dict(hidden=4096, intermediate=14336, layers=4, heads=32, kv_heads=8, vocab=128256,
                             tied=False),
    # tiny, for tests and --quick
    "tiny": dict(hidden=64, intermediate=160, layers=4, heads=4, kv_heads=2, vocab=512, tied=False),
    "small": dict(hidden=512, intermediate=1408, layers=8, heads=8, kv_heads=2, vocab=8000, tied=False),
}

MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class LlamaShape:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool

    @classmethod
    def get(cls, name: str) -> LlamaShape:
        if name not in SHAPES:
            raise SystemExit(f"unknown shape {name!r}; choose from {', '.join(SHAPES)}")
        return cls(name=name, **SHAPES[name])

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def module_shape(self, module: str) -> tuple[int, int]:
        h, i, kv = self.hidden, self.intermediate, self.kv_heads * self.head_dim
        return {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
                "self_attn.o_proj": (h, h), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h),
                "mlp.down_proj": (h, i)}[module]

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) in Hugging Face's order for LlamaForCausalLM."""
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, self.hidden))]
        for layer in range(self.layers):
            p = f"model.layers.{layer}."
            out += [(p + m + ".weight", self.module_shape(m)) for m in MODULES]
            out += [(p + "input_layernorm.weight", (self.hidden,)),
                    (p + "post_attention_layernorm.weight", (self.hidden,))]
        out.append(("model.norm.weight", (self.hidden,)))
        if not self.tied:
            out.append(("lm_head.weight", (self.vocab, self.hidden)))
        return out

    @property
    def params(self) -> int:
        n = 0
        for _, s in self.tensors():
            k = 1
            for d in s:
                k *= d
            n += k
        return n

    def layer_params(self) -> int:
        return sum(a * b for a, b in (self.module_shape(m) for m in MODULES)) + 2 * self.hidden

    def bytes_bf16(self) -> int:
        return 2 * self.params

    def largest_tensor_numel(self) -> int:
        return max(a * b for a, b in (s for _, s in self.tensors() if len(s) == 2))

    def config(self, dtype: torch.dtype = torch.bfloat16) -> dict:
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": self.hidden,
                "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads, "head_dim": self.head_dim,
                "vocab_size": self.vocab, "tie_word_embeddings": self.tied, "max_position_embeddings": 4096,
                "rms_norm_eps": 1e-5, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
                "rope_theta": 10000.0, "dtype": str(dtype).removeprefix("torch.")}


class _Pool:
    """Pre-drawn standard normals; `take(n, seed)` returns n of them from a seeded offset."""

    def __init__(self, size: int = 1 << 24, seed: int = 1234):
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randn(size, generator=g)
        self.size = size

    def take(self, n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        out = torch.empty(n, dtype=torch.float32)
        pos = 0
        while pos < n:
            off = int(torch.randint(0, self.size, (1,), generator=g))
            k = min(n - pos, self.size - off)
            out[pos:pos + k] = self.data[off:off + k]
            pos += k
        return out


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")


def write_trio(shape: LlamaShape, root: str | Path, seed: int = 0, shard_gb: float = 5.0,
               dtype: torch.dtype = torch.bfloat16, tokenizer: str | Path | None = None) -> dict[str, Path]:
    """Write base/, aligned/, finetuned/ under `root` (skipped if already complete), in `dtype`,
    with the tokenizer files of the folder `tokenizer` if given."""
    from fgsn.models.safetensors_io import PlannedTensor
    from fgsn.models.writer import CheckpointWriter

    root = Path(root)
    paths = {role: root / role for role in ("base", "aligned", "finetuned")}
    stamp = root / "trio.json"
    want = {"shape": asdict(shape), "seed": seed, "shard_gb": shard_gb, "version": 1}
    if dtype != torch.bfloat16:  # (bf16 stamps stay as they were: existing trios are not rewritten)
        want["dtype"] = str(dtype)
    if tokenizer is not None:
        want["tokenizer"] = str(Path(tokenizer).resolve())
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return paths
    pool = _Pool()
    plan = [PlannedTensor(n, dtype, s) for n, s in shape.tensors()]
    writers = {}
    for role, p in paths.items():
        p.mkdir(parents=True, exist_ok=True)
        for f in p.glob("*.safetensors*"):
            f.unlink()
        (p / "config.json").write_text(json.dumps(shape.config(dtype), indent=2))
        for name in TOKENIZER_FILES if tokenizer is not None else ():
            if (Path(tokenizer) / name).is_file():
                (p / name).write_bytes((Path(tokenizer) / name).read_bytes())
        writers[role] = CheckpointWriter(p, plan, int(shard_gb * 1024**3))
    for i, (name, s) in enumerate(shape.tensors()):
        n = 1
        for d in s:
            n *= d
        if len(s) == 1:  # norms: ones, identical in all three
            t = torch.ones(s, dtype=dtype)
            for w in writers.values():
                w.write(name, t)
            continue
        base = pool.take(n, seed * 1_000_003 + 3 * i).mul_(0.02)
        writers["base"].write(name, base.to(dtype).reshape(s))
        if "embed" in name or "lm_head" in name:
            for role in ("aligned", "finetuned"):
                writers[role].write(name, base.to(dtype).reshape(s))
            continue
        aligned = base.add_(pool.take(n, seed * 1_000_003 + 3 * i + 1), alpha=0.002)
        writers["aligned"].write(name, aligned.to(dtype).reshape(s))
        ft = aligned.add_(pool.take(n, seed * 1_000_003 + 3 * i + 2), alpha=0.001)
        writers["finetuned"].write(name, ft.to(dtype).reshape(s))
    for w in writers.values():
        w.close()
    stamp.write_text(json.dumps(want))
    return paths


CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_tokenizer(folder: str | Path, vocab_size: int = 1000):
    """A byte-level BPE tokenizer with a ChatML template, trained in-process (seconds, no download)
    on fgsn's shipped prompt files, saved into `folder`: any text encodes, at about the token
    counts of a real subword vocabulary, so probe passes see realistic prompt lengths."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    import fgsn

    files = Path(fgsn.__file__).parent / "data" / "files"
    texts = [json.loads(line)["prompt"] for f in sorted(files.glob("*.jsonl"))
             for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    Path(folder).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return fast


def write_chat_model(folder: str | Path, shape: LlamaShape, seed: int = 0) -> Path:
    """A random float32 Llama of `shape` with `write_tokenizer`'s tokenizer (its vocabulary size
    replaces the shape's): a stand-in for an instruction-tuned model where only the code path
    matters, e.g. the organism built on a CPU in seconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = write_tokenizer(folder, vocab_size=min(shape.vocab, 1000))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                      num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                      num_key_value_heads=shape.kv_heads, max_position_embeddings=1024, tie_word_embeddings=shape.tied,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    return Path(folder)


def parse_layers(spec: str) -> list[int]:
    if "-" in spec:
        a, b = spec.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in spec.split(",")]


def write_locate_run(trio: dict[str, Path], out: str | Path, layers: list[int], density: float = 0.05,
                     seed: int = 0) -> Path:
    """A locate run folder (locate.json + masks.safetensors, `fgsn.artifacts.locate_run.LocateRun`):
    random weight masks of `density` on all seven modules of `layers`. The sha256
    fields are the real hashes of the aligned and fine-tuned checkpoints (as `fgsn project`
    checks them); they land in the hash cache of `$FGSN_CACHE`."""
    from fgsn.artifacts.locate_run import LocateRun
    from fgsn.artifacts.masks import PackedMasks
    from fgsn.artifacts.provenance import inputs_json
    from fgsn.atomic import atomic_dir
    from fgsn.models.registry import edit_targets
    from fgsn.models.trio import open_trio

    t = open_trio(trio["aligned"], trio["finetuned"], trio["base"])
    targets = edit_targets(t.arch, t.aligned.names, t.num_layers, None, layers)
    masks = PackedMasks()
    stats = []
    for i, target in enumerate(targets):
        g = torch.Generator().manual_seed(seed * 7919 + i)
        shape = t.aligned.shape(target.tensor)
        m = torch.rand(shape, generator=g) < density
        masks.put(target.tensor, m)
        stats.append({"name": target.tensor, "layer": target.layer, "module": target.spec.name,
                      "numel": m.numel(), "masked": int(m.sum()), "mask_update_energy": None})
        del m
    run = LocateRun(layers, None, masks, targets, stats, {},
                    options={"synthetic": True, "density": density, "seed": seed, "layers": layers},
                    inputs=inputs_json(t))
    with atomic_dir(out, overwrite=True) as tmp:
        run.save(tmp)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="tinyllama-1.1b", choices=sorted(SHAPES))
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", default=None, help="masked layers, e.g. 8-13 (default: none, no locate run)")
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="dtype of the weights")
    ap.add_argument("--tokenizer", default=None, help="folder whose tokenizer files are copied into the models")
    a = ap.parse_args(argv)
    shape = LlamaShape.get(a.shape)
    trio = write_trio(shape, a.out, a.seed, dtype=getattr(torch, a.dtype), tokenizer=a.tokenizer)
    if a.layers:
        write_locate_run(trio, Path(a.out) / "locate", parse_layers(a.layers), a.density, a.seed)
    print(json.dumps({k: str(v) for k, v in trio.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
