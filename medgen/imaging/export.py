"""Export generated volumes as a synthetic cohort other tools read without surprises.

Layout of an export folder ``out``::

    out/run.json                      what made the cohort (checkpoint sha256, seed, sampler, ...)
    out/images/sample_00042.nii.gz    one volume, source units (HU for CT), training affine
    out/images/sample_00042.json      its sidecar: seed, index, sampler, steps, guidance, provenance
    out/labels/sample_00042.nii.gz    its label map, when there is one
    out/manifest.csv                  one row per sample: file, sha256, seed, index, shape, spacing
    out/dataset.json                  Decathlon datalist (``data=nifti data.path=out/dataset.json``)
    out/preview.png                   orthogonal mid-slices of the first samples

Every file is written atomically (temp file + rename). A sample is complete when its sidecar exists,
because the sidecar is written last and records the image's sha256; a rerun into the same ``out``
skips samples whose files still match their sidecar and manifest row, removes temporaries left by a
killed run, and refuses a different checkpoint, seed or sampler unless ``overwrite=True``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

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

IMAGES, LABELS = "images", "labels"
RUN_FILE, MANIFEST, DATALIST, PREVIEW = "run.json", "manifest.csv", "dataset.json", "preview.png"
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
# settings that change what sample i looks like: a cohort must not mix them
IDENTITY_KEYS = (
    "checkpoint_sha256",
    "seed",
    "sampler",
    "steps",
    "guidance_scale",
    "condition",
    "use_ema",
)
_SAMPLE_RE = re.compile(r"^sample_(\d+)\.json$")
INT16_MIN, INT16_MAX = -32768, 32767


class IntensityMap(Protocol):
    """What export needs from ``medgen.imaging.intensity.IntensityMapping``."""

    def from_unit(self, x: Any) -> Any: ...


def sample_name(index: int) -> str:
    """File stem of sample ``index``: ``sample_00042``."""
    return f"sample_{int(index):05d}"


@dataclass(frozen=True)
class CohortSpec:
    """Geometry, intensity mapping and provenance shared by every sample of one export.

    ``affine`` is the 4x4 voxel-to-RAS (mm) matrix of the training data; array axes of a volume
    ``(1, D, H, W)`` are the NIfTI axes ``(i, j, k)``. ``intensity.from_unit`` maps [-1, 1] back
    to source units (HU for CT). ``modality`` "CT" writes int16 (rounded, clipped), else float32.
    """

    affine: np.ndarray
    intensity: Any
    modality: str = "CT"
    seed: int = 0
    sampler: str | None = None
    steps: int | None = None
    guidance_scale: float = 1.0
    condition: int | None = None
    condition_name: str | None = None
    use_ema: bool = True
    checkpoint_sha256: str | None = None
    config_hash: str | None = None
    name: str = "medgen-synthetic"
    source: str | None = None
    label_names: Mapping[int, str] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
        object.__setattr__(self, "affine", affine)
        if not hasattr(self.intensity, "from_unit"):
            raise TypeError(
                f"intensity needs a from_unit method, got {type(self.intensity).__name__}"
            )

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along the array axes (column norms of the affine)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def is_ct(self) -> bool:
        return self.modality.upper() == "CT"

    def identity(self) -> dict[str, Any]:
        """The settings recorded in ``run.json`` that a rerun into the same folder must match."""
        return {key: getattr(self, key) for key in IDENTITY_KEYS}


def to_source_units(volume: Any, spec: CohortSpec) -> np.ndarray:
    """Map a generated volume ``(1, D, H, W)`` or ``(D, H, W)`` in [-1, 1] to source units.

    Returns ``(D, H, W)``: int16 HU for CT (rounded, clipped to the int16 range), float32 otherwise.
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
        "units": "HU" if spec.is_ct else "source",
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


