"""``medgen train``: build datamodule, model, callbacks, loggers and trainer; then fit."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, ModelSummary

from medgen.errors import UserError
from medgen.tasks.checks import check_train as check
from medgen.tasks.instantiate import instantiate_group
from medgen.utils.atomic import atomic_write_json, atomic_write_text
from medgen.utils.checkpoint import resolve_checkpoint
from medgen.utils.distributed import end_distributed
from medgen.utils.logging import format_metrics, format_value, get_logger, parameter_summary
from medgen.utils.provenance import provenance
from medgen.utils.seeding import seed_everything

log = get_logger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    """The run directory: ``cfg.paths.output_dir`` (Hydra's run dir when run from the CLI)."""
    return Path(cfg.paths.output_dir)


class Metrics(dict):
    """What :func:`train` returns: the metrics, and as a number (``float(metrics)``) the one named
    by ``optimized_metric`` — what a Hydra sweeper such as Optuna minimizes or maximizes."""

    objective: str | None = None

    def __float__(self) -> float:
        if self.objective is None:
            raise TypeError("no optimized_metric was set: set optimized_metric=<metric name>")
        return float(self[self.objective])


def train(cfg: DictConfig) -> Metrics:
    """Fit ``cfg.model`` on ``cfg.data`` with ``cfg.trainer``, optionally test; return metrics.

    Writes into the run dir: ``config.yaml`` (composed, resolved), ``provenance.json``,
    ``checkpoints/`` (the best by the monitored metric, and ``last.ckpt``, the latest state, from
    :class:`~medgen.utils.latest_checkpoint.LatestCheckpoint`) and ``metrics.json``
    (see :func:`metrics_record`: a NaN/inf metric is written as null and named in ``non_finite``).
    A resume into the same run dir keeps the first run's files and adds
    ``config.resume-<k>.yaml`` and ``provenance.resume-<k>.json``. With ``optimized_metric``,
    ``float()`` of the result is that metric (a :class:`UserError` names the metrics there are
    when it is missing).
    """
    import pytorch_lightning as pl

    job = check(cfg)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:  # fail before any data is read or model is built
        ckpt_path = str(resolve_checkpoint(ckpt_path))
    if cfg.get("seed") is not None:
        seed_everything(cfg.seed)

    run_dir = output_dir(cfg)
    log.info("run dir: %s", run_dir)
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data)
    model: pl.LightningModule = hydra.utils.instantiate(cfg.model)
    prepare = getattr(model, "prepare_resume", None)
    if ckpt_path and cfg.get("train", True) and callable(prepare):
        prepare(ckpt_path)  # build the model the run continues (a mismatch is found here)
    callbacks = [*instantiate_group(cfg.get("callbacks"), "callbacks"), FitSteps()]
    summary: dict[str, Any] = {}
    if cfg.trainer.get("enable_model_summary", True) and not any(
        isinstance(c, ModelSummary) for c in callbacks
    ):  # replaces Lightning's, which counts EMA copies
        callbacks.append(ParameterSummary())
        summary["enable_model_summary"] = False  # Lightning adds no summary of its own then
    suffix = _resume_suffix(run_dir)  # a resume into this run dir keeps the earlier run's files
    loggers = instantiate_group(_resumed_loggers(cfg.get("logger"), suffix), "logger")
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers, **summary
    )
    _refuse_sweep_relaunch(trainer)

    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        if suffix:
            log.info("resuming %s in its own run dir %s", ckpt_path, run_dir)
        yaml_text = OmegaConf.to_yaml(cfg, resolve=True)
        atomic_write_text(run_dir / f"config{suffix}.yaml", yaml_text)
        record = provenance(cfg, seed=cfg.get("seed"))
        atomic_write_json(run_dir / f"provenance{suffix}.json", record)
        for lg in loggers:
            if hasattr(lg, "log_hyperparams"):
                lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    metrics = Metrics()
    metrics.objective = job.optimized_metric
    try:
        if cfg.get("train", True):
            trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path)
            metrics.update(_plain_metrics(trainer.callback_metrics))
        if cfg.get("test", False):
            best = _best_checkpoint(trainer) if cfg.get("train", True) else ckpt_path
            results = trainer.test(model=model, datamodule=datamodule, ckpt_path=best)
            for row in results:
                metrics.update(_plain_metrics(row))
        # with ddp_spawn the fit ran in other processes: FitSteps brought their step count back
        metrics["global_step"] = max(float(trainer.global_step), metrics.get("global_step", 0.0))
        if trainer.is_global_zero:
            record = metrics_record(metrics)
            if record.get("non_finite"):
                log.warning(
                    "non-finite metric(s) %s (written as null in metrics.json)",
                    ", ".join(f"{k}={metrics[k]}" for k in record["non_finite"]),
                )
            atomic_write_json(run_dir / "metrics.json", record)
            log.info("metrics: %s", format_metrics(metrics))
            log.info("outputs in %s", run_dir)
    except BaseException:
        end_distributed(barrier=False)  # another rank may be gone: do not wait for it
        raise
    end_distributed(barrier=True)
    if job.optimized_metric is not None and job.optimized_metric not in metrics:
        raise UserError(
            f"optimized_metric={job.optimized_metric!r} was not logged; the run logged "
            f"{sorted(metrics)}"
        )
    return metrics


