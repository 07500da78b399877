"""``checkpoints/last.ckpt``: the latest training state, which is what a resume reads.

Lightning's ``ModelCheckpoint(save_last=True)`` rewrites ``last.ckpt`` only when it saves a new
top-k checkpoint, so with a monitored metric a resume would go back to the best step. A second
``ModelCheckpoint(monitor=None, filename="last", save_last=True)`` kept it current but wrote the
file twice at each validation (its top-1 save and its ``save_last``, one path).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.trainer.states import TrainerFn

from medgen.utils.atomic import TMP_MARKER


class LatestCheckpoint(Checkpoint):
    """Writes the full training state to ``<dirpath>/<filename>.ckpt`` once after each
    validation of a fit, and at the end of the fit when it took steps since the last write (a
    run that never validates still leaves one). Nothing is written during the sanity check, with
    ``fast_dev_run``, or outside ``fit``.

    Lightning runs checkpoint callbacks after the others; this one also moves itself behind the
    other checkpoint callbacks, so the file holds the best-checkpoint bookkeeping of the same
    validation. It keeps no state of its own: a resumed fit counts from the step it resumed at.
    """

    def __init__(self, *, dirpath: str | os.PathLike[str], filename: str = "last") -> None:
        if not filename or os.sep in filename or filename.endswith(".ckpt"):
            raise ValueError(
                f"LatestCheckpoint filename must be a bare name without '.ckpt', got {filename!r}"
            )
        self.dirpath = Path(dirpath)
        self.filename = filename
        self._saved_step: int | None = None  # global step of the state last written (or resumed)

    @property
    def path(self) -> Path:
        return self.dirpath / f"{self.filename}.ckpt"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # the hook loop holds the old list, so reassigning it here is safe; Lightning sets
        # Trainer.callbacks and .fast_dev_run outside its class body, hence the ignores
        if stage == "fit":
            others = [c for c in trainer.callbacks if c is not self]  # type: ignore[attr-defined]
            trainer.callbacks = [*others, self]  # type: ignore[attr-defined]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._saved_step = trainer.global_step  # step 0, or a resumed state already on disk

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_save(trainer):
            self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_save(trainer) and trainer.global_step != self._saved_step:
            self._save(trainer)

    @staticmethod
    def _should_save(trainer: pl.Trainer) -> bool:
        return (
            not trainer.fast_dev_run  # type: ignore[attr-defined]
            and trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
        )

    def _save(self, trainer: pl.Trainer) -> None:
        """``trainer.save_checkpoint`` on every rank (sharded strategies need all of them; only
        global rank zero writes a file). Lightning's own file write goes through a temporary file
        in the system temp folder, which is a copy, not a rename, when that folder is on another
        file system: write beside the target instead and rename it over ``last.ckpt``."""
        if not isinstance(trainer.strategy.checkpoint_io, TorchCheckpointIO):
            trainer.save_checkpoint(self.path)  # another IO plugin (asynchronous) owns its writes
            self._saved_step = trainer.global_step
            return
        # not *.ckpt, so a leftover from a killed run is never taken for a checkpoint
        tmp = self.path.with_name(f".{self.path.name}{TMP_MARKER}step{trainer.global_step}")
        try:
            trainer.save_checkpoint(tmp)
            if trainer.is_global_zero:
                with open(tmp, "rb+") as fh:  # contents on disk before the rename is visible
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
        finally:
            if trainer.is_global_zero and tmp.exists():
                tmp.unlink()
        self._saved_step = trainer.global_step
