"""Provenance records: what made an output (version, commit, config hash, seed, time, host)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any


def plain_container(cfg: Any) -> Any:
    """An OmegaConf config as plain Python containers (resolved); anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return cfg


# Keys that say where or how a run was launched, not what it computes: a rerun of the same recipe
# into another folder (or resumed from a checkpoint) has the same config hash.
RUN_LOCATION_KEYS = ("paths", "hydra", "ckpt_path")


def config_hash(cfg: Any) -> str:
    """sha256 (first 16 hex digits) of a config's canonical JSON (sorted keys, resolved values).

    Top-level :data:`RUN_LOCATION_KEYS` (run dir, data dir, resume checkpoint) are left out.
    """
    plain = plain_container(cfg)
    if isinstance(plain, dict):
        plain = {k: v for k, v in plain.items() if k not in RUN_LOCATION_KEYS}
    text = json.dumps(plain, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the source checkout medgen runs from (with ``+dirty`` if modified), or None."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if out.returncode != 0:
            return None
        commit = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return commit + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(cfg: Any = None, *, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """A provenance record: medgen version, git commit, config hash, seed, UTC time, host."""
    import torch

    from medgen import __version__

    record: dict[str, Any] = {
        "medgen_version": __version__,
        "git_commit": git_commit(),
        "config_hash": config_hash(cfg) if cfg is not None else None,
        "seed": seed,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    record.update(extra)
    return record
