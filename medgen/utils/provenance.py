"""Provenance records: what made an output (version, commit, config hash, seed, time, host)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any


def _plain(cfg: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, DictConfig | ListConfig):
            return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return cfg


def config_hash(cfg: Any) -> str:
    """sha256 (first 16 hex digits) of a config's canonical JSON (sorted keys, resolved values)."""
    text = json.dumps(_plain(cfg), sort_keys=True, default=str, separators=(",", ":"))
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
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    record.update(extra)
    return record
