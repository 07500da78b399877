"""One shape for every generator, and sampling written once against it.

A generator is a trained model that draws numbered samples: sample ``i`` of settings ``s`` depends
on ``(s, i)`` only, never on its batch, rank or a rerun. Every medgen model family implements
:class:`Generator` (the 3D diffusion model, the graph VAE, any later one); ``medgen sample``,
sharded ``Trainer.predict``, resume and export use nothing else:

- ``from_checkpoint(path)``: rebuild from a checkpoint (``weights_only``); the checkpoint records
  the class path of its module (``hyper_parameters.module``), so :func:`load_generator` needs no
  branch per model family.
- ``resolve_settings(settings)``: check :class:`~medgen.records.SampleSettings` against the model
  and fill in its defaults (raises a :class:`~medgen.errors.UserError` naming the setting).
- ``generate(indices, settings)``: a :class:`Generated` batch of those samples.
- ``cohort(out, settings, checkpoint)``: the :class:`Cohort` that owns the output (a folder of
  NIfTI volumes, a molecule file): plan and resume, write each batch, finalize.

:func:`sample_to` runs ``Trainer.predict`` over the samples a cohort still lacks: each rank takes
every ``world_size``-th index (:class:`ShardSampler`, no padding: no sample twice, none missing)
and writes its batches as they arrive; rank 0 prepares the output first and finalizes it last.
"""

from __future__ import annotations

import importlib
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter, Callback
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from medgen.errors import ConfigError, InputFileError, UserError
from medgen.records import SampleSettings
from medgen.utils.distributed import end_distributed
from medgen.utils.locks import ArrayLock, spans
from medgen.utils.logging import get_logger

log = get_logger(__name__)

# checkpoints written before the module's class path was recorded: their kind names it
LEGACY_MODULES = {
    "diffusion3d": "medgen.imaging.diffusion.DiffusionModule",
    "graph_vae": "medgen.molecules.module.GraphVAEModule",
}


class Output(StrEnum):
    """What a generator makes."""

    VOLUMES = "volumes"  # (B, C, D, H, W) tensors in [-1, 1], written as NIfTI
    MOLECULES = "molecules"  # SMILES strings (None where a draw failed), written as CSV/SDF


@dataclass
class Generated:
    """A batch of samples: ``items[k]`` is sample ``indices[k]``.

    ``items`` is a (B, C, D, H, W) float tensor for volumes, a list of SMILES for molecules.
    """

    indices: list[int]
    items: Any

    def __len__(self) -> int:
        return len(self.indices)


@runtime_checkable
class Cohort(Protocol):
    """The one owner of a sampling output (folder or file): plan, resume, write, finalize.

    ``check`` runs on every rank before any work and refuses an output made with other settings
    (or holding more samples than ``n``) unless ``overwrite``; ``prepare`` (rank 0) clears or
    cleans it; ``done`` lists intact samples (the resume); ``write`` stores one batch atomically;
    ``finalize`` (rank 0, after every rank wrote) writes the index files and returns a summary.
    """

    out: Path

    def check(self, n: int, *, overwrite: bool) -> None: ...

    def prepare(self, *, overwrite: bool) -> None: ...

    def done(self) -> set[int]: ...

    def write(self, batch: Generated, *, rank: int, world_size: int) -> list[int]: ...

    def finalize(self, n: int, *, preview: bool) -> dict[str, Any]: ...


@runtime_checkable
class Generator(Protocol):
    """What ``medgen sample`` needs of a model (see the module docstring)."""

    output: ClassVar[Output]
    default_batch_size: ClassVar[int]  # samples per forward pass unless the user sets one

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: Any = "cpu") -> Self: ...

    def resolve_settings(self, settings: SampleSettings) -> SampleSettings: ...

    def generate(self, indices: Sequence[int], settings: SampleSettings) -> Generated: ...

    def cohort(
        self, out: str | os.PathLike, settings: SampleSettings, checkpoint: Path
    ) -> Cohort: ...


def module_path(ckpt: dict[str, Any]) -> str | None:
    """The class path a checkpoint's module recorded (or its kind's, for older checkpoints)."""
    hp = ckpt.get("hyper_parameters") or {}
    return hp.get("module") or LEGACY_MODULES.get(str(hp.get("kind")))


def generator_class(path: str, file: Path) -> type[Generator]:
    """Import the generator class ``path`` named by checkpoint ``file``.

    Only classes inside the ``medgen`` package are imported: a checkpoint cannot make medgen
    import code from elsewhere.
    """
    module_name, _, name = path.rpartition(".")
    if not module_name.startswith("medgen.") or not name.isidentifier():
        raise InputFileError(
            f"checkpoint {file} names module {path!r}: only medgen's own generators are loaded"
        )
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise InputFileError(f"checkpoint {file} names module {path!r}, not found: {err}") from err
    if not all(hasattr(cls, a) for a in ("from_checkpoint", "generate", "cohort", "output")):
        raise InputFileError(f"checkpoint {file}: {path} is not a medgen generator")
    return cls