class FitSteps(Callback):
    """Puts the fit's step count among the callback metrics, which Lightning's ``ddp_spawn``
    sends back to the main process (its own trainer never stepped)."""

    def on_fit_end(self, trainer, pl_module) -> None:
        import torch

        trainer.callback_metrics["global_step"] = torch.tensor(float(trainer.global_step))


class ParameterSummary(ModelSummary):
    """At fit start, the model's parameters without its EMA copy
    (:func:`medgen.utils.logging.parameter_summary`) and each optimizer's learning rate."""

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        log.info("model %s:\n%s", type(pl_module).__name__, parameter_summary(pl_module))
        for opt in trainer.optimizers:
            rates = ", ".join(_rate(g) for g in opt.param_groups)
            log.info("optimizer %s: lr=%s", type(opt).__name__, rates)


def _rate(group: dict[str, Any]) -> str:
    """A parameter group's learning rate; under a schedule, its base rate and its first one."""
    now = format_value("lr", group["lr"])
    base = group.get("initial_lr")  # set by torch's schedulers
    if base is None or base == group["lr"]:
        return now
    return f"{format_value('lr', base)} (scheduled; {now} at the first step)"


def _refuse_sweep_relaunch(trainer) -> None:
    """Lightning's ``ddp`` launcher re-executes the command line for the other ranks: inside a
    Hydra multirun (``-m``) that is the whole sweep again, into a second folder."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    launcher = type(getattr(trainer.strategy, "launcher", None)).__name__
    if launcher != "_SubprocessScriptLauncher" or trainer.world_size < 2:
        return
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise UserError(
            "trainer.strategy=ddp under a Hydra multirun (-m) would relaunch the whole sweep for "
            "each rank: use trainer.strategy=ddp_spawn for sweeps, or launch with torchrun/srun"
        )


def _resumed_loggers(node: Any, suffix: str) -> Any:
    """CSV loggers of a resumed run write ``<name>/resume-<k>/metrics.csv``: Lightning's CSV
    logger deletes an existing ``metrics.csv`` in its folder (TensorBoard appends by itself)."""
    if not suffix or not node:
        return node
    node = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    for key in list(node):
        entry = node[key]
        if entry is not None and str(entry.get("_target_", "")).endswith("CSVLogger"):
            entry.version = suffix.lstrip(".")
    return node


def _resume_suffix(run_dir: Path) -> str:
    """``""`` for a new run dir, ``".resume-<k>"`` when an earlier run's config is already there."""
    if not (run_dir / "config.yaml").is_file():
        return ""
    k = 1
    while (run_dir / f"config.resume-{k}.yaml").is_file():
        k += 1
    return f".resume-{k}"


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
    """The first ModelCheckpoint's best file: ``trainer.checkpoint_callback`` may be the
    LatestCheckpoint, whose ``last.ckpt`` is not a best."""
    ckpt_cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    best = ckpt_cb.best_model_path if ckpt_cb is not None else ""
    return best or None


if __name__ == "__main__":  # Lightning's DDP launcher re-executes this file for ranks > 0
    from medgen.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
