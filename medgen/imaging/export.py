"""Export generated volumes as a synthetic cohort other tools read without surprises.

Writes NIfTI volumes in source units (HU for CT) with the training affine, their sidecars, and the
cohort files (manifest, Decathlon datalist, preview). Every file is written atomically (temp file +
rename). The folder layout, :class:`CohortSpec` and the resume rules (what a rerun into the same
``out`` keeps, clears or refuses) live in :mod:`medgen.imaging.cohort`; their names are re-exported
here, so ``from medgen.imaging.export import CohortSpec, intact_indices`` keeps working.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medgen.imaging.cohort import (
    DATALIST,
    IDENTITY_KEYS,
    IMAGES,
    LABELS,
    MANIFEST,
    PREVIEW,
    RUN_FILE,
    CohortSpec,
    IntensityMap,
    check_output,
    clear_output,
    intact_indices,
    prepare_output,
    read_manifest,
    sample_name,
    sidecars,
)
from medgen.utils.atomic import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temporaries,
)
from medgen.utils.logging import get_logger
from medgen.utils.provenance import file_sha256, provenance
from medgen.utils.seeding import sample_seed

log = get_logger(__name__)

__all__ = [
    "DATALIST",
    "IDENTITY_KEYS",
    "IMAGES",
    "INT16_MAX",
    "INT16_MIN",
    "LABELS",
    "MANIFEST",
    "MANIFEST_COLUMNS",
    "PREVIEW",
    "RUN_FILE",
    "CohortSpec",
    "IntensityMap",
    "check_output",
    "clear_output",
    "export_volumes",
    "finalize_output",
    "intact_indices",
    "prepare_output",
    "read_manifest",
    "sample_name",
    "sidecars",
    "to_source_units",
    "write_datalist",
    "write_manifest",
    "write_cohort_preview",
    "write_sample",
]

MANIFEST_COLUMNS = (
    "file",
    "sha256",
    "label",
    "label_sha256",
    "seed",
    "index",
    "sample_seed",
    "shape",
    "spacing",
    "dtype",
)
INT16_MIN, INT16_MAX = -32768, 32767


def to_source_units(volume: Any, spec: CohortSpec) -> np.ndarray:
    """Map a generated volume ``(1, D, H, W)`` or ``(D, H, W)`` in [-1, 1] to source units.

    Returns ``(D, H, W)``: int16 when the mapping's units are HU (rounded, clipped to the int16
    range), float32 otherwise.
    """
    import torch

    x = torch.as_tensor(volume).detach().to("cpu", torch.float32)
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected one channel (1, D, H, W), got shape {tuple(x.shape)}")
        x = x[0]
    if x.ndim != 3:
        raise ValueError(f"expected a volume (1, D, H, W) or (D, H, W), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("generated volume holds NaN or infinite values")
    y = np.asarray(torch.as_tensor(spec.intensity.from_unit(x.clamp(-1.0, 1.0))), dtype=np.float64)
    if spec.is_ct:
        return np.clip(np.rint(y), INT16_MIN, INT16_MAX).astype(np.int16)
    return y.astype(np.float32)


def _nifti(data: np.ndarray, spec: CohortSpec, description: str):
    import nibabel as nib

    img = nib.Nifti1Image(data, spec.affine)
    img.set_qform(spec.affine, code=1)
    img.set_sform(spec.affine, code=1)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = description[:79].encode()
    return img


def _save_nifti(img, path: Path) -> str:
    """Save atomically; return the file's sha256."""
    import nibabel as nib

    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return file_sha256(path)


