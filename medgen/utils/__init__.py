"""Utilities shared by all of medgen: seeding, atomic writes, provenance, checkpoints."""

from medgen.utils.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from medgen.utils.checkpoint import load_checkpoint, resolve_checkpoint
from medgen.utils.provenance import config_hash, file_sha256, provenance
from medgen.utils.seeding import sample_generator, sample_seed, seed_everything

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "config_hash",
    "file_sha256",
    "load_checkpoint",
    "provenance",
    "resolve_checkpoint",
    "sample_generator",
    "sample_seed",
    "seed_everything",
]
