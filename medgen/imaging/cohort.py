"""A synthetic cohort folder: its layout, identity (:class:`CohortSpec`) and resume bookkeeping.

Layout of an export folder ``out``::

    out/run.json                      what made the cohort (checkpoint sha256, seed, sampler, ...)
    out/images/sample_00042.nii.gz    one volume, source units (HU for CT), training affine
    out/images/sample_00042.json      its sidecar: seed, index, sampler, steps, guidance, provenance
    out/labels/sample_00042.nii.gz    its label map, when there is one
    out/manifest.csv                  one row per sample: file, sha256, seed, index, shape, spacing
    out/dataset.json                  Decathlon datalist (``data=nifti data.path=out/dataset.json``)
    out/preview.png                   orthogonal mid-slices of the first samples

A sample is complete when its sidecar exists, because the sidecar is written last and records the
image's sha256; a rerun into the same ``out`` skips samples whose files still match their sidecar
and manifest row, removes temporaries left by a killed run, and refuses a different checkpoint,
seed or sampler unless ``overwrite=True``. A rerun of ``medgen sample`` with ``n`` below what the
folder holds is refused too (manifest and datalist would list more samples than were asked for):
pass a larger ``n`` to extend the cohort, or ``overwrite=True`` to replace it. Writing the files is
:mod:`medgen.imaging.export`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medgen.errors import UserError
from medgen.utils.atomic import atomic_write_json, remove_stale_temporaries
from medgen.utils.logging import get_logger
from medgen.utils.provenance import file_sha256, provenance

log = get_logger(__name__)

IMAGES, LABELS = "images", "labels"
RUN_FILE, MANIFEST, DATALIST, PREVIEW = "run.json", "manifest.csv", "dataset.json", "preview.png"
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
    to source units; its ``units`` (``"HU"`` for a CT window) decide the dtype: HU are written as
    int16 (rounded, clipped), anything else as float32. ``modality`` is recorded only.
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
    def units(self) -> str:
        """``"HU"`` or ``"source"``: the intensity mapping's ``units``, else from the modality."""
        units = getattr(self.intensity, "units", None)
        if units is None:
            units = "HU" if self.modality.upper() == "CT" else "source"
        return str(units)

    @property
    def is_ct(self) -> bool:
        """Whether samples come back in HU (written as int16)."""
        return self.units == "HU"

    def identity(self) -> dict[str, Any]:
        """The settings recorded in ``run.json`` that a rerun into the same folder must match."""
        return {key: getattr(self, key) for key in IDENTITY_KEYS}


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


def check_output(
    out: str | os.PathLike, spec: CohortSpec, *, overwrite: bool = False, n: int | None = None
) -> bool:
    """Check (read only) that ``spec`` may write into ``out``; True when it must be cleared first.

    Raises ``FileExistsError`` when ``out`` is not empty and was made by another checkpoint, seed,
    sampler, step count, guidance, condition or weight set (or not by medgen), unless ``overwrite``.
    Given the cohort size ``n`` (samples ``0..n-1``), raises :class:`~medgen.errors.UserError` when
    ``out`` already holds samples with an index ``>= n``, unless ``overwrite``: the cohort files
    would list them although ``n`` asked for fewer.
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
        if not overwrite and n is not None:
            _check_cohort_size(out, spec, int(n))
        return overwrite
    if overwrite:
        return True
    lines = ", ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in diffs.items())
    raise FileExistsError(
        f"out={out} holds samples made with other settings ({lines}); a cohort must not mix them. "
        "Choose another out, or pass overwrite=true to delete those samples and start again."
    )


def _check_cohort_size(out: Path, spec: CohortSpec, n: int) -> None:
    """Refuse ``n`` below the samples ``out`` holds (those the cohort files would list)."""
    want = spec.identity()
    held = sorted(
        index
        for index, record in sidecars(out).items()
        if all(record.get(k) == v for k, v in want.items())
        and (out / str(record.get("file", ""))).is_file()  # as finalize_output lists them
    )
    beyond = [i for i in held if i >= n]
    if beyond:
        raise UserError(
            f"out={out} holds {len(held)} sample(s) ({sample_name(held[0])} .. "
            f"{sample_name(held[-1])}), n={n}: pass n>={held[-1] + 1} to keep and extend them, "
            "or overwrite=true to delete them and draw n anew"
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
