"""``medgen data moses|qm9``: unpack a packaged data set into the data folder."""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from medgen.tasks.checks import check_data as check
from medgen.utils.logging import get_logger

log = get_logger(__name__)


def data(cfg: DictConfig) -> dict:
    """Unpack ``cfg.dataset`` into ``cfg.paths.data_dir``; returns what was written."""
    from medgen.datasets import prepare

    check(cfg)

    result = prepare(cfg.dataset, cfg.paths.data_dir, cfg.get("wheel_dir"))
    if result.get("skipped"):
        log.info("%s is already in %s (nothing written)", cfg.dataset, result["folder"])
    else:
        log.info(
            "%s: %d files written to %s", cfg.dataset, len(result["written"]), result["folder"]
        )
    return result


if __name__ == "__main__":
    from medgen.cli import main

    sys.exit(main(["data", *sys.argv[1:]]))