def load_generator(ckpt: str | os.PathLike, map_location: Any = "cpu") -> tuple[Generator, Path]:
    """``(generator, checkpoint file)`` for a checkpoint file, run dir or ``pretrained:<name>``
    (a model shipped with medgen), whatever its family."""
    from medgen.utils.checkpoint import load_medgen_checkpoint

    file, data, _ = load_medgen_checkpoint(ckpt)
    path = module_path(data)
    if path is None:
        raise InputFileError(f"checkpoint {file} records no generator module; medgen train wrote?")
    cls = generator_class(path, file)
    return cls.from_checkpoint(file, map_location), file


# ------------------------------------------------------------------------- Trainer.predict pieces


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
        self.positions = shard(len(dataset), rank, world_size)  # type: ignore[arg-type]

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
    """Indices ``0..n-1`` minus those the cohort already holds, split over ranks without padding.

    Computed when the predict loop asks for its dataloader, i.e. after rank 0 has prepared the
    output and all ranks met at a barrier.
    """

    allow_zero_length_dataloader_with_multiple_devices = True

    def __init__(
        self, cohort: Cohort, n: int, batch_size: int, indices: range | None = None
    ) -> None:
        super().__init__()
        self.cohort, self.n, self.batch_size = cohort, int(n), int(batch_size)
        self.indices = range(self.n) if indices is None else indices  # this job's share
        self.pending: list[int] = []
        self.local_count = 0  # samples this rank draws

    def predict_dataloader(self) -> DataLoader:
        done = self.cohort.done()
        self.pending = [i for i in self.indices if i not in done]
        dataset = IndexDataset(self.pending)
        assert self.trainer is not None  # the predict loop attaches it before asking
        rank, world = self.trainer.global_rank, self.trainer.world_size
        sampler = ShardSampler(dataset, rank=rank, world_size=world)
        self.local_count = len(sampler)
        if rank == 0:
            have = len(done & set(self.indices))
            log.info("%d of %d samples already in %s; drawing %d", have, len(self.indices),
                     self.cohort.out, len(self.pending))  # fmt: skip
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=0)


class GeneratorStep(pl.LightningModule):
    """Wraps a generator for ``Trainer.predict``: a batch of indices -> :class:`Generated`."""

    allow_zero_length_dataloader_with_multiple_devices = True

    def __init__(self, generator: Generator, settings: SampleSettings) -> None:
        super().__init__()
        self.generator = generator  # registered as a submodule: Lightning moves it to the device
        self.settings = settings

    def predict_step(self, batch: torch.Tensor, batch_idx: int = 0) -> Generated:
        return self.generator.generate([int(i) for i in batch.tolist()], self.settings)


