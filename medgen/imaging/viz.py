"""PNG previews of volumes: a grid of orthogonal mid-slices (axial, coronal, sagittal) per volume.

Volumes are ``(D, H, W)`` arrays whose axes follow the RAS+ affine of medgen's data (axis 0 towards
the subject's right, axis 1 anterior, axis 2 superior). Slices are shown anterior/superior up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
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


def _layout(volumes: Sequence[np.ndarray], fill: float) -> np.ndarray:
    """The raw grid (rows = volumes, columns = views), padded with ``fill``: the layout that
    :func:`slice_grid` shows and a label overlay follows pixel for pixel."""
    rows = []
    for v in volumes:
        tiles = [np.flipud(s) for s in mid_slices(v)]  # origin at the bottom: anterior/superior up
        height = max(t.shape[0] for t in tiles)
        pad = [((0, height - t.shape[0]), (0, 1)) for t in tiles]
        padded = [np.pad(t, w, constant_values=fill) for t, w in zip(tiles, pad, strict=True)]
        rows.append(np.concatenate(padded, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 1), (0, width - r.shape[1])), constant_values=fill) for r in rows]
    return np.concatenate(rows, axis=0)


def slice_grid(volumes, *, vmin: float = -1.0, vmax: float = 1.0) -> np.ndarray:
    """Grid image (rows = volumes, columns = views) as an (H, W) float array in [0, 1]."""
    grid = _layout(_as_volumes(volumes), vmin)
    return np.clip((grid - vmin) / (vmax - vmin), 0.0, 1.0)


def label_colour(value: int) -> tuple[float, float, float]:
    """The overlay colour of label ``value`` >= 1: qualitative palettes one after another
    (tab10, Dark2, Set1: 27 colours), cycling after that."""
    import matplotlib

    palette = [c for name, k in (("tab10", 10), ("Dark2", 8), ("Set1", 9))
               for c in (matplotlib.colormaps[name](i)[:3] for i in range(k))]  # fmt: skip
    return tuple(palette[(int(value) - 1) % len(palette)])  # type: ignore[return-value]


def overlay_rgba(
    volumes: Sequence[np.ndarray], overlays: Sequence[np.ndarray | None], alpha: float
) -> tuple[np.ndarray, list[int]]:
    """``(H, W, 4)`` RGBA of the label maps ``overlays`` (one per volume, None: none) laid out as
    :func:`slice_grid` lays out ``volumes``, label 0 transparent; and the label values shown."""
    if len(overlays) != len(volumes):
        raise ValueError(f"{len(overlays)} overlays for {len(volumes)} volumes")
    maps = []
    for i, (v, lab) in enumerate(zip(volumes, overlays, strict=True)):
        if lab is None:
            maps.append(np.zeros(v.shape, dtype=np.int64))
            continue
        lab = np.rint(np.squeeze(np.asarray(lab))).astype(np.int64)
        if lab.shape != v.shape:
            raise ValueError(f"overlay {i} has shape {lab.shape}, its volume {v.shape}")
        maps.append(lab)
    grid = _layout(maps, 0).astype(np.int64)
    rgba = np.zeros((*grid.shape, 4), dtype=np.float32)
    shown = [int(k) for k in np.unique(grid) if k > 0]
    for k in shown:
        rgba[grid == k] = (*label_colour(k), alpha)
    return rgba, shown


def save_slice_grid(
    volumes,
    path: str | os.PathLike,
    *,
    vmin: float = -1.0,
    vmax: float = 1.0,
    titles: Sequence[str] | None = None,
    scale: float = 2.0,
    caption: str | None = None,
    overlays: Sequence[np.ndarray | None] | None = None,
    label_names: Mapping[int, str] | None = None,
    alpha: float = 0.45,
) -> Path:
    """Write a PNG of orthogonal mid-slices (one row per volume) atomically; return the path.
    Each column is headed by its view's name (:data:`VIEWS`).

    Args:
        volumes: (B, 1, D, H, W) or (B, D, H, W) tensor/array, or a list of (D, H, W) volumes.
        path: output ``.png`` file.
        vmin, vmax: intensity window shown black..white (default the model range [-1, 1]).
        titles: optional row titles (one per volume, e.g. the sample ids).
        scale: figure inches per 32 pixels of the grid.
        caption: a line under the grid (e.g. the window in HU); None: the window itself when it
            is not the model range (``black..white: -1000..1000 (the files' units)``).
        overlays: optional label maps drawn in colour over their volume's slices, one per
            volume (``(D, H, W)`` integer values, 0 transparent; None: no overlay on that row).
        label_names: label value -> name, for the colour legend under the grid.
        alpha: opacity of the overlay.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    vols = _as_volumes(volumes)
    grid = slice_grid(vols, vmin=vmin, vmax=vmax)
    h, w = grid.shape
    if caption is None and (vmin, vmax) != (-1.0, 1.0):
        caption = f"black..white: {vmin:g}..{vmax:g} (the files' units)"
    # text bands above (view names) and below (caption), in inches, so no label covers a slice
    rgba, shown = overlay_rgba(vols, overlays, alpha) if overlays is not None else (None, [])
    width_in, height_in = max(3.0, w / 32 * scale), max(2.0, h / 32 * scale)
    per_row = max(1, int(width_in / 1.4))  # legend entries per line
    lines = -(-len(shown) // per_row)
    legend = 0.22 * lines
    top, bottom = 0.25, (0.25 if caption else 0.0) + legend
    fig = Figure(figsize=(width_in, height_in + top + bottom), dpi=100, facecolor="black")
    total = height_in + top + bottom
    ax = fig.add_axes((0, bottom / total, 1, height_in / total))
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    if rgba is not None and shown:
        ax.imshow(rgba, interpolation="nearest", aspect="auto")
        names = dict(label_names or {})
        for j, k in enumerate(shown):  # the legend: one coloured name per label shown
            line, col = divmod(j, per_row)
            y = (legend - 0.22 * (line + 0.5)) / total
            fig.text((col + 0.5) / per_row, y, f"\u25a0 {names.get(k, k)}",
                     color=label_colour(k), fontsize=8, ha="center", va="center")  # fmt: skip
    ax.set_axis_off()
    left = 0
    for name, tile in zip(VIEWS, mid_slices(vols[0]), strict=True):
        ax.text(left + tile.shape[1] / 2, -1, name, color="white", fontsize=9, ha="center",
                va="bottom", clip_on=False)  # fmt: skip
        left += tile.shape[1] + 1
    if titles:
        row_h = h / len(vols)
        box = {"facecolor": "black", "alpha": 0.6, "pad": 1.5, "edgecolor": "none"}
        for i, title in enumerate(titles[: len(vols)]):
            ax.text(1, i * row_h + 1, str(title), color="yellow", fontsize=8, va="top", bbox=box)
    if caption:
        fig.text(0.5, (legend + (bottom - legend) / 2) / total, caption, color="white",
                 fontsize=8, ha="center", va="center")  # fmt: skip
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def grid_to_uint8(volumes, *, vmin: float = -1.0, vmax: float = 1.0) -> np.ndarray:
    """The slice grid as (H, W, 3) uint8, e.g. for ``TensorBoard.add_image(...,
    dataformats="HWC")``."""
    grid = (slice_grid(volumes, vmin=vmin, vmax=vmax) * 255).round().astype(np.uint8)
    return np.repeat(grid[:, :, None], 3, axis=2)


LABEL_VIEWS = ("overlay", "rows", "none")


def write_preview(
    volumes,
    meta: DataMeta,
    path: str | os.PathLike,
    *,
    titles: Sequence[str] | None = None,
    labels: str = "overlay",
) -> Path:
    """Write a PNG of generated ``volumes`` (B, C, D, H, W) in [-1, 1]: one row per sample and
    channel (any channel count), titled with ``titles[b]`` and, for several channels, the
    channel's name from ``meta.channel_names``. Returns the path (written atomically).

    A joint image + label model's decoded label map is shown as ``labels`` says: ``overlay``
    (in colour over the sample's first channel, with a legend of the label names), ``rows`` (a
    grey row of its own) or ``none``."""
    if labels not in LABEL_VIEWS:
        raise ValueError(f"labels={labels!r}: one of {', '.join(LABEL_VIEWS)}")
    x = torch.as_tensor(volumes).detach().float().cpu()
    if x.ndim != 5 or x.shape[1] != meta.channels:
        raise ValueError(
            f"expected volumes (B, {meta.channels}, D, H, W) for {list(meta.channel_names)}, "
            f"got {tuple(x.shape)}"
        )
    names = [str(t) for t in titles] if titles else [f"sample {b}" for b in range(x.shape[0])]
    caption = window_caption(meta)
    if meta.label_names:  # a joint image + label model: the image, then its decoded label map
        from medgen.imaging.labels import label_table, split_joint

        rows, row_titles, overlays = [], [], []
        k = max(1, len(meta.label_names) - 1)
        for b in range(x.shape[0]):
            image, label = split_joint(x[b], meta)
            for c in range(image.shape[0]):
                rows.append(image[c].numpy())
                row_titles.append(f"{names[b]} {meta.channel_names[c]}")
                overlays.append(label if labels == "overlay" and c == 0 else None)
            if labels == "rows":  # 0..K-1 -> [-1, 1]
                rows.append(np.asarray(label, dtype=np.float32) / k * 2.0 - 1.0)
                row_titles.append(f"{names[b]} labels")
                overlays.append(None)
        return save_slice_grid(
            rows, path, titles=row_titles, caption=caption,
            overlays=overlays if labels == "overlay" else None,
            label_names=label_table(meta.label_names),
        )  # fmt: skip
    rows = [x[b, c].numpy() for b in range(x.shape[0]) for c in range(x.shape[1])]
    row_names = [
        names[b] + (f" {meta.channel_names[c]}" if meta.channels > 1 else "")
        for b in range(x.shape[0])
        for c in range(x.shape[1])
    ]
    return save_slice_grid(
        rows, path, titles=row_names if titles or meta.channels > 1 else None, caption=caption
    )


def window_caption(meta: DataMeta) -> str | None:
    """What black..white shows: the model range [-1, 1] in the data's units, e.g.
    ``black..white: -1000..1000 HU (ct_window)``; None when the data has no intensity mapping."""
    from medgen.imaging.intensity import IntensityMapping

    if not meta.intensity:
        return None
    mapping = IntensityMapping.from_dict(dict(meta.intensity))
    lo, hi = mapping.output_range()
    unit = "HU" if mapping.units == "HU" else "source units"
    return f"black..white: {lo:g}..{hi:g} {unit} ({mapping.kind.value})"
