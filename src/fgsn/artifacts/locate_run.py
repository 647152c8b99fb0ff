"""A locate run: the safety layers and neuron masks `fgsn locate` finds, as a folder that `fgsn
project --locate-run` (and `activation-match --rows fgsn`) reuse:

    RUN/locate.json          options, inputs (paths, sha256), layers, per-module mask counts,
                             prompt counts, layer search curves, total masked
    RUN/masks.safetensors    the masks, bit-packed (`fgsn.artifacts.masks`)
    RUN/layer_search.png     the layer search figure (drawn by the locate stage; not read back)

Every `fgsn project` output keeps its locate run in OUT/fgsn/locate, so an output can be passed
to --locate-run as well.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fgsn.artifacts.masks import PackedMasks
from fgsn.artifacts.provenance import inputs_json
from fgsn.atomic import atomic_write_json
from fgsn.errors import InputError
from fgsn.models.registry import EditTarget, edit_targets

LOCATE_JSON = "locate.json"
MASKS = "masks.safetensors"
LAYER_SEARCH_PNG = "layer_search.png"
LOCATE_RUN_FILES = (LOCATE_JSON, MASKS, LAYER_SEARCH_PNG)
# Every `fgsn project` output keeps its locate run here, so that it can be passed to --locate-run.
LOCATE_RUN_IN_OUTPUT = Path("fgsn") / "locate"


@dataclass
class LayerSearch:
    """The cosine-gap layer search (method.md step 1): mean pairwise cosines of benign-benign,
    benign-harmful and harmful-harmful last-token hidden states per layer, their gap, and the
    block of layers selected (inclusive, 0-based) by `rule`."""

    bb: list[float]
    bh: list[float]
    hh: list[float]
    gap: list[float]
    selected: tuple[int, int]        # inclusive, 0-based
    eps: float
    rule: str

    def to_json(self) -> dict:
        return {"curves": {"bb": self.bb, "bh": self.bh, "hh": self.hh, "gap": self.gap},
                "selected": list(self.selected), "eps": self.eps, "rule": self.rule}

    @classmethod
    def from_json(cls, d: dict) -> LayerSearch:
        c = d["curves"]
        return cls(c["bb"], c["bh"], c["hh"], c["gap"], tuple(d["selected"]), d["eps"], d["rule"])

    @property
    def layers(self) -> list[int]:
        return list(range(self.selected[0], self.selected[1] + 1))


@dataclass
class LocateRun:
    """Layers and masks of a locate run, with what `locate.json` records beside them. `targets`
    are the masked modules (rebuilt from the architecture on load); `options` the locate options
    as JSON, `inputs` the models' paths and hashes (`fgsn.artifacts.provenance.inputs_json`)."""

    layers: list[int]
    layer_search: LayerSearch | None
    masks: PackedMasks
    targets: list[EditTarget]
    module_stats: list[dict] = field(default_factory=list)
    prompt_counts: dict[str, int] = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)

    @property
    def masked(self) -> int:
        return sum(s["masked"] for s in self.module_stats)

    def to_json(self) -> dict:
        """The `locate.json` document."""
        return {"options": self.options, "inputs": self.inputs, "layers": self.layers, "modules": self.module_stats,
                "prompt_counts": self.prompt_counts,
                "layer_search": self.layer_search.to_json() if self.layer_search else None, "masked": self.masked}

    def save(self, folder: str | Path) -> Path:
        """masks.safetensors and locate.json into `folder` (each file written atomically; give a
        folder inside `fgsn.atomic.atomic_dir` for the whole run to appear at once)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.masks.save(folder / MASKS, meta={"layers": self.layers})
        atomic_write_json(folder / LOCATE_JSON, self.to_json())
        return folder

    @classmethod
    def load(cls, path: str | Path, trio) -> LocateRun:
        """The locate run at `path` (a run folder, or a project output that keeps one), checked
        against the aligned and fine-tuned models of `trio` (a `fgsn.models.trio.Trio`)."""
        run = resolve_locate_run(path)
        try:
            doc = json.loads((run / LOCATE_JSON).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"--locate-run {run}: no readable locate.json ({e}); run `fgsn locate --out {run}` "
                             "first") from e
        want = inputs_json(trio)
        for role in ("aligned", "finetuned"):
            if doc["inputs"][role]["sha256"] != want[role]["sha256"]:
                raise InputError(f"--locate-run {run} was made for another {role} model; re-run locate on these "
                                 "models")
        masks = PackedMasks.load(run / MASKS)
        ls = doc.get("layer_search")
        names = list(masks)
        targets = [t for t in edit_targets(trio.arch, trio.aligned.names, trio.num_layers, None, doc["layers"])
                   if t.tensor in names]
        return cls(doc["layers"], LayerSearch.from_json(ls) if ls else None, masks, targets, doc["modules"],
                   doc.get("prompt_counts", {}), doc.get("options", {}), doc["inputs"])


def resolve_locate_run(path: str | Path) -> Path:
    """A `fgsn locate` run folder as given, or the locate run a `fgsn project` output keeps."""
    path = Path(path)
    inner = path / LOCATE_RUN_IN_OUTPUT
    return inner if not (path / LOCATE_JSON).is_file() and (inner / LOCATE_JSON).is_file() else path
