"""``medgen screen``: streaming, parallel scoring and filtering of a molecule file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medgen.tasks.checks import check_screen as check
from medgen.utils.atomic import atomic_write_json
from medgen.utils.logging import get_logger
from medgen.utils.provenance import provenance

log = get_logger(__name__)


def screen(cfg: DictConfig) -> dict:
    """Screen ``cfg.input`` into ``cfg.out``; returns the summary (also written as JSON to the run
    dir and, unless this is one ``shard`` of a screen, beside ``out`` as
    ``<name>.summary.json``)."""
    from medgen.chem.paths import summary_path
    from medgen.chem.screen import screen_file

    job = check(cfg)
    summary = screen_file(
        job.input,
        job.out,
        rejects=job.rejects,
        smiles_column=job.smiles_column,
        rules=job.rules,
        ranges=job.ranges,
        dedup=job.dedup,
        sort_by=job.sort_by,
        descending=job.descending,
        top_k=job.top_k,
        groups=job.properties,
        n_jobs=job.n_jobs,
        chunk_size=job.chunk_size,
        limit=job.limit,
        max_smiles_length=job.max_smiles_length,
        progress=job.progress,
        engine=job.engine,
        scheduler=job.scheduler,
        cluster=job.cluster,
        partition_size=job.partition_size,
        shard=job.shard,
        overwrite=job.overwrite,
        keep_rejects=job.keep_rejects,
        memory_limit=job.memory_limit,
        dualuse=job.dualuse,
    )
    log.info("screening summary:\n%s", summary.table())
    record: dict[str, Any] = {
        "summary": summary.as_dict(),
        "provenance": provenance(job_config(cfg)),
    }
    record["config"] = OmegaConf.to_container(job_config(cfg), resolve=True)
    if job.shard is None:  # a shard's counts are its own: the merging run writes this file
        atomic_write_json(summary_path(job.out), record)
    atomic_write_json(Path(cfg.paths.output_dir) / "summary.json", record)
    return summary.as_dict()


def keeps_run_folder(cfg: DictConfig) -> bool:
    """Whether ``medgen screen`` keeps its run folder: only with ``keep_run=true`` (the summary
    is written beside ``out`` anyway)."""
    return bool(cfg.get("keep_run"))


def job_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` without Hydra's own ``hydra`` node (present when composed in tests)."""
    # masked_copy takes str keys, as a composed config's top-level keys are
    return OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])


if __name__ == "__main__":
    from medgen.cli import main

    sys.exit(main(["screen", *sys.argv[1:]]))
