"""``medgen sample``: draw samples from any generator's checkpoint into ``out``.

The checkpoint names its module's class (:func:`medgen.generation.load_generator`), the generator
resolves the settings and owns the output through its cohort, and
:func:`medgen.generation.sample_to` shards the work over devices with ``Trainer.predict``. No model
family is named here: a new generator needs no edit to this file.

Array jobs: ``indices=a:b`` draws only samples ``a..b-1`` of the cohort of ``n`` (independent
jobs fill one ``out`` on a shared file system without clashing); ``finalize_only=true`` then
writes the index files (manifest, datalist, the merged molecule file) once.
"""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medgen.tasks.checks import check_sample as check
from medgen.utils.logging import get_logger

log = get_logger(__name__)


def sample(cfg: DictConfig) -> dict[str, Any]:
    """Sample ``cfg.n`` items from ``cfg.ckpt`` into ``cfg.out``; returns the run's summary."""
    from medgen.generation import finalize_cohort, sample_to

    plan = check(cfg)
    job = plan.job
    if job.finalize_only:  # after array jobs (indices=a:b) drew every sample
        summary = finalize_cohort(
            plan.generator, plan.settings, out=job.out, checkpoint=plan.checkpoint, n=job.n,
            preview=job.preview,
        )  # fmt: skip
        log.info("finalized %s", job.out)
        return summary
    log.info("checkpoint %s holds a %s", plan.checkpoint, type(plan.generator).__name__)
    # the trainer group's settings (accelerator, devices, strategy, precision, ...); callbacks,
    # loggers and the distributed sampler are the sampling driver's own
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer_cfg, dict)
    # Trainer keyword arguments: the group's keys are its parameter names
    trainer_kwargs = {str(k): v for k, v in trainer_cfg.items() if k != "_target_"}
    summary = sample_to(
        plan.generator,
        plan.settings,
        out=job.out,
        checkpoint=plan.checkpoint,
        n=job.n,
        batch_size=job.batch_size,
        overwrite=job.overwrite,
        preview=job.preview,
        trainer_kwargs=trainer_kwargs,
        indices=job.index_range(),
    )
    log.info("outputs in %s", job.out)
    return summary


if __name__ == "__main__":  # Lightning's DDP launcher re-executes this file for ranks > 0
    from medgen.cli import main

    sys.exit(main(["sample", *sys.argv[1:]]))
