"""Probe throughput: tokens per second of `fgsn.locate.probes.run_probes` against a plain batched
forward pass of the same model on the same batches, in one process (the model loaded once).

Passes, timed in turn (round robin over the passes, `--repeats` rounds; median):
- `forward`:          model(input_ids, attention_mask), every layer and the LM head (the baseline);
- `probe_layers`:     the layer-search pass (last-token hidden state of every layer), as locate runs it
                      (stopping after the last layer: no final norm, no LM head);
- `probe_modules`:    the neuron-score pass on every layer (input sum of squares of the 7 linear
                      modules of every layer), stopping after the last layer;
- `forward_to_k`:     a forward pass cut after layer k by a bare hook (the ideal for an early exit);
- `probe_modules_k`:  the neuron-score pass on layers 0..k with the early exit after layer k.

Model: the shipped SmolLM2-135M (`fgsn.models.shipped.smollm2_dir()`), or a random Llama of a
named shape with SmolLM2's tokenizer. Prompts: the shipped alarming.jsonl, chat-templated.

    python benchmarks/probe_bench.py --model smollm2-135m --prompts 64 --batch 8 --stop 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from fgsn.memory import peak_rss_mb

# Random-weight Llama shapes (SmolLM2 vocabulary); "smollm2-135m" is the real shipped model.
PROBE_SHAPES = {
    "smollm2-360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                         num_key_value_heads=5, tie_word_embeddings=True),
    "tinyllama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                           num_attention_heads=32, num_key_value_heads=4, tie_word_embeddings=False),
}


def load(model_name: str):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from fgsn.models.loading import load_model, load_tokenizer
    from fgsn.models.shipped import smollm2_dir

    folder = smollm2_dir()
    if model_name == "smollm2-135m":
        return load_model(folder, device="cpu", dtype="float32")
    tok = load_tokenizer(folder)
    cfg = LlamaConfig(vocab_size=49152, max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                      **PROBE_SHAPES[model_name])
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model.eval(), tok


def prompts(n: int) -> list[str]:
    path = Path(__import__("fgsn").__file__).parent / "data" / "files" / "alarming.jsonl"
    rows = [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]
    return (rows * (n // len(rows) + 1))[:n]


def _batches(tok, texts: list[str], batch: int):
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))  # as run_probes does
    for s in range(0, len(order), batch):
        yield [texts[i] for i in order[s:s + batch]]


@torch.no_grad()
def plain_forward(model, tok, texts: list[str], batch: int, stop: int | None = None) -> int:
    """The baseline; with `stop`, cut after layer `stop` by a bare hook. Returns real tokens."""
    from fgsn.locate.probes import _StopForward
    from fgsn.models.loading import input_device
    from fgsn.models.registry import architecture_for, live_layers

    handle = None
    if stop is not None:
        layers = live_layers(model, architecture_for(model.config.to_dict()))

        def hook(*_):
            raise _StopForward

        handle = layers[stop].register_forward_hook(hook)
    n = 0
    try:
        for b in _batches(tok, texts, batch):
            enc = tok(b, return_tensors="pt", padding=True, add_special_tokens=False).to(input_device(model))
            with contextlib.suppress(_StopForward):
                model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], use_cache=False)
            n += int(enc["attention_mask"].sum())
    finally:
        if handle is not None:
            handle.remove()
    return n


def modules_of(model, layers: range) -> dict[str, torch.nn.Module]:
    from fgsn.models.registry import EditTarget, architecture_for, live_module

    arch = architecture_for(model.config.to_dict())
    return {f"model.layers.{i}.{s.path}.weight": live_module(model, arch, EditTarget("", i, s))
            for i in layers for s in arch.modules}


def run(model_name: str, n_prompts: int, batch: int, stop: int, repeats: int) -> dict:
    from fgsn.data.chat import render_all
    from fgsn.locate.probes import run_probes
    from fgsn.models.registry import architecture_for, live_layers

    t0 = time.perf_counter()
    model, tok = load(model_name)
    load_s = time.perf_counter() - t0
    torch.manual_seed(0)
    raw = prompts(n_prompts)
    texts = render_all(tok, raw)
    arch = architecture_for(model.config.to_dict())
    layers = live_layers(model, arch)
    n_layers = len(layers)
    params = sum(p.numel() for p in model.parameters())

    def probe(**kw):
        st = run_probes(model, tok, raw, layers=layers, batch_size=batch, desc="bench", **kw)
        return st.n_tokens

    passes = {
        "forward": lambda: plain_forward(model, tok, texts, batch),
        "probe_layers": lambda: probe(hidden_states=True, stop_after_layer=n_layers - 1),
        "probe_modules": lambda: probe(modules=modules_of(model, range(n_layers)), hidden_states=False,
                                       stop_after_layer=n_layers - 1),
        f"forward_to_{stop}": lambda: plain_forward(model, tok, texts, batch, stop=stop),
        f"probe_modules_{stop}": lambda: probe(modules=modules_of(model, range(stop + 1)), hidden_states=False,
                                               stop_after_layer=stop),
    }
    passes["forward"]()  # warm-up (allocator, kernels)
    out: dict = {"model": model_name, "params": params, "layers": n_layers, "prompts": n_prompts, "batch": batch,
                 "stop_layer": stop, "repeats": repeats, "load_s": round(load_s, 2),
                 "threads": torch.get_num_threads(), "passes": {}}
    times: dict[str, list[float]] = {name: [] for name in passes}
    tokens: dict[str, int] = {}
    for _ in range(repeats):  # round robin: background load hits every pass alike
        for name, fn in passes.items():
            t = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - t)
    for name in passes:
        med = statistics.median(times[name])
        out["passes"][name] = {"tokens": tokens[name], "seconds": [round(x, 3) for x in times[name]],
                               "median_s": round(med, 3), "tokens_per_s": round(tokens[name] / med, 1)}
    base = out["passes"]["forward"]["median_s"]
    for p in out["passes"].values():
        p["vs_forward"] = round(p["median_s"] / base, 3)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", choices=["smollm2-135m", *PROBE_SHAPES])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--stop", type=int, default=8, help="early-exit layer for the *_k passes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the result here (default: stdout)")
    a = ap.parse_args(argv)
    res = run(a.model, a.prompts, a.batch, a.stop, a.repeats)
    text = json.dumps(res, indent=2)
    if a.json:
        Path(a.json).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
