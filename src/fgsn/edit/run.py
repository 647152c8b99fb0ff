"""The project stage end to end: masks (from a locate run or computed now) -> continual ledger ->
streamed sparse projection -> checkpoint (or adapter) + manifest."""

from __future__ import annotations

import json
import logging
import resource
import shutil
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fgsn.atomic import atomic_dir, atomic_write_json
from fgsn.data.prompts import concat, load_prompts
from fgsn.edit.compensate import compensate_checkpoint
from fgsn.edit.ledger import Ledger
from fgsn.edit.masks_io import PackedMasks
from fgsn.edit.options import ProjectOptions
from fgsn.edit.projection import ProjectionSettings, TensorEdit, check_finite, project_tensor
from fgsn.errors import InputError
from fgsn.locate.run import (
    LOCATE_RUN_FILES,
    LOCATE_RUN_IN_OUTPUT,
    LocateResult,
    inputs_json,
    locate_masks,
    resolve_locate_run,
    write_locate_run,
)
from fgsn.models.finetune import LoraFinetune
from fgsn.models.hashing import checkpoint_sha256
from fgsn.models.loading import resolve_device
from fgsn.models.lora import LoraFactors
from fgsn.models.prefetch import prefetched
from fgsn.models.registry import from_out_in, to_out_in
from fgsn.models.safetensors_io import PlannedTensor
from fgsn.models.trio import Trio, open_trio
from fgsn.models.writer import CheckpointWriter, copy_side_files
from fgsn.report.manifest import MANIFEST, build_manifest, write_card

log = logging.getLogger(__name__)


@dataclass
class ProjectResult:
    out: Path
    manifest: dict
    noop: bool = False

    @property
    def modified_fraction(self) -> float:
        return self.manifest["modified_fraction"]


