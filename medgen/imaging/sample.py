"""Draw synthetic volumes from a trained ``DiffusionModule``: Python API and ``medgen sample``.

Reproducibility: sample ``i`` of a run seeded with ``s`` starts from noise drawn by its own
generator ``sample_generator(s, i)``, and the same generator feeds any noise the sampler adds per
step. Sample ``i`` therefore depends on ``(s, i)`` only, not on the batch it was drawn in, the rank
that drew it, or whether it was drawn in a rerun (up to float rounding between batched kernels).

Distribution: ``medgen sample`` runs ``Trainer.predict`` over the indices of the samples not yet in
``out``. Each rank takes every ``world_size``-th index (:class:`ShardSampler`, no padding, so no
sample is drawn twice and none is missing), and a :class:`SampleWriter` writes each batch as it
arrives. Rank 0 prepares ``out`` before sampling and writes manifest, datalist and preview after.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter, Callback
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from medgen.imaging.export import (
    CohortSpec,
    check_output,
    finalize_output,
    intact_indices,
    prepare_output,
    write_sample,
)
from medgen.utils.checkpoint import resolve_checkpoint
from medgen.utils.logging import get_logger
from medgen.utils.provenance import file_sha256
from medgen.utils.seeding import sample_generator

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = get_logger(__name__)

SAMPLERS = ("ddpm", "ddim", "rflow")
# steps when none are given (DDPM: all the training timesteps), as DiffusionModule.generate does
DEFAULT_STEPS = {"ddim": 50, "rflow": 30}
# show a per-step progress bar (rank 0) when a sampler takes at least this many steps
STEP_BAR_MIN_STEPS = 100


# ------------------------------------------------------------------------------- drawing samples


def sample_shape(module: Any) -> tuple[int, ...]:
    """``(C, D, H, W)`` of one sample, from the module's ``data_meta`` hyperparameters."""
    hparams = dict(getattr(module, "hparams", {}) or {})
    meta = hparams.get("data_meta") or {}
    size = meta.get("spatial_size")
    if not size or len(size) != 3:
        raise ValueError(
            f"{type(module).__name__}.hparams.data_meta.spatial_size must be [D, H, W], "
            f"got {size!r}"
        )
    channels = int(hparams.get("in_channels", 1) or 1)
    return (channels, *(int(s) for s in size))


