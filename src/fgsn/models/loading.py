"""Loading a checkpoint (optionally with a LoRA adapter merged in) as a live transformers model,
for the probes and for generation. Weights come from safetensors only, unless the user allows
pickle; remote code only when asked."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from fgsn.errors import InputError
from fgsn.hardware import native_bf16

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_device(device: str = "auto", flag: str = "--device") -> str:
    """`auto` means cuda when available, else cpu. (`auto` with several GPUs: see device_map.)
    `flag` names the option in the error messages."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "mps") and not re.fullmatch(r"cuda(:\d+)?", device):
        raise InputError(f"unknown {flag} {device!r}; use cpu, cuda, cuda:N or auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"{flag} {device} asked for, but no CUDA device is available; use {flag} cpu")
    if device.startswith("cuda:") and int(device.split(":", 1)[1]) >= torch.cuda.device_count():
        raise InputError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered from 0; use {flag} cuda:0 or auto")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """`auto` (default): float32 on CPU, bfloat16 on a GPU that computes it (float32 on one that
    does not, e.g. a V100). `fast`: bfloat16 wherever the hardware computes it natively (GPU, or a
    CPU with AVX512-BF16/AMX: about twice float32's speed there), else float32. `auto` does not
    depend on the CPU model, so CPU results do not either."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") and native_bf16(device) else torch.float32
    if dtype == "fast":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if dtype not in DTYPES:
        raise InputError(f"unknown --dtype {dtype!r}; use one of {', '.join(sorted(DTYPES))}, auto or fast")
    return DTYPES[dtype]


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load a tokenizer from {path}: {e}") from e
    tok.padding_side = "left"  # the last prompt token sits at position -1 for every row
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str | Path, *, device: str = "auto", dtype: str | torch.dtype | None = None,
               adapter: str | Path | None = None, trust_remote_code: bool = False,
               allow_pickle: bool = False):
    """Return (model, tokenizer) in eval mode. `device="auto"` with several GPUs spreads the model
    with accelerate's device map; an `adapter` (PEFT LoRA folder) is merged into the weights."""
    from transformers import AutoModelForCausalLM

    from fgsn.models.checkpoint import Checkpoint

    ckpt = Checkpoint(path, allow_pickle=allow_pickle)  # validates the folder and its weight files
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    kwargs = dict(dtype=dt, trust_remote_code=trust_remote_code, use_safetensors=not ckpt.is_pickle)
    if device == "auto" and dev == "cuda" and torch.cuda.device_count() > 1:
        kwargs["device_map"] = "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as e:
        raise InputError(f"transformers cannot load {path}: {e}") from e
    if "device_map" not in kwargs:
        model.to(dev)
    if adapter is not None:
        from fgsn.models.lora import LoraAdapter

        LoraAdapter(adapter).merge_into_(model, reference=ckpt)
    model.eval()
    tok = load_tokenizer(path, trust_remote_code=trust_remote_code)
    return model, tok


def input_device(model) -> torch.device:
    """Where to put input ids (the embedding's device, also under a device map)."""
    return model.get_input_embeddings().weight.device


def trim_host_memory() -> None:
    """Return the host heap's free memory to the system.

    On glibc, tensors freed on the host go back to malloc's free lists, not to the system: a pass
    that reads tensors of tens of MB one after another (a layer-streamed probe, the scoring) leaves
    hundreds of MB of free heap in the process's RSS, which the next stage (the edit) then stacks
    on. `malloc_trim(0)` gives it back (a no-op where the C library is not glibc)."""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def free_memory() -> None:
    """Give back the memory of models just dropped (host and, where present, GPU caches)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trim_host_memory()
