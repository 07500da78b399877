"""Utilities shared by all of medgen: seeding, atomic writes, provenance, checkpoints.

Names are imported lazily, so ``from medgen.utils import atomic_write_text`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# eager: these modules import no torch, and the function `provenance` shares its module's name (a
# lazy lookup would find the submodule once anything imported it)
from medgen.utils.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from medgen.utils.provenance import config_hash, file_sha256, provenance

_EXPORTS = {
    "load_checkpoint": "checkpoint",
    "resolve_checkpoint": "checkpoint",
    "sample_generator": "seeding",
    "sample_seed": "seeding",
    "seed_everything": "seeding",
}

__all__ = [  # noqa: RUF022 - grouped by module
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "config_hash",
    "file_sha256",
    "provenance",
    *_EXPORTS,
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'medgen.utils' has no attribute {name!r}")
    return getattr(importlib.import_module(f"medgen.utils.{_EXPORTS[name]}"), name)