def write_sample(
    out: str | os.PathLike,
    index: int,
    volume: Any,
    spec: CohortSpec,
    *,
    label: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write sample ``index``: image, optional label map, then its sidecar (returned as a dict)."""
    out = Path(out)
    name = sample_name(index)
    data = to_source_units(volume, spec)
    image = out / IMAGES / f"{name}.nii.gz"
    sha = _save_nifti(_nifti(data, spec, f"medgen {spec.name} seed {spec.seed} {name}"), image)
    record: dict[str, Any] = {
        "file": f"{IMAGES}/{name}.nii.gz",
        "sha256": sha,
        "index": int(index),
        "sample_seed": sample_seed(spec.seed, int(index)),
        "shape": list(data.shape),
        "spacing": list(spec.spacing),
        "affine": spec.affine.tolist(),
        "dtype": str(data.dtype),
        "modality": spec.modality,
        "units": spec.units,
        "value_range": [float(data.min()), float(data.max())],
        "condition_name": spec.condition_name,
        "training_config_hash": spec.config_hash,
        "source": spec.source,
        **spec.identity(),
        **dict(spec.extra),
        **dict(extra or {}),
    }
    if label is not None:
        lab = np.asarray(label.cpu() if hasattr(label, "cpu") else label).squeeze()
        if lab.shape != data.shape:
            raise ValueError(f"label map of {name} has shape {lab.shape}, image has {data.shape}")
        lab = lab.astype(np.uint8 if lab.min() >= 0 and lab.max() < 256 else np.int16)
        label_file = out / LABELS / f"{name}.nii.gz"
        record["label"] = f"{LABELS}/{name}.nii.gz"
        record["label_sha256"] = _save_nifti(_nifti(lab, spec, f"medgen labels {name}"), label_file)
    # provenance last so that its keys (time, version, commit) are never shadowed by spec.extra;
    # its config_hash (of no config) is dropped: training_config_hash is the one that matters
    prov = provenance(None, seed=spec.seed)
    record.update({k: v for k, v in prov.items() if k != "config_hash"})
    atomic_write_json(out / IMAGES / f"{name}.json", record)
    return record


# ------------------------------------------------------------------------------ cohort files


def write_manifest(out: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``out/manifest.csv`` (one row per sample, sorted by index)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in sorted(records, key=lambda r: r["index"]):
        row = {k: r.get(k, "") for k in MANIFEST_COLUMNS}
        row["shape"] = "x".join(str(s) for s in r["shape"])
        row["spacing"] = "x".join(f"{s:g}" for s in r["spacing"])
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return atomic_write_text(Path(out) / MANIFEST, buf.getvalue())


def write_datalist(
    out: str | os.PathLike, records: Sequence[Mapping[str, Any]], spec: CohortSpec
) -> Path:
    """Write ``out/dataset.json`` in the Medical Segmentation Decathlon datalist format.

    Paths are relative to ``out`` (MONAI's ``load_decathlon_datalist`` resolves them from there).
    """
    from medgen import __version__

    records = sorted(records, key=lambda r: r["index"])
    training = []
    for r in records:
        item = {"image": r["file"]}
        if r.get("label"):
            item["label"] = r["label"]
        if spec.condition is not None:  # read back by data=nifti as the class condition
            item["class_label"] = int(spec.condition)
        training.append(item)
    cond = "" if spec.condition is None else f", condition {spec.condition_name or spec.condition}"
    datalist: dict[str, Any] = {
        "name": spec.name,
        "description": (
            f"Synthetic {spec.modality} volumes generated by medgen {__version__} from checkpoint "
            f"sha256 {str(spec.checkpoint_sha256)[:16]} (sampler {spec.sampler}, "
            f"steps {spec.steps}, seed {spec.seed}, guidance {spec.guidance_scale}{cond})"
        ),
        "reference": "medgen synthetic cohort; see run.json and the per-sample sidecars",
        "licence": "same terms as the model's training data",
        "release": __version__,
        "tensorImageSize": "3D",
        "modality": {"0": spec.modality},
        "numTraining": len(training),
        "numTest": 0,
        "training": training,
        "test": [],
    }
    if spec.label_names:
        datalist["labels"] = {str(k): v for k, v in sorted(spec.label_names.items())}
    return atomic_write_json(Path(out) / DATALIST, datalist)


def write_cohort_preview(
    out: str | os.PathLike, records: Sequence[Mapping[str, Any]], spec: CohortSpec, *, k: int = 4
) -> Path | None:
    """Write ``out/preview.png``: orthogonal mid-slices of the first ``k`` samples, source units."""
    import nibabel as nib

    from medgen.imaging.viz import save_slice_grid

    first = sorted(records, key=lambda r: r["index"])[:k]
    if not first:
        return None
    vols = [np.asarray(nib.load(Path(out) / r["file"]).dataobj, dtype=np.float32) for r in first]
    lo, hi = (float(np.asarray(spec.intensity.from_unit(np.float32(v)))) for v in (-1.0, 1.0))
    titles = [sample_name(r["index"]) for r in first]
    return save_slice_grid(vols, Path(out) / PREVIEW, vmin=lo, vmax=hi, titles=titles)


def finalize_output(
    out: str | os.PathLike, spec: CohortSpec, *, preview: bool = True
) -> dict[str, Any]:
    """Rebuild manifest, datalist and preview from the samples on disk (one process only).

    Only samples whose sidecar matches ``spec``'s identity and whose files exist are listed.
    """
    out = Path(out)
    remove_stale_temporaries(out)
    want = spec.identity()
    records = [
        r
        for r in sidecars(out).values()
        if all(r.get(k) == v for k, v in want.items()) and (out / r["file"]).is_file()
    ]
    summary: dict[str, Any] = {
        "out": str(out),
        "count": len(records),
        "manifest": str(write_manifest(out, records)),
        "dataset": str(write_datalist(out, records, spec)),
        "preview": None,
    }
    if preview and records:
        path = write_cohort_preview(out, records, spec)
        summary["preview"] = str(path) if path else None
    return summary


def export_volumes(
    volumes: Any,
    out: str | os.PathLike,
    *,
    affine: Any,
    intensity: Any,
    modality: str = "CT",
    indices: Sequence[int] | None = None,
    seed: int = 0,
    sampler: str | None = None,
    steps: int | None = None,
    guidance_scale: float = 1.0,
    condition: int | None = None,
    use_ema: bool = True,
    ckpt_sha256: str | None = None,
    config_hash: str | None = None,
    labels: Any = None,
    label_names: Mapping[int, str] | None = None,
    name: str = "medgen-synthetic",
    overwrite: bool = False,
    preview: bool = True,
) -> list[Path]:
    """Write ``volumes`` (N, 1, D, H, W) in [-1, 1] as a cohort in ``out``; return the image paths.

    ``indices`` (default 0..N-1) name the samples; ``intensity`` is an ``IntensityMapping`` (or its
    ``to_dict()`` form) whose ``from_unit`` maps [-1, 1] to source units. ``labels`` (N, 1, D, H, W)
    integer maps go to ``out/labels``. Samples already in ``out`` and intact are not rewritten;
    samples of the same cohort that ``out`` holds beyond ``indices`` stay and are listed (logged).
    """
    if isinstance(intensity, Mapping):
        from medgen.imaging.intensity import IntensityMapping

        intensity = IntensityMapping.from_dict(dict(intensity))
    n = len(volumes)
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    if len(indices) != n or len(set(indices)) != n:
        raise ValueError(f"indices must be {n} distinct integers, got {indices}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {len(labels)} label maps for {n} volumes")
    spec = CohortSpec(
        affine=affine,
        intensity=intensity,
        modality=modality,
        seed=seed,
        sampler=sampler,
        steps=steps,
        guidance_scale=float(guidance_scale),
        condition=condition,
        use_ema=use_ema,
        checkpoint_sha256=ckpt_sha256,
        config_hash=config_hash,
        name=name,
        label_names=label_names,
    )
    prepare_output(out, spec, overwrite=overwrite)
    done = intact_indices(out, spec)
    written = 0
    for k, index in enumerate(indices):
        if index in done:
            continue
        write_sample(out, index, volumes[k], spec, label=None if labels is None else labels[k])
        written += 1
    summary = finalize_output(out, spec, preview=preview)
    log.info(
        "%s holds %d samples; %d given, %d written (%d already there)",
        out,
        summary["count"],
        n,
        written,
        n - written,
    )
    return [Path(out) / IMAGES / f"{sample_name(i)}.nii.gz" for i in indices]
