"""``medgen train``: build datamodule, model, callbacks, loggers and trainer; then fit."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from medgen.tasks.checks import check_train as check
from medgen.tasks.instantiate import instantiate_group
from medgen.utils.atomic import atomic_write_json, atomic_write_text
from medgen.utils.checkpoint import resolve_checkpoint
from medgen.utils.distributed import end_distributed
from medgen.utils.logging import get_logger
from medgen.utils.provenance import provenance
from medgen.utils.seeding import seed_everything

log = get_logger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    """The run directory: ``cfg.paths.output_dir`` (Hydra's run dir when run from the CLI)."""
    return Path(cfg.paths.output_dir)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit ``cfg.model`` on ``cfg.data`` with ``cfg.trainer``, optionally test; return metrics.

    Writes into the run dir: ``config.yaml`` (composed, resolved), ``provenance.json``,
    ``checkpoints/`` (from the checkpoint callback, with ``last.ckpt``) and ``metrics.json``
    (see :func:`metrics_record`: a NaN/inf metric is written as null and named in ``non_finite``).
    """
    import pytorch_lightning as pl

    check(cfg)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:  # fail before any data is read or model is built
        ckpt_path = str(resolve_checkpoint(ckpt_path))
    if cfg.get("seed") is not None:
        seed_everything(cfg.seed)

    run_dir = output_dir(cfg)
    log.info("run dir: %s", run_dir)
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data)
    model: pl.LightningModule = hydra.utils.instantiate(cfg.model)
    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks")
    loggers = instantiate_group(cfg.get("logger"), "logger")
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)

    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        atomic_write_json(run_dir / "provenance.json", provenance(cfg, seed=cfg.get("seed")))
        for lg in loggers:
            if hasattr(lg, "log_hyperparams"):
                lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    metrics: dict[str, float] = {}
    try:
        if cfg.get("train", True):
            trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path)
            metrics.update(_plain_metrics(trainer.callback_metrics))
        if cfg.get("test", False):
            best = _best_checkpoint(trainer) if cfg.get("train", True) else ckpt_path
            results = trainer.test(model=model, datamodule=datamodule, ckpt_path=best)
            for row in results:
                metrics.update(_plain_metrics(row))
        metrics["global_step"] = float(trainer.global_step)
        if trainer.is_global_zero:
            record = metrics_record(metrics)
            if record.get("non_finite"):
                log.warning(
                    "non-finite metric(s) %s (written as null in metrics.json)",
                    ", ".join(f"{k}={metrics[k]}" for k in record["non_finite"]),
                )
            atomic_write_json(run_dir / "metrics.json", record)
            log.info("metrics: %s", {k: round(v, 5) for k, v in metrics.items()})
            log.info("outputs in %s", run_dir)
    except BaseException:
        end_distributed(barrier=False)  # another rank may be gone: do not wait for it
        raise
    end_distributed(barrier=True)
    return metrics


def _plain_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of ``values`` as floats; NaN and inf are kept (a diverged run must not
    look like one that never logged the metric)."""
    out = {}
    for key, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        out[str(key)] = number
    return out


def metrics_record(metrics: dict[str, float]) -> dict[str, Any]:
    """``metrics`` as strict JSON for ``metrics.json``: JSON has no NaN/inf, so a non-finite value
    is written as ``null`` and its key listed, sorted, under ``"non_finite"`` (present only when
    there is one), e.g. ``{"val/loss": null, "non_finite": ["val/loss"]}``."""
    record: dict[str, Any] = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        record["non_finite"] = bad
    return record


def _best_checkpoint(trainer) -> str | None:
    ckpt_cb = getattr(trainer, "checkpoint_callback", None)
    best = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb else ""
    return best or None


if __name__ == "__main__":  # Lightning's DDP launcher re-executes this file for ranks > 0
    from medgen.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