# ----------------------------------------------------------------------------- resume bookkeeping


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_manifest(out: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Rows of ``out/manifest.csv`` keyed by image file (empty when there is none)."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        return {row["file"]: row for row in csv.DictReader(fh)}


def sidecars(out: str | os.PathLike) -> dict[int, dict[str, Any]]:
    """Readable sidecars under ``out/images`` keyed by sample index."""
    found = {}
    for path in sorted((Path(out) / IMAGES).glob("sample_*.json")):
        if _SAMPLE_RE.match(path.name) and (record := _read_json(path)) is not None:
            found[int(record.get("index", -1))] = record
    return found


def intact_indices(out: str | os.PathLike, spec: CohortSpec | None = None) -> set[int]:
    """Indices of samples in ``out`` that are complete and unmodified.

    A sample is intact when its sidecar exists (and, given ``spec``, was made with the same
    identity), and the image (and label) file's sha256 matches the sidecar and the manifest row.
    """
    out = Path(out)
    manifest = read_manifest(out)
    want = spec.identity() if spec is not None else None
    intact = set()
    for index, record in sidecars(out).items():
        if want is not None and any(record.get(k) != v for k, v in want.items()):
            continue
        row = manifest.get(record.get("file", ""))
        pairs = [("file", "sha256")] + ([("label", "label_sha256")] if record.get("label") else [])
        ok = True
        for file_key, sha_key in pairs:
            path = out / record[file_key]
            if not path.is_file() or file_sha256(path) != record.get(sha_key):
                ok = False
            elif row is not None and row.get(sha_key) and row[sha_key] != record[sha_key]:
                ok = False
        if ok:
            intact.add(index)
    return intact


def check_output(out: str | os.PathLike, spec: CohortSpec, *, overwrite: bool = False) -> bool:
    """Check (read only) that ``spec`` may write into ``out``; True when it must be cleared first.

    Raises ``FileExistsError`` when ``out`` is not empty and was made by another checkpoint, seed,
    sampler, step count, guidance, condition or weight set (or not by medgen), unless ``overwrite``.
    """
    out = Path(out)
    if not out.exists():
        return False
    if not out.is_dir():
        raise NotADirectoryError(f"out={out} exists and is not a folder")
    existing = _read_json(out / RUN_FILE)
    if existing is None:
        content = [p for p in out.iterdir() if not p.name.startswith(".")]
        if not content:
            return False
        if overwrite:
            return True
        raise FileExistsError(
            f"out={out} is not empty and has no {RUN_FILE} (not a medgen export); "
            "choose an empty folder or pass overwrite=true to replace medgen files there"
        )
    diffs = {k: (existing.get(k), v) for k, v in spec.identity().items() if existing.get(k) != v}
    if not diffs:
        return overwrite
    if overwrite:
        return True
    lines = ", ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in diffs.items())
    raise FileExistsError(
        f"out={out} holds samples made with other settings ({lines}); a cohort must not mix them. "
        "Choose another out, or pass overwrite=true to delete those samples and start again."
    )


def clear_output(out: str | os.PathLike) -> None:
    """Remove what an export wrote in ``out`` (images, labels, run, manifest, datalist, preview)."""
    out = Path(out)
    for sub in (IMAGES, LABELS):
        if (out / sub).is_dir():
            shutil.rmtree(out / sub)
    for name in (RUN_FILE, MANIFEST, DATALIST, PREVIEW):
        (out / name).unlink(missing_ok=True)


def prepare_output(out: str | os.PathLike, spec: CohortSpec, *, overwrite: bool = False) -> Path:
    """Make ``out`` ready to receive samples (one process only: rank 0).

    Checks it (:func:`check_output`), clears it when ``overwrite`` asks to, removes temporaries that
    a killed run left behind, and records the cohort's identity in ``out/run.json``.
    """
    out = Path(out)
    if check_output(out, spec, overwrite=overwrite):
        log.warning("overwrite=true: removing the previous export in %s", out)
        clear_output(out)
    out.mkdir(parents=True, exist_ok=True)
    if removed := remove_stale_temporaries(out):
        log.info("removed %d temporary file(s) left by an interrupted run in %s", len(removed), out)
    if not (out / RUN_FILE).is_file():
        record = {**spec.identity(), "condition_name": spec.condition_name}
        record.update(training_config_hash=spec.config_hash, source=spec.source)
        prov = {k: v for k, v in provenance(None).items() if k not in ("config_hash", "seed")}
        atomic_write_json(out / RUN_FILE, {**record, "provenance": prov})
    return out


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


def write_preview(
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
        path = write_preview(out, records, spec)
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
    integer maps go to ``out/labels``. Samples already in ``out`` and intact are not rewritten.
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
    for k, index in enumerate(indices):
        if index in done:
            continue
        write_sample(out, index, volumes[k], spec, label=None if labels is None else labels[k])
    finalize_output(out, spec, preview=preview)
    return [Path(out) / IMAGES / f"{sample_name(i)}.nii.gz" for i in indices]
