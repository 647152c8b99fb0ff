"""Architecture registry, described as data (one JSON file per family under `architectures/`).

An entry says where the decoder layers are, which linear modules each layer has, how fused
modules split into logical parts (rows of the (out, in) weight), and whether weights are stored
(out, in) like nn.Linear or (in, out) like GPT-2's Conv1D. Supporting a new family means adding
a JSON file, not code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fgsn.errors import InputError

ARCH_DIR = Path(__file__).parent / "architectures"


@dataclass(frozen=True)
class ModuleSpec:
    name: str                                  # logical name used in options and reports
    path: str                                  # attribute path inside one decoder layer
    parts: tuple[tuple[str, str], ...] = ()    # fused: (part name, row-count expression)


@dataclass(frozen=True)
class Architecture:
    name: str
    model_types: tuple[str, ...]
    layers_path: str
    num_layers_key: str
    weight_layout: str                         # "out_in" (nn.Linear) or "in_out" (Conv1D)
    modules: tuple[ModuleSpec, ...]
    layers_path_aliases: tuple[str, ...] = ()
    config_section: str | None = None
    description: str = ""

    @property
    def transposed(self) -> bool:
        return self.weight_layout == "in_out"

    def text_config(self, config: dict[str, Any]) -> dict[str, Any]:
        if self.config_section and isinstance(config.get(self.config_section), dict):
            return {**config, **config[self.config_section]}
        return config

    def num_layers(self, config: dict[str, Any]) -> int:
        cfg = self.text_config(config)
        if self.num_layers_key not in cfg:
            raise InputError(f"config.json has no {self.num_layers_key!r}; is this a {self.name} model?")
        return int(cfg[self.num_layers_key])

    def module(self, name: str) -> ModuleSpec:
        for m in self.modules:
            if m.name == name or name in (p for p, _ in m.parts):
                return m
        raise InputError(f"{self.name} has no module {name!r}; its modules are {self.module_names()}")

    def module_names(self) -> list[str]:
        names: list[str] = []
        for m in self.modules:
            names.extend([p for p, _ in m.parts] if m.parts else [m.name])
        return names

    def resolve_modules(self, wanted: list[str] | None) -> list[ModuleSpec]:
        """The module specs to edit. A fused module is edited whole when any of its parts is
        asked for (its rows cannot be split across two edits)."""
        if not wanted:
            return list(self.modules)
        specs: list[ModuleSpec] = []
        for w in wanted:
            m = self.module(w)
            if m not in specs:
                specs.append(m)
        return [m for m in self.modules if m in specs]

    def part_sizes(self, spec: ModuleSpec, config: dict[str, Any], rows: int) -> list[tuple[str, int]]:
        """Row blocks of a fused module (one block for a plain module), checked against `rows`."""
        if not spec.parts:
            return [(spec.name, rows)]
        cfg = self.text_config(config)
        sizes = [(name, _eval_size(expr, cfg)) for name, expr in spec.parts]
        if sum(s for _, s in sizes) != rows:
            raise InputError(f"{spec.name}: fused parts {sizes} do not add up to its {rows} output rows; "
                             "the config does not match the weights")
        return sizes


def _eval_size(expr: str, cfg: dict[str, Any]) -> int:
    """Evaluate `a*b+c` over config keys and integers (no eval(): configs are untrusted)."""
    total = 0
    for term in expr.split("+"):
        prod = 1
        for factor in term.split("*"):
            factor = factor.strip()
            if factor.isdigit():
                prod *= int(factor)
            elif factor == "head_dim" and cfg.get("head_dim") is None:
                prod *= int(cfg["hidden_size"]) // int(cfg["num_attention_heads"])
            elif factor in cfg and cfg[factor] is not None:
                prod *= int(cfg[factor])
            else:
                raise InputError(f"config.json lacks {factor!r}, needed to split a fused module ({expr})")
        total += prod
    return total


def _load(path: Path) -> Architecture:
    data = json.loads(path.read_text(encoding="utf-8"))
    mods = tuple(ModuleSpec(m["name"], m["path"], tuple(tuple(p) for p in m.get("parts", ()))) for m in data["modules"])
    return Architecture(
        name=data["name"], model_types=tuple(data["model_types"]), layers_path=data["layers_path"],
        num_layers_key=data["num_layers_key"], weight_layout=data.get("weight_layout", "out_in"), modules=mods,
        layers_path_aliases=tuple(data.get("layers_path_aliases", ())), config_section=data.get("config_section"),
        description=data.get("description", ""),
    )


@cache
def all_architectures() -> tuple[Architecture, ...]:
    return tuple(_load(p) for p in sorted(ARCH_DIR.glob("*.json")))


def supported_model_types() -> list[str]:
    return sorted(t for a in all_architectures() for t in a.model_types)


def architecture_for(config: dict[str, Any]) -> Architecture:
    model_type = config.get("model_type")
    for arch in all_architectures():
        if model_type in arch.model_types:
            return arch
    raise InputError(
        f"model_type {model_type!r} is not in the architecture registry (supported: "
        f"{', '.join(supported_model_types())}); add a JSON entry under fgsn/models/architectures/"
    )


@dataclass(frozen=True)
class EditTarget:
    """One weight tensor the edit may touch: where it is and how to read it as (out, in)."""

    tensor: str            # tensor name in the checkpoint
    layer: int
    spec: ModuleSpec

    @property
    def module_name(self) -> str:
        return self.tensor[: -len(".weight")]


def layer_prefix(arch: Architecture, names: set[str] | list[str]) -> str:
    """The spelling of the layer-list path used by this checkpoint (e.g. GPT-2's `h` or
    `transformer.h`)."""
    for candidate in (arch.layers_path, *arch.layers_path_aliases):
        pat = re.compile(rf"^{re.escape(candidate)}\.\d+\.")
        if any(pat.match(n) for n in names):
            return candidate
    raise InputError(f"no tensor named like '{arch.layers_path}.N....' in the checkpoint; "
                     f"it does not look like a {arch.name} model")


def edit_targets(arch: Architecture, names: set[str] | list[str], num_layers: int,
                 modules: list[str] | None = None, layers: list[int] | None = None) -> list[EditTarget]:
    """The weight tensors of the chosen modules in the chosen layers, in checkpoint order."""
    prefix = layer_prefix(arch, names)
    name_set = set(names)
    targets: list[EditTarget] = []
    for layer in layers if layers is not None else range(num_layers):
        if not 0 <= layer < num_layers:
            raise InputError(f"layer {layer} out of range: the model has layers 0-{num_layers - 1}")
        for spec in arch.resolve_modules(modules):
            tensor = f"{prefix}.{layer}.{spec.path}.weight"
            if tensor not in name_set:
                raise InputError(f"tensor {tensor} is missing from the checkpoint; is it a {arch.name} model?")
            targets.append(EditTarget(tensor, layer, spec))
    return targets


def to_out_in(tensor, arch: Architecture):
    """A stored weight as (out, in), the orientation every formula in method.md uses."""
    return tensor.T if arch.transposed else tensor


def from_out_in(tensor, arch: Architecture):
    return (tensor.T if arch.transposed else tensor).contiguous()


def live_layers(model, arch: Architecture):
    """The decoder-layer list of a loaded transformers model."""
    from operator import attrgetter

    for path in (arch.layers_path, *arch.layers_path_aliases):
        try:
            return attrgetter(path)(model)
        except AttributeError:
            continue
    raise InputError(f"loaded model has no {arch.layers_path}; registry entry {arch.name} does not fit it")


def live_module(model, arch: Architecture, target: EditTarget):
    from operator import attrgetter

    return attrgetter(target.spec.path)(live_layers(model, arch)[target.layer])
