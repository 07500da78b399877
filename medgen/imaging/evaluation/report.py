"""The evaluation of a scan cohort as a table, ``evaluation.json`` and ``evaluation.png``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from medgen.imaging.evaluation.evaluate import METRICS
from medgen.imaging.evaluation.loading import VolumeSet
from medgen.utils.atomic import atomic_path, atomic_write_json

JSON_FILE, PNG_FILE = "evaluation.json", "evaluation.png"
# METRICS' words for which way is better, as the table's arrows
ARROWS = {
    "lower": "↓ lower",
    "higher": "↑ higher",
    "higher, ~1": "↑ higher, ~1",
    "near reference": "≈ reference",
    "-": "",
}


def format_table(result: dict[str, Any]) -> str:
    """One row per metric: name, value, which way is better (↑ higher, ↓ lower, ≈ reference:
    close to the reference's own value), what it is."""
    rows = [("metric", "value", "better", "what")]
    for name, value in result["metrics"].items():
        better, what = METRICS.get(name, ("", ""))
        rows.append((name, _number(value), ARROWS.get(better, better), what))
    t = result["details"].get("tstr") or {}
    for i, label in enumerate(t.get("labels") or []):
        syn = (t.get("dice_synthetic") or [None] * (i + 1))[i]
        real = t["dice_real"][i]
        cells = " / ".join("n/a" if v is None else f"{v:.3f}" for v in (syn, real))
        rows.append((f"tstr/dice/{label}", cells, "↑ higher", "Dice trained on synthetic / real"))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _number(value: float | None) -> str:
    """4 decimals, or 4 significant digits for large values (``8.177e+15``); None: ``n/a``."""
    if value is None:
        return "n/a"
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"


def json_record(result: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The JSON-able part of ``result`` (no tensors) with ``extra`` (provenance, config)."""
    return {k: v for k, v in result.items() if k != "features"} | extra


def write_json(out: str | os.PathLike, result: dict[str, Any], **extra: Any) -> Path:
    return atomic_write_json(Path(out) / JSON_FILE, json_record(result, **extra))


def _pca2(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets projected on the first two principal axes of their union."""
    both = np.concatenate([a, b])
    mean = both.mean(0)
    _, _, vt = np.linalg.svd(both - mean, full_matrices=False)
    axes = vt[:2].T if vt.shape[0] >= 2 else np.eye(both.shape[1], 2)
    return (a - mean) @ axes, (b - mean) @ axes


def write_png(
    out: str | os.PathLike,
    result: dict[str, Any],
    samples: VolumeSet,
    reference: VolumeSet,
    train: VolumeSet | None = None,
    *,
    pairs: int = 3,
) -> Path:
    """``evaluation.png``: HU histograms, tissue bands, the features' two main axes, nearest
    distances against the flagging threshold, and the closest sample / training pairs."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from medgen.imaging.viz import slice_grid

    d = result["details"]
    fig = Figure(figsize=(15, 9), dpi=90)
    grid = fig.add_gridspec(2, 4, hspace=0.55)
    unit = samples.units

    ax = fig.add_subplot(grid[0, 0:2])
    h = d["histogram"]
    centres = (np.asarray(h["edges"][:-1]) + np.asarray(h["edges"][1:])) / 2
    for key, colour in (("reference", "tab:blue"), ("samples", "tab:orange")):
        ax.step(centres, np.maximum(h[key], 1e-7), where="mid", label=key, color=colour)
    ax.set_yscale("log")
    ax.set_xlabel(unit)
    ax.set_ylabel("voxel fraction")
    js = result["metrics"]["fidelity/hu_js"]
    ax.set_title(f"intensity histograms (JS distance {js:.3f})")
    ax.legend()

    ax = fig.add_subplot(grid[0, 2])
    if "bands" in d:
        names = list(d["bands"]["samples"])
        x = np.arange(len(names))
        ax.bar(x - 0.2, [d["bands"]["reference"][n] for n in names], 0.4, label="reference")
        ax.bar(x + 0.2, [d["bands"]["samples"][n] for n in names], 0.4, label="samples")
        ax.set_xticks(x, [n.replace("_", " ") for n in names], fontsize=8)
        ax.set_title("voxel fraction per HU band")
        ax.legend(fontsize=8)
    else:
        ax.set_axis_off()

    ax = fig.add_subplot(grid[0, 3])
    f = result["features"]
    fs, fr = _pca2(f["samples"].double().numpy(), f["reference"].double().numpy())
    ax.scatter(fr[:, 0], fr[:, 1], s=14, label="reference", color="tab:blue")
    ax.scatter(fs[:, 0], fs[:, 1], s=14, label="samples", color="tab:orange", marker="x")
    fd = result["metrics"]["fidelity/frechet"]
    ax.set_title(f"features, 2 main axes (FD {fd:.3g})", fontsize=10)
    ax.legend(fontsize=8)

    ax = fig.add_subplot(grid[1, 0])
    mem = d.get("memorization")
    if mem:
        dist = [n["distance"] for n in mem["nearest"]]
        ax.hist(dist, bins=20, color="tab:orange", alpha=0.8, label="sample -> nearest train")
        ax.axvline(mem["threshold"], color="red", label=f"flag below (p{mem['percentile']:g})")
        ax.axvline(mem["median_train_nearest_distance"], color="tab:blue", ls="--",
                   label="train -> train median")  # fmt: skip
        ax.set_xlabel("1 - correlation")
        ax.set_title(f"memorization: {len(mem['flagged'])} flagged", fontsize=10)
        ax.legend(fontsize=7)
    else:
        ax.set_axis_off()

    ax = fig.add_subplot(grid[1, 1:4])
    ax.set_axis_off()
    if mem and train is not None:
        closest = sorted(mem["nearest"], key=lambda n: n["distance"])[:pairs]
        where_s = {i: k for k, i in enumerate(samples.ids)}
        where_t = {i: k for k, i in enumerate(train.ids)}
        rows = []
        for n in closest:
            a = samples.images[where_s[n["sample"]], 0].numpy()
            b = train.images[where_t[n["train"]], 0].numpy()
            rows.append(np.concatenate([slice_grid(a), slice_grid(b)], axis=1))
        ax.imshow(np.concatenate(rows, axis=0), cmap="gray", vmin=0, vmax=1)
        lines = [f"{n['sample']}  ~  {n['train']}  (r={n['correlation']:.3f})" for n in closest]
        ax.set_title("closest pairs: sample (left) | training volume (right)\n" + "\n".join(lines),
                     fontsize=8)  # fmt: skip
    path = Path(out) / PNG_FILE
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


def headline(result: dict[str, Any]) -> dict[str, float]:
    """The metrics with a value, as ``medgen evaluate`` returns them."""
    return {k: float(v) for k, v in result["metrics"].items() if v is not None}
