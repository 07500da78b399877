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
    dir and beside ``out`` as ``<name>.summary.json``)."""
    from medgen.chem.paths import summary_path
    from medgen.chem.screen import screen_file

    check(cfg)

    def plain(value):  # a list from YAML, or one bare name from the command line (rules=pains)
        if value is None or isinstance(value, str):
            return value if value is None else [value]
        return list(OmegaConf.to_container(value, resolve=True))

    summary = screen_file(
        cfg.input,
        cfg.out,
        rejects=cfg.get("rejects"),
        smiles_column=cfg.get("smiles_column"),
        rules=plain(cfg.rules) or [],
        ranges=plain(cfg.ranges) or [],
        dedup=bool(cfg.dedup),
        sort_by=cfg.get("sort_by"),
        descending=bool(cfg.descending),
        top_k=cfg.get("top_k"),
        groups=plain(cfg.get("properties")),
        n_jobs=cfg.get("n_jobs"),
        chunk_size=int(cfg.chunk_size),
        limit=cfg.get("limit"),
        max_smiles_length=cfg.get("max_smiles_length"),
        progress=bool(cfg.progress),
    )
    log.info("screening summary:\n%s", summary.table())
    record: dict[str, Any] = {
        "summary": summary.as_dict(),
        "provenance": provenance(job_config(cfg)),
    }
    record["config"] = OmegaConf.to_container(job_config(cfg), resolve=True)
    atomic_write_json(summary_path(cfg.out), record)
    atomic_write_json(Path(cfg.paths.output_dir) / "summary.json", record)
    return summary.as_dict()


def job_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` without Hydra's own ``hydra`` node (present when composed in tests)."""
    # masked_copy takes str keys, as a composed config's top-level keys are
    return OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])


if __name__ == "__main__":
    from medgen.cli import main

    sys.exit(main(["screen", *sys.argv[1:]]))
