"""Per-module loggers. Library code only calls :func:`get_logger`; the CLI configures handlers."""

from __future__ import annotations

import logging


def get_logger(name: str) -> logging.Logger:
    """The logger for a module (``get_logger(__name__)``)."""
    return logging.getLogger(name)


def configure_logging(level: int = logging.INFO) -> None:
    """Configure the root logger for scripts that do not run under Hydra (which does it itself)."""
    logging.basicConfig(level=level, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
