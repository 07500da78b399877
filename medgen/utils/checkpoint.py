"""Checkpoint lookup and safe loading (``weights_only=True``: no pickled code is ever executed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Return the checkpoint file for ``path``: a ``.ckpt`` file, or a run dir holding one.

    A run dir resolves to ``<dir>/checkpoints/last.ckpt`` (or ``<dir>/last.ckpt``).
    Raises ``FileNotFoundError`` naming the path when nothing is there.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        for candidate in (p / "checkpoints" / "last.ckpt", p / "last.ckpt"):
            if candidate.is_file():
                return candidate
        ckpts = sorted(p.rglob("*.ckpt"), key=lambda c: c.stat().st_mtime)
        if ckpts:
            return ckpts[-1]
        raise FileNotFoundError(f"no checkpoint (*.ckpt) found in run dir {p}")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    return p


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint dict with ``torch.load(weights_only=True)``.

    medgen's modules save only state dicts and plain hyperparameters, so this never needs pickle.
    """
    p = resolve_checkpoint(path)
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt zip, truncated file, unsafe pickle
        raise RuntimeError(f"cannot load checkpoint {p}: {err}") from err


def checkpoint_kind(ckpt: dict[str, Any]) -> str | None:
    """The model family a checkpoint holds (``hyper_parameters['kind']``), if recorded."""
    return (ckpt.get("hyper_parameters") or {}).get("kind")
