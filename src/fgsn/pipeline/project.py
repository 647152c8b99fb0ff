"""`fgsn project` end to end: masks (from a locate run, or located now) -> continual ledger ->
streamed sparse projection -> checkpoint (or adapter) + manifest, model card and the output's own
locate run (OUT/fgsn/locate, so that the output can be passed to --locate-run).

It sits above the stages because it runs two of them: locate (fgsn.locate.run) and the edit
(fgsn.edit.stream); the artifacts between them are in fgsn.artifacts.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fgsn.artifacts.card import write_card
from fgsn.artifacts.locate_run import LOCATE_RUN_FILES, LOCATE_RUN_IN_OUTPUT, LocateRun, resolve_locate_run
from fgsn.artifacts.manifest import MANIFEST, build_manifest
from fgsn.artifacts.masks import PackedMasks
from fgsn.atomic import atomic_dir, atomic_write_json
from fgsn.data.prompts import load_prompts
from fgsn.data.promptset import concat
from fgsn.edit.compensate import compensate_checkpoint
from fgsn.edit.ledger import Ledger
from fgsn.edit.options import ProjectOptions
from fgsn.edit.projection import ProjectionSettings
from fgsn.edit.rewrite import RUN_INFO, run_info, side_files
from fgsn.edit.stream import stream_edit, write_adapter
from fgsn.errors import InputError
from fgsn.locate.run import locate_masks, write_locate_run
from fgsn.models.finetune import LoraFinetune
from fgsn.models.hashing import checkpoint_sha256
from fgsn.models.loading import resolve_device
from fgsn.models.safetensors_io import PlannedTensor
from fgsn.models.trio import Trio, open_trio
from fgsn.models.writer import CheckpointWriter, copy_side_files

log = logging.getLogger(__name__)


@dataclass
class ProjectResult:
    out: Path
    manifest: dict
    noop: bool = False

    @property
    def modified_fraction(self) -> float:
        return self.manifest["modified_fraction"]


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


def _locate(trio: Trio, opts: ProjectOptions) -> LocateRun:
    if opts.locate_run:
        return LocateRun.load(opts.locate_run, trio)  # a locate run, or a project output (which keeps its own)
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
            copy_side_files(side_files(trio), tmp)
            if opts.compensate != "none":
                task = concat("task", [load_prompts(s) for s in opts.task])
                compensation = compensate_checkpoint(tmp, trio, loc.targets, task, opts, opts,
                                                     int(opts.max_shard_gb * 1024**3))
        (tmp / "fgsn").mkdir()
        masks.save(tmp / "fgsn" / "masks.safetensors", meta={"category": category})
        _keep_locate_run(tmp / LOCATE_RUN_IN_OUTPUT, loc, opts)
        step = len(ledger.steps) if ledger is not None else None
        manifest = build_manifest(opts=opts, trio=trio, loc=loc, edits=edits, category=category,
                                  cat_stats=cat_stats, ledger_step=step)
        if compensation is not None:
            manifest["compensation"] = compensation
        atomic_write_json(tmp / MANIFEST, manifest)
        write_card(tmp, manifest, opts, "fgsn project")
        atomic_write_json(tmp / RUN_INFO, run_info(t0, edit_device=edit_device, prefetch=opts.prefetch))
    if ledger is not None:
        out_sha = checkpoint_sha256(_weight_files(out, opts))
        ledger.record(category, masks, manifest["categories"][category],
                      {"base": trio.base.sha256, "aligned": trio.aligned.sha256, "finetuned": trio.finetuned.sha256},
                      str(out), out_sha)
    log.info("wrote %s: %.3f%% of all parameters modified", out, 100 * manifest["modified_fraction"])
    return ProjectResult(out, manifest)


def _keep_locate_run(folder: Path, loc: LocateRun, opts: ProjectOptions) -> None:
    """The output's own locate run: the one given (--locate-run, copied as it is), else this run's."""
    if not opts.locate_run:
        write_locate_run(folder, loc)
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
        copy_side_files(side_files(trio), tmp)
        manifest = build_manifest(opts=opts, trio=trio, loc=None, edits={}, category=category,
                                  cat_stats={"masked_total": 0, "overlap": 0}, ledger_step=None, noop=True)
        atomic_write_json(tmp / MANIFEST, manifest)
        (tmp / "fgsn").mkdir()
        write_card(tmp, manifest, opts, "fgsn project")
        atomic_write_json(tmp / RUN_INFO, run_info(t0))
    return ProjectResult(out, manifest, noop=True)
