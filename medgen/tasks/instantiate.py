"""Build the objects of a training run from config nodes that carry ``_target_``."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from medgen.utils.logging import get_logger

log = get_logger(__name__)


def instantiate_group(node: DictConfig | None, kind: str) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a dict-of-configs group (callbacks, loggers).

    Entries set to ``null`` are dropped, so ``callbacks.lr_monitor=null`` switches one off.
    """
    if not node:
        return []
    if not isinstance(node, DictConfig):
        raise TypeError(f"the {kind} config must be a mapping of name -> config, got {type(node)}")
    objects = []
    for name, sub in node.items():
        if sub is None:
            continue
        if not isinstance(sub, DictConfig) or "_target_" not in sub:
            raise ValueError(f"{kind}.{name!s} has no _target_: {sub}")
        log.info("instantiating %s %s <%s>", kind, name, sub._target_)
        objects.append(hydra.utils.instantiate(sub))
    return objects
