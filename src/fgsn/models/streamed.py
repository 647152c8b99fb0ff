"""A transformers model whose weights stay on disk: its modules are built from the config on the
meta device (transformers' own decoder-layer class for the architecture), and their weights are
read from the checkpoint with the lazy reader, one decoder layer at a time, when asked for.

Why: a probe runs every prompt through layer 0, then layer 1, ...; it never needs two layers at
once. Holding one layer (and, while prompts are embedded, the embedding) instead of the whole
model lets a model that does not fit in memory be probed, at the price of keeping every prompt's
hidden state between layers (see `fgsn.locate.probes.run_probes_streamed`).

How the model's own forward pass is kept exact: the decoder layers are swapped for stand-ins and
the model is called as the resident probe calls it. The stand-ins record, for every layer, the
arguments the model computes for it (the attention mask in the form the attention implementation
wants, position ids, rotary embeddings, per-layer-type masks of sliding-window models) and pass
the hidden state on unchanged; the stand-in of the last layer needed stops the pass. Each real
layer is then called with exactly those arguments. Modules outside the layers (embeddings, final
norm, LM head) are loaded the first time the forward pass calls them and dropped on `release_outer`.
Tensor names map from the checkpoint to the module through transformers' own renaming rules;
an architecture whose checkpoints must be converted (fused or split) on load is refused with a
clear error rather than loaded wrongly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from fgsn.errors import InputError
from fgsn.models.checkpoint import Checkpoint
from fgsn.models.loading import trim_host_memory
from fgsn.models.lora import LoraAdapter
from fgsn.models.registry import architecture_for, live_layers

log = logging.getLogger(__name__)


class _Stop(Exception):
    """Raised by the stand-in of the last layer a capture needs."""


@dataclass
class LayerCall:
    """The arguments besides the hidden state that the model passes to one decoder layer."""

    args: tuple
    kwargs: dict
    hidden_as_kwarg: bool = False

    def __call__(self, layer: torch.nn.Module, hidden: torch.Tensor):
        if self.hidden_as_kwarg:
            return layer(*self.args, hidden_states=hidden, **self.kwargs)
        return layer(hidden, *self.args, **self.kwargs)


@dataclass
class LayerInputs:
    """One batch on its way through the decoder layers: the input of layer 0 (the embedded
    prompts) and the call of every layer up to the last one captured."""

    hidden: torch.Tensor
    calls: list[LayerCall]


class _StandIn(torch.nn.Module):
    """Sits in a decoder layer's place during the model's own forward pass and hands its call to
    `fn(index, hidden, call)`; attributes it lacks (e.g. `attention_type`) come from the real layer."""

    def __init__(self, real: torch.nn.Module, index: int, fn: Callable):
        super().__init__()
        object.__setattr__(self, "_real", real)   # not a submodule: no parameters of its own
        object.__setattr__(self, "_fn", fn)
        self.index = index

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_real"], name)

    def forward(self, *args, **kwargs):
        if args:
            return self._fn(self.index, args[0], LayerCall(args[1:], kwargs))
        kwargs = dict(kwargs)
        hidden = kwargs.pop("hidden_states")
        return self._fn(self.index, hidden, LayerCall((), kwargs, hidden_as_kwarg=True))


def _meta_like(p: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"), requires_grad=False)


class StreamedModel:
    """A causal LM skeleton over a checkpoint (plus, for a LoRA fine-tune, its adapter merged in
    as the resident loader merges it: the update cast to the weight's dtype and added in place)."""

    def __init__(self, path: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 adapter: LoraAdapter | str | Path | None = None, trust_remote_code: bool = False,
                 allow_pickle: bool = False, checkpoint: Checkpoint | None = None):
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        self.ckpt = checkpoint or Checkpoint(path, allow_pickle=allow_pickle)
        self.path = self.ckpt.path
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = dtype
        self.adapter = LoraAdapter(adapter) if isinstance(adapter, str | Path) else adapter
        self.arch = architecture_for(self.ckpt.config)
        try:
            config = AutoConfig.from_pretrained(str(self.path), trust_remote_code=trust_remote_code)
            # Buffers (rotary frequencies, ...) are built for real, as from_pretrained builds them;
            # parameters stay on the meta device until a layer is materialised.
            with init_empty_weights(include_buffers=False):
                self.model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise InputError(f"transformers cannot build the model of {self.path}: {e}") from e
        self.model.eval()
        self.config = self.model.config
        self.layers = live_layers(self.model, self.arch)
        self.num_layers = len(self.layers)
        self._layers_name = next(n for n, m in self.model.named_modules() if m is self.layers)
        self._names = self._name_map()
        self._tied = dict(getattr(self.model, "all_tied_weights_keys", None) or {})
        self._live: list[tuple[torch.nn.Module, str, str, torch.Tensor]] = []   # outer: (module, kind, leaf, original)
        self._layer_live: dict[int, list[tuple[torch.nn.Module, str, str, torch.Tensor]]] = {}
        for name, module in self.model.named_modules():
            if name == self._layers_name or name.startswith(self._layers_name + "."):
                continue
            if module._parameters or module._buffers:
                module.register_forward_pre_hook(self._outer_hook(name))

    # -- names ---------------------------------------------------------------------------------
    def _name_map(self) -> dict[str, str]:
        """Module tensor name -> checkpoint tensor name, by transformers' renaming rules for this
        model (legacy names, base-model prefix); names whose tensors need converting are left out."""
        meta = self.model.state_dict()
        try:
            from transformers.conversion_mapping import get_model_conversion_mapping
            from transformers.core_model_loading import WeightConverter, rename_source_key

            transforms = get_model_conversion_mapping(self.model)
            converters = [t for t in transforms if isinstance(t, WeightConverter)]
            renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
        except ImportError:  # an older transformers: names as stored, with or without the prefix
            converters, renamings, rename_source_key = [], [], None
        prefix = self.model.base_model_prefix
        out: dict[str, str] = {}
        for name in self.ckpt.names:
            if rename_source_key is not None:
                live, converted = rename_source_key(name, renamings, converters, prefix, meta)
                if converted is not None:
                    continue
            else:
                live = name if name in meta else f"{prefix}.{name}"
            out[live] = name
        return out

    def _checkpoint_name(self, live: str) -> str:
        if live in self._names:
            return self._names[live]
        for target, source in self._tied.items():   # a tied weight (LM head = embedding) is stored once
            if live == target and source in self._names:
                return self._names[source]
            if live == source and target in self._names:
                return self._names[target]
        raise InputError(f"{self.path}: the {type(self.model).__name__} tensor {live} is not in the checkpoint "
                         "under any name transformers maps to it (this architecture converts its tensors on load); "
                         "the layer-streamed probe cannot read it, use --probe-memory resident")

    def _read(self, live: str, like: torch.Tensor) -> torch.Tensor:
        name = self._checkpoint_name(live)
        t = self.ckpt.get(name)
        if tuple(t.shape) != tuple(like.shape):
            raise InputError(f"{self.path}: {name} has shape {tuple(t.shape)} but the model built from config.json "
                             f"expects {tuple(like.shape)}; the config does not match the weights")
        t = t.to(device=self.device, dtype=self.dtype if t.is_floating_point() else t.dtype)
        if self.adapter is not None and name in self.adapter.targets:
            self.adapter.apply_(name, t)
        return t

    # -- materialising -------------------------------------------------------------------------
    def _materialise(self, root: torch.nn.Module, prefix: str, grad: Iterable[str] = (), recurse: bool = True) -> list:
        """Read `root`'s meta parameters from the checkpoint onto the device (its buffers moved
        there, or read where the checkpoint stores them); returns what to undo."""
        grad = set(grad)
        done = []
        for sub_name, module in root.named_modules() if recurse else [("", root)]:
            full = f"{prefix}.{sub_name}" if sub_name else prefix
            for leaf, p in list(module._parameters.items()):
                if p is None or p.device.type != "meta":
                    continue
                rel = f"{sub_name}.{leaf}" if sub_name else leaf
                module._parameters[leaf] = torch.nn.Parameter(self._read(f"{full}.{leaf}", p), requires_grad=rel in grad)
                done.append((module, "p", leaf, p))
            for leaf, b in list(module._buffers.items()):
                stored = f"{full}.{leaf}" in self._names
                if b is None or (b.device == self.device and not stored):
                    continue
                new = self.ckpt.get(self._names[f"{full}.{leaf}"]).to(b.dtype) if stored else b
                module._buffers[leaf] = new.to(self.device)
                done.append((module, "b", leaf, b))
        return done

    @staticmethod
    def _restore(done: list) -> None:
        for module, kind, leaf, original in reversed(done):
            (module._parameters if kind == "p" else module._buffers)[leaf] = original

    def _outer_hook(self, name: str):
        def hook(module, _args):
            if any(p is not None and p.device.type == "meta" for p in module._parameters.values()) or any(
                    b is not None and b.device != self.device for b in module._buffers.values()):
                self._live += self._materialise(module, name, recurse=False)
        return hook

    def release_outer(self) -> None:
        """Drop the weights loaded outside the decoder layers (embeddings, final norm, LM head)."""
        self._restore(self._live)
        self._live = []
        trim_host_memory()

    @contextlib.contextmanager
    def layer(self, index: int, grad: Iterable[str] = ()) -> Iterator[torch.nn.Module]:
        """Decoder layer `index` with its weights read from the checkpoint (parameters named in
        `grad`, relative to the layer, require grad); back on the meta device afterwards."""
        real = self.layers[index]
        self._layer_live[index] = self._materialise(real, f"{self._layers_name}.{index}", set(grad))
        try:
            yield real
        finally:
            self._restore(self._layer_live.pop(index))
            trim_host_memory()  # the next layer then reuses the same pages instead of growing the heap

    def materialised_layers(self) -> list[int]:
        """Indices of the decoder layers that hold real weights now (for tests and checks)."""
        return [i for i, layer in enumerate(self.layers) if any(p.device.type != "meta" for p in layer.parameters())]

    def materialised_outer(self) -> list[str]:
        return [n for n, p in self.model.named_parameters()
                if p.device.type != "meta" and not n.startswith(self._layers_name + ".")]

    # -- running the model's own forward pass around the layers ----------------------------------
    @contextlib.contextmanager
    def _stand_ins(self, fn: Callable) -> Iterator[None]:
        real = list(self.layers)
        for i, layer in enumerate(real):
            self.layers[i] = _StandIn(layer, i, fn)
        try:
            yield
        finally:
            for i, layer in enumerate(real):
                self.layers[i] = layer

    @torch.no_grad()
    def capture(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                upto: int) -> LayerInputs:
        """Embed a batch and record the call of every layer 0..upto, as the model makes them."""
        calls: list[LayerCall | None] = [None] * (upto + 1)
        first: dict[str, torch.Tensor] = {}

        def record(i: int, hidden: torch.Tensor, call: LayerCall):
            if i == 0:
                first["h"] = hidden
            calls[i] = call
            if i >= upto:
                raise _Stop
            return hidden

        with self._stand_ins(record), contextlib.suppress(_Stop):
            self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                       position_ids=position_ids.to(self.device), use_cache=False)
        if "h" not in first or any(c is None for c in calls):
            raise InputError(f"{type(self.model).__name__}: the forward pass did not reach decoder layer {upto}; "
                             "the layer-streamed probe does not fit this architecture, use --probe-memory resident")
        return LayerInputs(first["h"], calls)  # type: ignore[arg-type]

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
               last_hidden: torch.Tensor, **kwargs) -> torch.Tensor:
        """The model's logits given the last decoder layer's output, through the model's own head
        (final norm, LM head, any softcapping); differentiable in `last_hidden`."""
        last = self.num_layers - 1

        def replay(i: int, hidden: torch.Tensor, _call: LayerCall):
            return last_hidden if i == last else hidden

        with self._stand_ins(replay):
            return self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                              position_ids=position_ids.to(self.device), use_cache=False, **kwargs).logits

    def resident_bytes(self) -> int:
        """Memory of the whole model's weights in this dtype (what a resident probe holds)."""
        return resident_bytes(self.ckpt, self.dtype)


def resident_bytes(ckpt: Checkpoint, dtype: torch.dtype) -> int:
    size = torch.empty((), dtype=dtype).element_size()
    return sum(ckpt.numel(n) * (size if ckpt.dtype(n).is_floating_point else ckpt.dtype(n).itemsize)
               for n in ckpt.names)


def hidden_of(output) -> torch.Tensor:
    """A decoder layer's output hidden state (layers return a tensor, older ones a tuple)."""
    return output[0] if isinstance(output, tuple) else output