def draw_samples(
    module: Any,
    indices: Sequence[int],
    *,
    seed: int,
    sampler: str | None = None,
    steps: int | None = None,
    guidance_scale: float = 1.0,
    condition: int | None = None,
    use_ema: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Generate samples ``indices`` of the run seeded with ``seed``: ``(B, C, D, H, W)``, [-1, 1].

    Each sample's x_T is drawn by ``sample_generator(seed, i)`` on the module's device, and that
    generator is handed to ``module.generate`` for the sampler's per-step noise.
    """
    device = next(iter(module.parameters())).device
    shape = sample_shape(module)
    generators = [sample_generator(seed, int(i), device=device) for i in indices]
    noise = torch.stack([torch.randn(shape, generator=g, device=device) for g in generators])
    class_labels = None
    if condition is not None:
        class_labels = torch.full((len(indices),), int(condition), dtype=torch.long, device=device)
    return module.generate(
        noise,
        generators=generators,
        sampler=sampler,
        steps=steps,
        class_labels=class_labels,
        guidance_scale=guidance_scale,
        use_ema=use_ema,
        progress=progress,
    )


def resolve_condition(condition: Any, hparams: dict[str, Any]) -> tuple[int | None, str | None]:
    """A class condition given as index or name -> ``(index, name)``; ``(None, None)`` for none."""
    if condition is None:
        return None, None
    num_classes = int(hparams.get("num_classes") or 0)
    meta = hparams.get("data_meta") or {}
    names = list(meta.get("class_names") or hparams.get("class_names") or [])
    if num_classes <= 0:
        raise ValueError(
            f"condition={condition!r}: this checkpoint was trained without class conditioning "
            "(num_classes=0); leave condition=null"
        )
    if isinstance(condition, str) and not condition.lstrip("-").isdigit():
        if condition not in names:
            raise ValueError(f"condition={condition!r} is not a class of this model: {names}")
        index = names.index(condition)
    else:
        index = int(condition)
        if not 0 <= index < num_classes:
            raise ValueError(f"condition={condition!r} is out of range 0..{num_classes - 1}")
    return index, (names[index] if index < len(names) else None)


def resolve_sampling(
    module: Any, sampler: str | None, steps: int | None, guidance_scale: float, condition: Any
) -> tuple[str | None, int | None, int | None, str | None]:
    """Check the sampling settings against the model; fill in its defaults.

    Returns ``(sampler, steps, condition index, condition name)``; ``sampler=None`` becomes the
    model's default (DDIM for DDPM-trained, RFlow for RFlow-trained models) and ``steps=None`` its
    default step count, so that exports record what was actually run.
    """
    hparams = dict(getattr(module, "hparams", {}) or {})
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}: choose one of {', '.join(SAMPLERS)} (or null)")
    objective = hparams.get("objective")
    allowed = {"ddpm": ("ddpm", "ddim"), "rflow": ("rflow",)}.get(objective, SAMPLERS)
    if sampler is not None and sampler not in allowed:
        raise ValueError(
            f"sampler={sampler!r} does not fit a model trained with the {objective!r} objective; "
            f"use one of {', '.join(allowed)}"
        )
    if steps is not None and int(steps) < 1:
        raise ValueError(f"steps={steps!r}: must be a positive number of steps (or null)")
    guidance_scale = float(guidance_scale)
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale={guidance_scale!r}: must be a finite number >= 0")
    cond, cond_name = resolve_condition(condition, hparams)
    if guidance_scale != 1.0 and cond is None:
        raise ValueError(
            f"guidance_scale={guidance_scale}: classifier-free guidance needs a class condition"
        )
    if sampler is None and callable(getattr(module, "default_sampler", None)):
        sampler = module.default_sampler()
    timesteps = hparams.get("num_train_timesteps")
    if steps is None and sampler is not None:  # at most the timesteps the model was trained on
        steps = min(DEFAULT_STEPS.get(sampler, timesteps or 1000), timesteps or 1000)
    if steps is not None and timesteps and sampler != "rflow" and int(steps) > int(timesteps):
        raise ValueError(f"steps={steps}: this model was trained with {timesteps} timesteps")
    return sampler, (None if steps is None else int(steps)), cond, cond_name


def load_diffusion(ckpt: Any, map_location: str | torch.device = "cpu") -> Any:
    """A ``DiffusionModule`` from a checkpoint file or run dir (an instance is passed through)."""
    if isinstance(ckpt, torch.nn.Module):
        return ckpt
    from medgen.imaging.diffusion import DiffusionModule

    return DiffusionModule.load_medgen_checkpoint(resolve_checkpoint(ckpt), map_location)


def generate(
    ckpt: Any,
    n: int,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 4,
    guidance_scale: float = 1.0,
    condition: int | str | None = None,
    use_ema: bool = True,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Draw samples ``0..n-1`` of the run seeded with ``seed``: ``(n, 1, D, H, W)`` in [-1, 1], CPU.

    ``ckpt`` is a checkpoint file, a run dir, or a ``DiffusionModule``. Sample ``i`` is the same for
    any ``batch_size``. For export to NIfTI use :func:`medgen.imaging.export.export_volumes`, or
    ``medgen sample`` which also splits the work over devices.
    """
    if n < 0 or batch_size < 1:
        raise ValueError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    module = load_diffusion(ckpt)
    sampler, steps, cond, _ = resolve_sampling(module, sampler, steps, guidance_scale, condition)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module = module.to(device).eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            indices = list(range(start, min(n, start + batch_size)))
            x = draw_samples(
                module,
                indices,
                seed=seed,
                sampler=sampler,
                steps=steps,
                guidance_scale=float(guidance_scale),
                condition=cond,
                use_ema=use_ema,
                progress=progress,
            )
            chunks.append(x.float().cpu())
    if not chunks:
        return torch.empty((0, *sample_shape(module)))
    return torch.cat(chunks)


# ---------------------------------------------------------------------- Lightning predict pieces


def shard(num_items: int, rank: int, world_size: int) -> list[int]:
    """Positions ``0..num_items-1`` that ``rank`` of ``world_size`` takes: every world_size-th one.

    No padding: over all ranks each position appears exactly once (ranks differ by at most one).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    return list(range(rank, num_items, world_size))


class ShardSampler(DistributedSampler):
    """A distributed sampler that never pads or repeats (see :func:`shard`).

    A ``DistributedSampler`` subclass, so Lightning keeps it as is instead of wrapping it.
    """

    def __init__(self, dataset: Dataset, *, rank: int, world_size: int) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        self.positions = shard(len(dataset), rank, world_size)

    def __iter__(self):
        return iter(self.positions)

    def __len__(self) -> int:
        return len(self.positions)


class IndexDataset(Dataset):
    """The sample indices still to draw, as a dataset of ints."""

    def __init__(self, indices: Sequence[int]) -> None:
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> int:
        return self.indices[k]


class PendingSamples(pl.LightningDataModule):
    """Indices ``0..n-1`` minus those already intact in ``out``, split over ranks without padding.

    The list is computed when the predict loop asks for its dataloader, i.e. after rank 0 has
    prepared ``out`` (cleared it or removed temporaries) and all ranks met at a barrier.
    """

    allow_zero_length_dataloader_with_multiple_devices = True

    def __init__(self, out: str | os.PathLike, n: int, spec: CohortSpec, batch_size: int) -> None:
        super().__init__()
        self.out, self.n, self.spec, self.batch_size = Path(out), int(n), spec, int(batch_size)
        self.pending: list[int] = []
        self.local_count = 0  # samples this rank draws

    def predict_dataloader(self) -> DataLoader:
        done = intact_indices(self.out, self.spec)
        self.pending = [i for i in range(self.n) if i not in done]
        dataset = IndexDataset(self.pending)
        rank, world = self.trainer.global_rank, self.trainer.world_size
        sampler = ShardSampler(dataset, rank=rank, world_size=world)
        self.local_count = len(sampler)
        if rank == 0:
            log.info(
                "%d of %d samples already in %s; drawing %d",
                len(done & set(range(self.n))),
                self.n,
                self.out,
                len(self.pending),
            )
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=0)


class SamplingModule(pl.LightningModule):
    """Wraps a ``DiffusionModule`` for ``Trainer.predict``: a batch of indices -> their volumes."""

    allow_zero_length_dataloader_with_multiple_devices = True

    def __init__(
        self, diffusion: torch.nn.Module, spec: CohortSpec, step_bar: bool = False
    ) -> None:
        super().__init__()
        self.diffusion = diffusion
        self.spec = spec
        self.step_bar = step_bar

    def predict_step(self, batch: torch.Tensor, batch_idx: int = 0) -> dict[str, torch.Tensor]:
        indices = [int(i) for i in batch.tolist()]
        volumes = draw_samples(
            self.diffusion,
            indices,
            seed=self.spec.seed,
            sampler=self.spec.sampler,
            steps=self.spec.steps,
            guidance_scale=self.spec.guidance_scale,
            condition=self.spec.condition,
            use_ema=self.spec.use_ema,
            progress=self.step_bar and self.trainer.is_global_zero,
        )
        return {"indices": batch.cpu(), "volumes": volumes.float().cpu()}


class SampleWriter(BasePredictionWriter):
    """Writes each predicted batch to ``out`` as it arrives; every rank writes its own samples."""

    def __init__(self, out: str | os.PathLike, spec: CohortSpec, *, overwrite: bool = False):
        super().__init__(write_interval="batch")
        self.out, self.spec, self.overwrite = Path(out), spec, overwrite
        self.written: list[int] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            prepare_output(self.out, self.spec, overwrite=self.overwrite)
        trainer.strategy.barrier("medgen-sample-prepare")

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        labels = prediction.get("labels")
        where = {"rank": trainer.global_rank, "world_size": trainer.world_size}
        for k, index in enumerate(prediction["indices"].tolist()):
            label = None if labels is None else labels[k]
            vol = prediction["volumes"][k]
            write_sample(self.out, index, vol, self.spec, label=label, extra=where)
            self.written.append(int(index))


class SampleProgress(Callback):
    """A progress bar over samples (rank 0 counts its own share; the others draw in step)."""

    def __init__(self) -> None:
        self.bar = None

    def on_predict_start(self, trainer, pl_module) -> None:
        from tqdm.auto import tqdm

        count = getattr(trainer.datamodule, "local_count", None)
        world = trainer.world_size
        desc = "sampling" if world == 1 else f"sampling (rank 0 of {world})"
        self.bar = tqdm(total=count, desc=desc, unit="vol", disable=not trainer.is_global_zero)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        if self.bar is not None:
            self.bar.update(len(batch))

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.on_predict_end(trainer, pl_module)


def sample_to_folder(
    diffusion: torch.nn.Module,
    spec: CohortSpec,
    *,
    out: str | os.PathLike,
    n: int,
    batch_size: int = 4,
    overwrite: bool = False,
    preview: bool = True,
    trainer_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Draw samples ``0..n-1`` into ``out`` with ``Trainer.predict`` and finish the cohort files.

    ``trainer_kwargs`` go to ``pl.Trainer`` (accelerator, devices, strategy, num_nodes, precision).
    Returns a summary on every rank; rank 0's includes the manifest, datalist and preview paths.
    """
    if n < 0 or batch_size < 1:
        raise ValueError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    check_output(out, spec, overwrite=overwrite)  # fail fast on every rank, before any work
    writer = SampleWriter(out, spec, overwrite=overwrite)
    step_bar = (spec.steps or 0) >= STEP_BAR_MIN_STEPS
    kwargs = {"accelerator": "cpu", "devices": 1, **(trainer_kwargs or {})}
    kwargs.update(
        callbacks=[writer, SampleProgress()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer = pl.Trainer(**kwargs)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():  # a rerun with nothing left to draw is not a problem
            warnings.filterwarnings("ignore", message=".*across ranks is zero.*")
            trainer.predict(
                SamplingModule(diffusion, spec, step_bar=step_bar),
                datamodule=PendingSamples(out, n, spec, batch_size),
                return_predictions=False,
            )
        seconds = time.perf_counter() - start
        # a collective, so also a barrier: every rank's files are on disk before rank 0 lists them
        local = torch.tensor(len(writer.written), device=trainer.strategy.root_device)
        written_total = int(trainer.strategy.reduce(local, reduce_op="sum").item())
        summary: dict[str, Any] = {"out": str(out), "n": n, "rank": trainer.global_rank}
        summary["written"] = len(writer.written)
        summary["written_total"] = written_total
        summary["seconds"] = round(seconds, 3)
        summary["seconds_per_sample"] = round(seconds / max(1, len(writer.written)), 3)
        if trainer.is_global_zero:
            summary.update(finalize_output(out, spec, preview=preview))
            log.info(
                "%d samples in %s (manifest.csv, dataset.json%s)",
                summary["count"],
                out,
                ", preview.png" if summary.get("preview") else "",
            )
    except BaseException:
        _end_distributed(barrier=False)  # another rank may be gone: do not wait for it
        raise
    _end_distributed(barrier=True)
    return summary


def _end_distributed(*, barrier: bool) -> None:
    """Destroy the process group after DDP: without it Gloo runs abort at exit now and then."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


# ------------------------------------------------------------------------------ medgen sample


def cohort_spec(
    ckpt_file: str | os.PathLike,
    module: Any,
    *,
    seed: int,
    sampler: str | None,
    steps: int | None,
    guidance_scale: float,
    condition: Any,
    use_ema: bool,
) -> CohortSpec:
    """The export settings for a checkpoint: geometry and intensity from its ``data_meta``."""
    from medgen.imaging.intensity import IntensityMapping

    hparams = dict(getattr(module, "hparams", {}) or {})
    meta = hparams.get("data_meta") or {}
    missing = [k for k in ("affine", "intensity", "spatial_size") if k not in meta]
    if missing:
        raise ValueError(
            f"checkpoint {ckpt_file}: hyper_parameters.data_meta lacks {missing}; "
            "was it written by medgen train?"
        )
    sampler, steps, cond, cond_name = resolve_sampling(
        module, sampler, steps, guidance_scale, condition
    )
    return CohortSpec(
        affine=meta["affine"],
        intensity=IntensityMapping.from_dict(dict(meta["intensity"])),
        modality=str(meta.get("modality", "CT")),
        seed=int(seed),
        sampler=sampler,
        steps=steps,
        guidance_scale=float(guidance_scale),
        condition=cond,
        condition_name=cond_name,
        use_ema=bool(use_ema),
        checkpoint_sha256=file_sha256(ckpt_file),
        config_hash=training_config_hash(ckpt_file, hparams),
        name=f"medgen-{meta.get('source', 'synthetic')}",
        source=meta.get("source"),
    )


def training_config_hash(ckpt_file: str | os.PathLike, hparams: dict[str, Any]) -> str:
    """The training run's config hash (its ``provenance.json``), else a hash of the hparams."""
    import json

    from medgen.utils.provenance import config_hash

    for folder in Path(ckpt_file).resolve().parents[:2]:
        prov = folder / "provenance.json"
        if prov.is_file():
            try:
                value = json.loads(prov.read_text()).get("config_hash")
            except ValueError:
                value = None
            if value:
                return str(value)
    return config_hash(hparams)


def sample_from_config(cfg: DictConfig, ckpt_file: str | os.PathLike) -> dict[str, Any]:
    """``medgen sample`` for a ``diffusion3d`` checkpoint: ``cfg.n`` volumes into ``cfg.out``."""
    from omegaconf import OmegaConf

    diffusion = load_diffusion(ckpt_file)
    sampler = cfg.get("sampler")
    steps = cfg.get("steps")
    spec = cohort_spec(
        ckpt_file,
        diffusion,
        seed=int(cfg.seed),
        sampler=None if sampler is None else str(sampler),
        steps=steps,
        guidance_scale=float(cfg.get("guidance_scale", 1.0)),
        condition=cfg.get("condition"),
        use_ema=bool(cfg.get("use_ema", True)),
    )
    # the trainer group's settings (accelerator, devices, strategy, precision, ...); the callbacks,
    # loggers and sampler handling are the sampler's own
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_kwargs.pop("_target_", None)
    return sample_to_folder(
        diffusion,
        spec,
        out=cfg.out,
        n=int(cfg.n),
        batch_size=int(cfg.get("batch_size", 4)),
        overwrite=bool(cfg.get("overwrite", False)),
        preview=bool(cfg.get("preview", True)),
        trainer_kwargs=trainer_kwargs,
    )
