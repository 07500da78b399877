"""``medgen sample``: draw samples from a checkpoint; its ``kind`` picks the pipeline."""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig

from medgen.tasks.checks import check_sample as check
from medgen.utils.logging import get_logger

log = get_logger(__name__)


def sample(cfg: DictConfig) -> Any:
    """Sample ``cfg.n`` items from ``cfg.ckpt`` into ``cfg.out``; returns the pipeline's summary."""
    _, ckpt_file, kind = check(cfg)
    log.info("checkpoint %s holds a %s model", ckpt_file, kind)
    if kind == "diffusion3d":
        from medgen.imaging.sample import sample_from_config
    elif kind == "graph_vae":
        from medgen.molecules.sample import sample_from_config
    else:
        raise ValueError(
            f"checkpoint {ckpt_file} has hyper_parameters.kind={kind!r}; "
            "expected 'diffusion3d' or 'graph_vae' (was it written by medgen train?)"
        )
    return sample_from_config(cfg, ckpt_file)


if __name__ == "__main__":  # Lightning's DDP launcher re-executes this file for ranks > 0
    from medgen.cli import main

    sys.exit(main(["sample", *sys.argv[1:]]))
