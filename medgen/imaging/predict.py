"""Drawing samples: per-sample seeded noise, and the ``Trainer.predict`` path into a folder.

Reproducibility: sample ``i`` of a run seeded with ``s`` starts from noise drawn by its own
generator ``sample_generator(s, i)``, and the same generator feeds any noise the sampler adds per
step. Sample ``i`` therefore depends on ``(s, i)`` only, not on the batch it was drawn in, the rank
that drew it, or whether it was drawn in a rerun (up to float rounding between batched kernels).

Distribution: ``medgen sample`` runs ``Trainer.predict`` over the indices of the samples not yet in
``out``. Each rank takes every ``world_size``-th index (:class:`ShardSampler`, no padding, so no
sample is drawn twice and none is missing), and a :class:`SampleWriter` writes each batch as it
arrives. Rank 0 prepares ``out`` before sampling and writes manifest, datalist and preview after.

The checked, user-facing entry points (:func:`medgen.imaging.sample.generate`, ``medgen sample``)
live in :mod:`medgen.imaging.sample`, which re-exports the names defined here.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter, Callback
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from medgen.errors import ConfigError
from medgen.imaging.cohort import CohortSpec, check_output, intact_indices, prepare_output
from medgen.imaging.export import finalize_output, write_sample
from medgen.utils.distributed import end_distributed
from medgen.utils.logging import get_logger
from medgen.utils.seeding import sample_generator

log = get_logger(__name__)

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
    A rerun into the same ``out`` draws only the missing samples; an ``n`` below the samples
    ``out`` already holds is refused (``UserError``) unless ``overwrite`` (see
    :mod:`medgen.imaging.cohort`).
    """
    if n < 0:
        raise ConfigError("n", n, "an integer >= 0")
    if batch_size < 1:
        raise ConfigError("batch_size", batch_size, "an integer >= 1")
    # fail fast on every rank, before any work: other settings there, or more samples than n
    check_output(out, spec, overwrite=overwrite, n=n)
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
        end_distributed(barrier=False)  # another rank may be gone: do not wait for it
        raise
    end_distributed(barrier=True)
    return summary
