"""PNG previews of volumes: a grid of orthogonal mid-slices (axial, coronal, sagittal) per volume.

Volumes are ``(D, H, W)`` arrays whose axes follow the RAS+ affine of medgen's data (axis 0 towards
the subject's right, axis 1 anterior, axis 2 superior). Slices are shown anterior/superior up.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medgen.records import DataMeta
from medgen.utils.atomic import atomic_path

VIEWS = ("axial", "coronal", "sagittal")


def _as_volumes(volumes) -> list[np.ndarray]:
    """Accept a tensor/array (B, 1, D, H, W), (B, D, H, W) or (D, H, W), or a list of volumes
    (several channels: :func:`write_preview`)."""
    if isinstance(volumes, torch.Tensor):
        volumes = volumes.detach().float().cpu().numpy()
    if isinstance(volumes, np.ndarray):
        if volumes.ndim == 3:
            volumes = volumes[None]
        if volumes.ndim == 5:
            volumes = volumes[:, 0]
        if volumes.ndim != 4:
            raise ValueError(
                f"expected volumes (B, 1, D, H, W) or (B, D, H, W), got {volumes.shape}"
            )
        return list(volumes)
    out = []
    for v in volumes:
        v = v.detach().float().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        v = np.squeeze(v)
        if v.ndim != 3:
            raise ValueError(f"each volume must be 3D after squeezing, got shape {v.shape}")
        out.append(v)
    return out


def mid_slices(volume: np.ndarray) -> list[np.ndarray]:
    """The axial, coronal and sagittal mid-slices of a (D, H, W) RAS volume, for display."""
    d, h, w = volume.shape
    axial = volume[:, :, w // 2].T  # rows: posterior->anterior, cols: left->right (axis 0)
    coronal = volume[:, h // 2, :].T  # rows: inferior->superior
    sagittal = volume[d // 2, :, :].T  # rows: inferior->superior, cols: posterior->anterior
    return [axial, coronal, sagittal]


def slice_grid(volumes, *, vmin: float = -1.0, vmax: float = 1.0) -> np.ndarray:
    """Grid image (rows = volumes, columns = views) as an (H, W) float array in [0, 1]."""
    vols = _as_volumes(volumes)
    rows = []
    for v in vols:
        tiles = [np.flipud(s) for s in mid_slices(v)]  # origin at the bottom: anterior/superior up
        height = max(t.shape[0] for t in tiles)
        padded = [
            np.pad(t, ((0, height - t.shape[0]), (0, 1)), constant_values=vmin) for t in tiles
        ]
        rows.append(np.concatenate(padded, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 1), (0, width - r.shape[1])), constant_values=vmin) for r in rows]
    grid = np.concatenate(rows, axis=0)
    return np.clip((grid - vmin) / (vmax - vmin), 0.0, 1.0)


def save_slice_grid(
    volumes,
    path: str | os.PathLike,
    *,
    vmin: float = -1.0,
    vmax: float = 1.0,
    titles: Sequence[str] | None = None,
    scale: float = 2.0,
) -> Path:
    """Write a PNG of orthogonal mid-slices (one row per volume) atomically; return the path.

    Args:
        volumes: (B, 1, D, H, W) or (B, D, H, W) tensor/array, or a list of (D, H, W) volumes.
        path: output ``.png`` file.
        vmin, vmax: intensity window shown black..white (default the model range [-1, 1]).
        titles: optional row titles (one per volume).
        scale: figure inches per 32 pixels of the grid.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    vols = _as_volumes(volumes)
    grid = slice_grid(vols, vmin=vmin, vmax=vmax)
    h, w = grid.shape
    fig = Figure(figsize=(max(2.0, w / 32 * scale), max(2.0, h / 32 * scale)), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if titles:
        row_h = h / len(vols)
        for i, title in enumerate(titles[: len(vols)]):
            ax.text(1, i * row_h + 1, str(title), color="yellow", fontsize=7, va="top")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def grid_to_uint8(volumes, *, vmin: float = -1.0, vmax: float = 1.0) -> np.ndarray:
    """The slice grid as (H, W, 3) uint8, e.g. for ``TensorBoard.add_image(...,
    dataformats="HWC")``."""
    grid = (slice_grid(volumes, vmin=vmin, vmax=vmax) * 255).round().astype(np.uint8)
    return np.repeat(grid[:, :, None], 3, axis=2)


def write_preview(
    volumes, meta: DataMeta, path: str | os.PathLike, *, titles: Sequence[str] | None = None
) -> Path:
    """Write a PNG of generated ``volumes`` (B, C, D, H, W) in [-1, 1]: one row per sample and
    channel (any channel count), titled with ``titles[b]`` and, for several channels, the
    channel's name from ``meta.channel_names``. Returns the path (written atomically)."""
    x = torch.as_tensor(volumes).detach().float().cpu()
    if x.ndim != 5 or x.shape[1] != meta.channels:
        raise ValueError(
            f"expected volumes (B, {meta.channels}, D, H, W) for {list(meta.channel_names)}, "
            f"got {tuple(x.shape)}"
        )
    rows = [x[b, c].numpy() for b in range(x.shape[0]) for c in range(x.shape[1])]
    names = [str(t) for t in titles] if titles else [f"sample {b}" for b in range(x.shape[0])]
    labels = [
        names[b] + (f" {meta.channel_names[c]}" if meta.channels > 1 else "")
        for b in range(x.shape[0])
        for c in range(x.shape[1])
    ]
    return save_slice_grid(rows, path, titles=labels if titles or meta.channels > 1 else None)
