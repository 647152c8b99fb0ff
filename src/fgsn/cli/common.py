"""What every command module shares: the help texts of options shared by several commands (an
option's own `Field(description=...)` wins where it has one), and the --config flag."""

from __future__ import annotations

import argparse

from fgsn.config import add_option_flags

SKIP = ("func", "config", "command", "verbose", "kind", "baseline_method")

HELPS = {
    "aligned": "aligned model folder (the safety-aligned checkpoint)",
    "finetuned": "fine-tuned model: a checkpoint folder, or a PEFT LoRA adapter folder over --aligned",
    "base": "unaligned base model folder (the safety direction is aligned - base)",
    "harmful": "harmful prompts: .jsonl/.csv/.txt or builtin:NAME[?split=..&category=..&limit=..]",
    "task": "task prompts (what the fine-tune is for), same formats",
    "benign": "benign prompts for the layer search (default: the task prompts)",
    "category": "safety dimension name for this run (continual ledger); filters --harmful to it when it "
                "matches prompt categories",
    "preset": "named settings for the options not given: paper (the published recipe, = the defaults) or "
              "frontier (snip-signed over all layers at a 10%% budget: the best fine-grained setting measured on "
              "the SmolLM2 organism; needs a backward pass)",
    "layers": "safety layers as A-B (0-based, inclusive), a list, or all; default: found by the cosine-gap search",
    "layer_eps": "relative rise that counts in the layer search",
    "modules": "target modules (e.g. q_proj); default: every linear module of the layer",
    "q": "share of weights kept as harmful-important (top-q)",
    "p": "share of weights excluded as task-important (top-p)",
    "budget": "instead of q: mask exactly this share of each module (highest harmful scores outside the task "
              "top-p), to compare scores at equal parameter budgets",
    "granularity": "weight or neuron (whole output rows)",
    "score": "importance score: wanda (the paper), wanda-delta, offsafety, snip, snip-signed, contrast, random",
    "projector": "safelora (V V^T/||V||_F) or svd (exact projector on the top singular vectors of V)",
    "rank": "svd projector: fixed rank k",
    "energy": "svd projector: smallest k holding this share of ||V||_F^2",
    "device": "cpu, cuda, cuda:N or auto",
    "dtype": "float32, bfloat16, float16, auto (float32 on CPU, bfloat16 on GPU) or fast (bfloat16 where the hardware has it)",
    "ledger": "continual ledger folder (created if missing)",
    "locate_run": "reuse layers and masks from a `fgsn locate --out RUN` folder",
    "output_format": "merged checkpoint, or adapter (LoRA input with --granularity neuron only)",
    "out": "output folder (appears only when complete)",
    "overwrite": "replace an existing --out",
    "use_chat_template": "apply the tokenizer's chat template to prompts",
    "allow_pickle": "allow .bin/.pt weights (loaded with weights_only=True)",
    "trust_remote_code": "allow model code from the checkpoint folder",
    "cache": "reuse cached probe statistics (~/.cache/fgsn/probes)",
}

COMPARE_HELPS = {
    "with_references": "also evaluate the aligned and fine-tuned models (entries `aligned`, `finetuned`)",
    "eval_harmful": "harmful prompts for ASR (separate from the locate --harmful)",
    "eval_attack": "harmful prompts wrapped in jailbreak templates, scored apart as asr_attack "
                   "(e.g. builtin:jailbreak?wrap=harmbench-standard&split=test)",
    "benign_alarming": "harmless prompts that sound alarming, for over-refusal",
    "utility": "utility tasks or prompt/answer files (see fgsn eval --utility)",
    "reference": "prompt/answer sets whose answers' NLL is measured",
    "judge": "primary ASR judge: keyword, openai or local",
    "layers": "FGSN safety layers as A-B (default: the cosine-gap search); the baselines use every layer",
    "modules": "target modules of FGSN, SafeLoRA and Wanda (default: every linear module)",
    "isolate": "run each edit in its own process, so that its peak memory is its own",
    "overwrite": "re-run every edit even when its output is complete",
    "out": "run folder RUNDIR",
}

BASELINE_HELPS = {
    "select": "SafeLoRA: project modules with cos(C dW, dW) <= --threshold, or the --k lowest (number)",
    "threshold": "SafeLoRA: cosine threshold",
    "k": "SafeLoRA: number of modules projected in `number` mode",
    "output_format": "merged checkpoint, or adapter (SafeLoRA on a LoRA input: lora_B <- C lora_B)",
    "unaligned": "RESTA: model the safety vector is measured from (paper: a harmfully fine-tuned aligned model; "
                 "default: --base)",
    "beta": "RESTA: weight of the safety vector (aligned - unaligned)",
    "dare": "RESTA: DARE drop rate of the fine-tuning delta (0 = no DARE)",
    "scope": "RESTA: all tensors (paper) or linear (decoder-layer linear modules only)",
    "q": "Wanda: share of weights removed (top-q by |W| ||X||)",
    "target": "Wanda: remove the fine-tuning update (update) or zero the weight (weight)",
    "group": "Wanda: top-q within each output row (Wanda's comparison group) or over the flattened module",
    "score": "Wanda: wanda (|W_finetuned|) or wanda-delta (|dW|) times input norms",
    "save_masks": "Wanda: also save the masks (fgsn/masks.safetensors; 1 bit a weight of all modules)",
    "layers": "restrict to these layers (default: all; the method has no layer search)",
    "max_shard_gb": "largest output shard, GB",
}


def add_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with any of these options (flags win)")


def configure_options(p: argparse.ArgumentParser, cls, run, helps: dict[str, str] | None = None) -> None:
    """A command whose flags are one options model's fields: --config, one flag a field (help from
    the field's description, else `helps`), and `run` as what the command does."""
    add_config_flag(p)
    add_option_flags(p, cls, helps)
    p.set_defaults(func=run)


def methods_help() -> str:
    """`--methods`: the names the registry knows (torch-free)."""
    from fgsn.pipeline.registry import variant_names

    return f"comma list of methods: {', '.join(variant_names())}"