class CohortWriter(BasePredictionWriter):
    """Hands each predicted batch to the cohort as it arrives; every rank writes its own."""

    def __init__(self, cohort: Cohort, *, overwrite: bool = False, array: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.cohort, self.overwrite, self.array = cohort, overwrite, array
        self.lock: ArrayLock | None = None
        self.written: list[int] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            # one of several array jobs prepares the output only when no other job is writing
            # into it (preparing removes temporaries: another job's files in flight)
            self.lock = ArrayLock(self.cohort.out) if self.array else None
            if self.lock is None or self.lock.alone():
                self.cohort.prepare(overwrite=self.overwrite)
            if self.lock is not None:
                self.lock.share()
        trainer.strategy.barrier("medgen-sample-prepare")

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        world = trainer.world_size
        self.written += self.cohort.write(prediction, rank=trainer.global_rank, world_size=world)


class SampleProgress(Callback):
    """A progress bar over samples (rank 0 counts its own share; the others draw in step)."""

    def __init__(self, unit: str) -> None:
        self.bar: Any = None
        self.unit = unit

    def on_predict_start(self, trainer, pl_module) -> None:
        from tqdm.auto import tqdm

        count = getattr(trainer.datamodule, "local_count", None)
        world = trainer.world_size
        desc = "sampling" if world == 1 else f"sampling (rank 0 of {world})"
        self.bar = tqdm(total=count, desc=desc, unit=self.unit, disable=not trainer.is_global_zero)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        if self.bar is not None:
            self.bar.update(len(batch))

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.on_predict_end(trainer, pl_module)


def sample_to(
    generator: Generator,
    settings: SampleSettings,
    *,
    out: str | os.PathLike,
    checkpoint: Path,
    n: int,
    batch_size: int | None = None,
    overwrite: bool = False,
    preview: bool = True,
    trainer_kwargs: dict[str, Any] | None = None,
    indices: range | None = None,
) -> dict[str, Any]:
    """Draw samples ``0..n-1`` of ``settings`` into ``out`` with ``Trainer.predict``.

    ``trainer_kwargs`` go to ``pl.Trainer`` (accelerator, devices, strategy, num_nodes, precision).
    ``batch_size`` (None: the generator's ``default_batch_size``) never changes the result. A
    rerun into the same ``out`` draws only the missing samples. Returns a summary on every rank;
    rank 0's includes what the cohort's ``finalize`` wrote.

    ``indices`` (a range inside ``0..n-1``): draw only those, as one of several independent jobs
    filling the same ``out`` (array jobs on a shared file system); nothing is finalized — run
    :func:`finalize_cohort` once after every job has finished.
    """
    if n < 1:
        raise ConfigError("n", n, "an integer >= 1")
    batch_size = generator.default_batch_size if batch_size is None else batch_size
    if batch_size < 1:
        raise ConfigError("batch_size", batch_size, "an integer >= 1")
    settings = generator.resolve_settings(settings)
    cohort = generator.cohort(out, settings, checkpoint)
    cohort.check(n, overwrite=overwrite)  # every rank, before any work
    if indices is not None and (indices.start < 0 or indices.stop > n or indices.step != 1):
        raise ConfigError("indices", f"{indices.start}:{indices.stop}", f"a:b within 0:{n}")
    if indices is not None and overwrite:
        raise ConfigError("overwrite", True, "false with indices= (clear out once, first)")
    writer = CohortWriter(cohort, overwrite=overwrite, array=indices is not None)
    unit = "vol" if generator.output == Output.VOLUMES else "mol"
    kwargs = {"accelerator": "cpu", "devices": 1, **(trainer_kwargs or {})}
    kwargs.update(
        callbacks=[writer, SampleProgress(unit)],
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
                GeneratorStep(generator, settings),
                datamodule=PendingSamples(cohort, n, batch_size, indices),
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
        if trainer.is_global_zero and indices is None:
            summary.update(cohort.finalize(n, preview=preview))
    except BaseException:
        end_distributed(barrier=False)  # another rank may be gone: do not wait for it
        raise
    finally:
        if writer.lock is not None:
            writer.lock.close()
    end_distributed(barrier=True)
    return summary


def finalize_cohort(
    generator: Generator,
    settings: SampleSettings,
    *,
    out: str | os.PathLike,
    checkpoint: Path,
    n: int,
    preview: bool = True,
) -> dict[str, Any]:
    """Finalize ``out`` (manifest, datalist, merged file) once array jobs drew all ``n`` samples.

    Refused (:class:`~medgen.errors.UserError`) while another job still writes into ``out``, or
    when samples are missing (it names them).
    """
    settings = generator.resolve_settings(settings)
    cohort = generator.cohort(out, settings, checkpoint)
    cohort.check(n, overwrite=False)
    lock = ArrayLock(cohort.out)
    try:
        if not lock.alone():
            raise UserError(f"out={out}: sampling jobs are still writing into it; finalize after "
                            "they have finished")  # fmt: skip
        missing = sorted(set(range(n)) - cohort.done())
        if missing:
            raise UserError(f"out={out} lacks {len(missing)} of n={n} samples "
                            f"({spans(missing)}): run the jobs that draw them "
                            "(indices=a:b) again, then finalize")  # fmt: skip
        return cohort.finalize(n, preview=preview)
    finally:
        lock.close()


def generate(
    ckpt: str | os.PathLike | Generator,
    n: int,
    settings: SampleSettings | None = None,
    *,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
) -> Generated:
    """Draw samples ``0..n-1`` in memory from a checkpoint (file or run dir) or a generator.

    The same samples ``medgen sample`` writes for these settings: volumes as an (n, C, D, H, W)
    tensor in [-1, 1] on the CPU, molecules as a list of SMILES. For files, use
    :func:`sample_to` (or ``medgen sample``), which also resumes and splits work over devices.
    """
    if isinstance(ckpt, str | os.PathLike):
        generator, _ = load_generator(ckpt, map_location=device)
    else:
        generator = ckpt
    batch_size = generator.default_batch_size if batch_size is None else batch_size
    if n < 1 or batch_size < 1:
        raise ConfigError("n" if n < 1 else "batch_size", n if n < 1 else batch_size, ">= 1")
    resolved = generator.resolve_settings(settings or SampleSettings())
    module = generator.to(device) if isinstance(generator, torch.nn.Module) else generator
    parts = [
        module.generate(list(range(start, min(n, start + batch_size))), resolved)
        for start in range(0, n, batch_size)
    ]
    if isinstance(parts[0].items, torch.Tensor):
        items: Any = torch.cat([p.items.float().cpu() for p in parts])
    else:
        items = [item for p in parts for item in p.items]
    return Generated(list(range(n)), items)