def _masks_from_run(run: str | Path, trio: Trio) -> LocateResult:
    run = resolve_locate_run(run)  # a locate run, or a project output (which keeps its locate run)
    try:
        doc = json.loads((run / "locate.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"--locate-run {run}: no readable locate.json ({e}); run `fgsn locate --out {run}` first") from e
    for role in ("aligned", "finetuned"):
        want = inputs_json(trio)[role]["sha256"]
        if doc["inputs"][role]["sha256"] != want:
            raise InputError(f"--locate-run {run} was made for another {role} model; re-run locate on these models")
    masks = PackedMasks.load(run / "masks.safetensors")
    from fgsn.locate.layers import LayerSearch
    from fgsn.models.registry import edit_targets

    ls = doc.get("layer_search")
    search = None
    if ls:
        c = ls["curves"]
        search = LayerSearch(c["bb"], c["bh"], c["hh"], c["gap"], tuple(ls["selected"]), ls["eps"], ls["rule"])
    names = list(masks)
    targets = [t for t in edit_targets(trio.arch, trio.aligned.names, trio.num_layers, None, doc["layers"])
               if t.tensor in names]
    return LocateResult(doc["layers"], search, masks, targets, doc["modules"], doc.get("prompt_counts", {}))


def _check_adapter_output(trio: Trio, opts: ProjectOptions) -> None:
    if opts.output_format != "adapter":
        return
    if opts.compensate != "none":
        raise InputError("--compensate task changes single entries of the merged update, which an adapter cannot "
                         "hold; use --output-format merged (the default)")
    if not isinstance(trio.finetuned, LoraFinetune):
        raise InputError("--output-format adapter needs a LoRA adapter as --finetuned; a full fine-tune gives a "
                         "full checkpoint")
    if opts.granularity != "neuron":
        raise InputError("--output-format adapter is representable only with --granularity neuron: projecting single "
                         "entries of B A changes its rank; use --output-format merged (the default) instead")


def write_adapter(tmp: Path, trio: Trio, edits: dict[str, TensorEdit]) -> None:
    """Write the edit back as a PEFT adapter: lora_B' = (C B)/scale on masked rows, A unchanged."""
    from safetensors.torch import save_file

    from fgsn.models.safetensors_io import read_tensor

    ad = trio.finetuned.adapter
    tensors = {}
    for key, info in ad._infos.items():
        tensors[key] = read_tensor(ad.weights_file, info)
    for name, e in edits.items():
        if e.masked == 0:
            continue
        if e.new_B is None:
            raise InputError(f"{name}: the edit is not representable as an adapter; use --output-format merged")
        _, b_key = ad.lora[name]
        tensors[b_key] = (e.new_B / ad.scale(name)).to(tensors[b_key].dtype).contiguous()
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    shutil.copy2(ad.path / "adapter_config.json", tmp / "adapter_config.json")
    for f in trio.aligned.side_files():
        if "token" in f.name or "chat_template" in f.name:
            shutil.copy2(f, tmp / f.name)


@dataclass
class _Inputs:
    """What the edit needs of one tensor, read together (by the prefetch thread when it is on)."""

    finetuned: torch.Tensor
    mask: torch.Tensor | None = None          # None: not an edit target
    aligned: torch.Tensor | None = None       # these three only when the mask selects something
    base: torch.Tensor | None = None
    factors: LoraFactors | None = None


def _reader(trio: Trio, masks: PackedMasks, targets_by_name: dict):
    def read(name: str) -> _Inputs:
        ft = trio.finetuned.get(name)
        if name not in masks or name not in targets_by_name:
            return _Inputs(ft)
        mask = masks.get(name)
        if not bool(mask.any()):
            return _Inputs(ft, mask)
        return _Inputs(ft, mask, trio.aligned.get(name), trio.base.get(name), trio.finetuned.factors(name))

    return read


@contextmanager
def _full_float32():
    """The projection in true float32 on every device: no TF32 matmuls on a GPU, whatever the
    process set before (the CPU result is the reference the GPU must match)."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def stream_edit(trio: Trio, masks: PackedMasks, targets_by_name: dict, settings: ProjectionSettings,
                writer: CheckpointWriter | None, device: str = "cpu", prefetch: int = 1) -> dict[str, TensorEdit]:
    """Walk every tensor of the model once: masked targets are projected (on `device`), the rest
    copied from the fine-tuned model as stored. The next `prefetch` tensors' inputs are read in a
    background thread while the current one is projected and written, so the inputs of at most
    1 + `prefetch` tensors are in memory at a time (`fgsn.models.prefetch`)."""
    edits: dict[str, TensorEdit] = {}
    arch = trio.arch
    dev = torch.device(device)
    reads = prefetched(trio.aligned.names, _reader(trio, masks, targets_by_name), prefetch)
    with _full_float32(), closing(reads):  # closing: an error here stops the reading thread at once
        for name, x in tqdm(reads, total=len(trio.aligned.names), desc="project", unit="tensor"):
            w_ft = x.finetuned
            if x.aligned is None:
                check_finite(w_ft, name, "fine-tuned")
                if x.mask is not None:
                    t = targets_by_name[name]
                    edits[name] = TensorEdit(name, t.layer, t.spec.name, numel=x.mask.numel(), masked=0)
            else:
                t = targets_by_name[name]
                w_ft, w_al, w_base = (w.to(dev) for w in (w_ft, x.aligned, x.base))
                for w, role in ((w_ft, "fine-tuned"), (w_al, "aligned"), (w_base, "base")):
                    check_finite(w, name, role)
                factors = x.factors
                if factors is not None:
                    factors = LoraFactors(factors.B.to(dev), factors.A.to(dev))
                parts = arch.part_sizes(t.spec, trio.aligned.config, x.mask.shape[0])
                out, edit = project_tensor(
                    name, t.layer, t.spec.name, w_aligned=to_out_in(w_al, arch), w_finetuned=to_out_in(w_ft, arch),
                    w_base=to_out_in(w_base, arch), mask=x.mask.to(dev), parts=parts, settings=settings,
                    factors=factors)
                if edit.new_B is not None:
                    edit.new_B = edit.new_B.cpu()
                edits[name] = edit
                w_ft = from_out_in(out, arch).cpu()
            if writer is not None:
                writer.write(name, w_ft)
    return edits


def run_project(opts: ProjectOptions) -> ProjectResult:
    if not opts.out:
        raise InputError("fgsn project needs --out DIR for the edited checkpoint")
    t0 = time.time()
    edit_device = resolve_device(opts.edit_device, flag="--edit-device")  # before any work: fail fast
    trio = open_trio(opts.aligned, opts.finetuned, opts.base, allow_pickle=opts.allow_pickle)
    _check_adapter_output(trio, opts)
    torch.manual_seed(opts.seed)
    category = opts.category or "default"
    ledger = Ledger(opts.ledger) if opts.ledger else None
    if ledger is not None:
        with ledger.locked():
            ledger.check_editor("project")
            ledger.check_models(trio.base.sha256, trio.aligned.sha256, trio.finetuned.sha256)
            if ledger.step_of(category) is not None:
                return _noop(trio, opts, ledger, category, t0)
            return _project(trio, opts, ledger, category, t0, edit_device)
    return _project(trio, opts, None, category, t0, edit_device)


def _locate(trio: Trio, opts: ProjectOptions) -> LocateResult:
    if opts.locate_run:
        return _masks_from_run(opts.locate_run, trio)
    if not opts.harmful or not opts.task:
        raise InputError("fgsn project needs --harmful and --task prompts (or --locate-run from fgsn locate)")
    return locate_masks(trio, opts)


def _project(trio: Trio, opts: ProjectOptions, ledger: Ledger | None, category: str, t0: float,
             edit_device: str) -> ProjectResult:
    loc = _locate(trio, opts)
    masks = loc.masks
    cat_stats = {"masked_total": loc.masked, "overlap": 0}
    if ledger is not None and ledger.steps:
        fresh = PackedMasks()
        overlap = 0
        for name in masks:
            m = masks.get(name)
            prev = ledger.union(name, tuple(m.shape))
            overlap += int((m & prev).sum())
            fresh.put(name, m & ~prev)
        masks = fresh
        cat_stats["overlap"] = overlap
    targets_by_name = {t.tensor: t for t in loc.targets}
    settings = ProjectionSettings(opts.projector, opts.rank, opts.energy)
    out = Path(opts.out)
    compensation = None
    with atomic_dir(out, overwrite=opts.overwrite) as tmp:
        if opts.output_format == "adapter":
            edits = stream_edit(trio, masks, targets_by_name, settings, None, edit_device, opts.prefetch)
            write_adapter(tmp, trio, edits)
        else:
            plan = [PlannedTensor(n, trio.aligned.dtype(n), trio.aligned.shape(n)) for n in trio.aligned.names]
            writer = CheckpointWriter(tmp, plan, int(opts.max_shard_gb * 1024**3))
            edits = stream_edit(trio, masks, targets_by_name, settings, writer, edit_device, opts.prefetch)
            writer.close()
            copy_side_files(_side_files(trio), tmp)
            if opts.compensate != "none":
                task = concat("task", [load_prompts(s) for s in opts.task])
                compensation = compensate_checkpoint(tmp, trio, loc.targets, task, opts, opts,
                                                     int(opts.max_shard_gb * 1024**3))
        (tmp / "fgsn").mkdir()
        masks.save(tmp / "fgsn" / "masks.safetensors", meta={"category": category})
        _keep_locate_run(tmp / LOCATE_RUN_IN_OUTPUT, loc, trio, opts)
        step = len(ledger.steps) if ledger is not None else None
        manifest = build_manifest(opts=opts, trio=trio, loc=loc, edits=edits, category=category,
                                  cat_stats=cat_stats, ledger_step=step)
        if compensation is not None:
            manifest["compensation"] = compensation
        atomic_write_json(tmp / MANIFEST, manifest)
        write_card(tmp, manifest, opts, "fgsn project")
        atomic_write_json(tmp / "fgsn" / "run.json", _run_info(t0, edit_device=edit_device, prefetch=opts.prefetch))
    if ledger is not None:
        out_sha = checkpoint_sha256(_weight_files(out, opts))
        ledger.record(category, masks, manifest["categories"][category],
                      {"base": trio.base.sha256, "aligned": trio.aligned.sha256, "finetuned": trio.finetuned.sha256},
                      str(out), out_sha)
    log.info("wrote %s: %.3f%% of all parameters modified", out, 100 * manifest["modified_fraction"])
    return ProjectResult(out, manifest)


def _keep_locate_run(folder: Path, loc: LocateResult, trio: Trio, opts: ProjectOptions) -> None:
    """The output's own locate run: the one given (--locate-run, copied as it is), else this run's."""
    if not opts.locate_run:
        write_locate_run(folder, loc, trio, opts)
        return
    folder.mkdir(parents=True)
    src = resolve_locate_run(opts.locate_run)
    for name in LOCATE_RUN_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, folder / name)


def _weight_files(out: Path, opts: ProjectOptions) -> list[Path]:
    if opts.output_format == "adapter":
        return [out / "adapter_model.safetensors", out / "adapter_config.json"]
    return sorted(out.glob("*.safetensors"))


def _side_files(trio: Trio) -> list[Path]:
    src = trio.aligned if isinstance(trio.finetuned, LoraFinetune) else trio.finetuned.ckpt
    return src.side_files()


def _noop(trio: Trio, opts: ProjectOptions, ledger: Ledger, category: str, t0: float) -> ProjectResult:
    """Re-running a recorded category changes nothing: the output is the input, unchanged."""
    log.warning("category %r is already in ledger %s (step %d); nothing to project", category, ledger.path,
                ledger.step_of(category)["step"])
    out = Path(opts.out)
    with atomic_dir(out, overwrite=opts.overwrite) as tmp:
        plan = [PlannedTensor(n, trio.aligned.dtype(n), trio.aligned.shape(n)) for n in trio.aligned.names]
        writer = CheckpointWriter(tmp, plan, int(opts.max_shard_gb * 1024**3))
        for name in trio.aligned.names:
            writer.write(name, trio.finetuned.get(name))
        writer.close()
        copy_side_files(_side_files(trio), tmp)
        manifest = build_manifest(opts=opts, trio=trio, loc=None, edits={}, category=category,
                                  cat_stats={"masked_total": 0, "overlap": 0}, ledger_step=None, noop=True)
        atomic_write_json(tmp / MANIFEST, manifest)
        (tmp / "fgsn").mkdir()
        write_card(tmp, manifest, opts, "fgsn project")
        atomic_write_json(tmp / "fgsn" / "run.json", _run_info(t0))
    return ProjectResult(out, manifest, noop=True)


def _run_info(t0: float, **how) -> dict:
    """Timings, memory and how the edit ran (device, prefetch): kept out of the manifest so that
    the manifest is deterministic."""
    return {"wall_s": round(time.time() - t0, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), **how}

