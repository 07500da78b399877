"""The third-party notices that would otherwise open every medgen run, silenced in one place.

Each entry is one known message of one library, matched by its text: anything else (a new
deprecation, a user-relevant warning) still shows. :func:`quiet_third_party` is called by the
``medgen`` command for every task; scripts may call it themselves.
"""

from __future__ import annotations

import logging
import warnings

# (message regex, category, what it is)
KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        "torch >= 2.13 about Lightning's own pytree helper; not medgen's code",
    ),
    (
        r"The ``declarative_base\(\)`` function is now available",
        DeprecationWarning,
        "SQLAlchemy 2 about Optuna's storage models, on importing Hydra's Optuna sweeper",
    ),
)

# (logger, message prefix): Lightning's advertisements, logged at INFO on every Trainer
KNOWN_LOG_LINES: tuple[tuple[str, str], ...] = (
    ("pytorch_lightning.utilities.rank_zero", "💡 Tip:"),
    ("lightning_fabric.utilities.rank_zero", "💡 Tip:"),
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip:"),
)

# loggers whose INFO lines are another library's start-up chatter: WARNING and above only
QUIET_LOGGERS: tuple[str, ...] = (
    "alembic",  # Optuna's database migrations, imported when Hydra discovers the Optuna sweeper
)


class _DropPrefix(logging.Filter):
    """Drops the records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_third_party() -> None:
    """Silence :data:`KNOWN_WARNINGS`, :data:`KNOWN_LOG_LINES` and the INFO lines of
    :data:`QUIET_LOGGERS` (idempotent)."""
    for message, category, _ in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, prefix in KNOWN_LOG_LINES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropPrefix(prefix))
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
