"""Volume sets to judge: a cohort folder, a datalist, a data config or a training run, as tensors.

Four forms name a set of volumes (``medgen evaluate samples=... reference=... train=...``):

- a **folder** of NIfTI files: a medgen cohort (``images/``, and ``labels/`` with the same names
  when there are label maps) or any folder of ``.nii``/``.nii.gz`` files (sorted by name);
- a **datalist** ``.json`` (Decathlon layout, e.g. a cohort's ``dataset.json``): its
  ``training`` items (``image``, optional ``label``), paths relative to the file;
- a **data config** of ``conf/data/`` such as ``phantom``, built with ``data_args`` on top: its
  ``test`` split for a reference (held out from training), its ``train`` split for a training
  set. Geometry the config leaves open follows the samples (a phantom at the samples' size and
  spacing), and a phantom reference holds as many subjects as there are samples unless
  ``data_args`` sets ``num_test``;
- a **training run** folder (``medgen train`` wrote ``config.yaml`` there): its data config exactly
  as trained, read the same way.

Files are read as they are stored (no resampling: the samples' geometry and orientation) and mapped
to the model's [-1, 1] with an :class:`~medgen.imaging.intensity.IntensityMapping` (the training
data's); data configs and runs go through their own training transforms and mapping. Every volume
carries a cache key: the sha256 of its file (with the mapping), or of its voxels in [-1, 1].
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medgen.errors import ConfigError, InputFileError, MissingFileError, UserError
from medgen.imaging.intensity import IntensityMapping
from medgen.utils.logging import get_logger

log = get_logger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# a data config's split that plays each role: a reference is held out, a training set is trained on
ROLE_SPLITS = {"samples": "test", "reference": "test", "train": "train"}


class SourceKind(StrEnum):
    """The form of a volume source (see the module docstring)."""

    FOLDER = "folder"
    DATALIST = "datalist"
    DATA_CONFIG = "data_config"
    RUN = "run"


@dataclass
class VolumeSet:
    """A set of one-channel volumes of one shape.

    Attributes:
        name: what the set is in a report (``samples``, ``reference``, ``train``).
        source: where it came from (a path, ``phantom:test``).
        images: (N, 1, D, H, W) float32 in the model's [-1, 1].
        ids: one name per volume (file path relative to the source, ``phantom:<seed>``).
        keys: one cache key per volume (sha256 hex).
        intensity: the mapping between source units and [-1, 1].
        spacing: mm per voxel along D, H, W.
        labels: (N, 1, D, H, W) int64 label maps, or None.
        label_names: label value -> name, where known.
    """

    name: str
    source: str
    images: torch.Tensor
    ids: list[str]
    keys: list[str]
    intensity: IntensityMapping
    spacing: tuple[float, float, float]
    labels: torch.Tensor | None = None
    label_names: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(D, H, W) voxels."""
        d, h, w = (int(s) for s in self.images.shape[2:])
        return d, h, w

    @property
    def units(self) -> str:
        """``HU`` when the mapping is a CT window, else ``source``."""
        return self.intensity.units

    def source_units(self) -> torch.Tensor:
        """(N, 1, D, H, W) float32 in source units (HU for CT), clipped to the mapping's range."""
        return torch.as_tensor(self.intensity.from_unit(self.images)).float()

    def subset(self, count: int) -> VolumeSet:
        """The first ``count`` volumes."""
        labels = None if self.labels is None else self.labels[:count]
        return VolumeSet(
            self.name,
            self.source,
            self.images[:count],
            self.ids[:count],
            self.keys[:count],
            self.intensity,
            self.spacing,
            labels,
            dict(self.label_names),
        )


def data_config_dir() -> Path:
    """``conf/data/``: the data configs a source may name."""
    from medgen.cli import config_dir

    return config_dir() / "data"


def data_config_names() -> list[str]:
    return sorted(p.stem for p in data_config_dir().glob("*.yaml"))


def source_kind(spec: str | Path) -> SourceKind | None:
    """The form of ``spec``, or None when it names nothing that exists."""
    p = Path(str(spec)).expanduser()
    if p.is_dir():
        return SourceKind.RUN if (p / "config.yaml").is_file() else SourceKind.FOLDER
    if p.suffix == ".json":
        return SourceKind.DATALIST if p.is_file() else None
    if str(spec) in data_config_names():
        return SourceKind.DATA_CONFIG
    return None


def is_volume_source(spec: str | Path) -> bool:
    """True for a folder or a ``.json`` datalist (what ``samples`` must be for volumes)."""
    p = Path(str(spec)).expanduser()
    return p.is_dir() or p.suffix == ".json"


# ------------------------------------------------------------------------------------- files


def nifti_entries(folder: Path) -> list[tuple[Path, Path | None]]:
    """``(image, label or None)`` of a cohort folder (``images/``, ``labels/``) or a plain folder
    of NIfTI files, sorted by name; :class:`MissingFileError` when there are none."""
    images = folder / "images" if (folder / "images").is_dir() else folder
    files = sorted(p for p in images.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
    if not files:
        raise MissingFileError(f"{folder}: no .nii/.nii.gz files (nor in {folder}/images)")
    labels = folder / "labels"
    return [(f, (labels / f.name) if (labels / f.name).is_file() else None) for f in files]


def datalist_entries(path: Path) -> tuple[list[tuple[Path, Path | None]], dict[int, str]]:
    """``(image, label or None)`` of a datalist's ``training`` items, and its label names."""
    from medgen.imaging.sources import read_datalist

    training, _, _ = read_datalist(path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    names = {int(k): str(v) for k, v in (doc.get("labels") or {}).items() if str(k).isdigit()}
    entries = [(Path(e["image"]), Path(e["label"]) if e.get("label") else None) for e in training]
    return entries, names


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxels (D, H, W) float32 and the affine of a NIfTI file, named in every error."""
    import nibabel as nib

    try:
        img: Any = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises many kinds for a corrupt file
        raise InputFileError(f"{path}: not a readable NIfTI file ({err})") from err
    data = np.squeeze(data) if data.ndim == 4 and data.shape[-1] == 1 else data
    if data.ndim != 3:
        raise InputFileError(f"{path}: expected a 3D one-channel volume, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise InputFileError(f"{path}: holds NaN or infinite voxels")
    return data, np.asarray(img.affine, dtype=np.float64)


def read_files(
    entries: Sequence[tuple[Path, Path | None]],
    *,
    name: str,
    source: str,
    root: Path,
    intensity: IntensityMapping,
    label_names: Mapping[int, str] | None = None,
    progress: bool = True,
) -> VolumeSet:
    """Read NIfTI ``entries`` (all of one shape) into a :class:`VolumeSet`."""
    from tqdm.auto import tqdm

    from medgen.utils.provenance import file_sha256

    with_labels = {lab is not None for _, lab in entries}
    if len(with_labels) > 1:
        raise InputFileError(f"{source}: some images have a label map and others not")
    mapping = json.dumps(intensity.to_dict(), sort_keys=True)
    images, labels, ids, keys = [], [], [], []
    shape = spacing = None
    for image, label in tqdm(entries, desc=f"reading {name}", unit="vol", disable=_quiet(progress)):
        data, affine = _read(image)
        if shape is None:
            shape = data.shape
            spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
        elif data.shape != shape:
            raise InputFileError(
                f"{image}: shape {data.shape}, but {ids[0]} has {shape}: a set must share one "
                "shape (real scans: name a data config, e.g. nifti, to resample them)"
            )
        images.append(torch.from_numpy(np.asarray(intensity.to_unit(data)))[None])
        where = image.resolve()
        ids.append(str(where.relative_to(root)) if where.is_relative_to(root) else str(image))
        keys.append(hashlib.sha256(f"{file_sha256(image)}:{mapping}".encode()).hexdigest())
        if label is not None:
            lab, _ = _read(label)
            if lab.shape != data.shape:
                raise InputFileError(f"{label}: shape {lab.shape}, its image {image} {data.shape}")
            labels.append(torch.from_numpy(np.rint(lab).astype(np.int64))[None])
    assert spacing is not None  # entries are never empty
    return VolumeSet(
        name,
        source,
        torch.stack(images).float(),
        ids,
        keys,
        intensity,
        spacing,  # type: ignore[arg-type]
        torch.stack(labels) if labels else None,
        dict(label_names or {}),
    )


def _quiet(progress: bool) -> bool | None:
    """tqdm's ``disable``: None hides the bar when stderr is not a terminal."""
    return None if progress else True


# ------------------------------------------------------------------------------- data configs


def data_node(
    kind: SourceKind,
    spec: str,
    data_args: Mapping[str, Any] | None,
    paths: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The data config that ``spec`` names (a ``conf/data`` name, or a run's ``config.yaml``)
    with ``data_args`` on top, resolved; a required value left open names ``data_args.<key>``."""
    from omegaconf import OmegaConf

    if kind == SourceKind.RUN:
        run_cfg = OmegaConf.load(Path(spec).expanduser() / "config.yaml")
        if "data" not in run_cfg:
            raise InputFileError(f"{spec}/config.yaml has no data config (not a training run?)")
        node = run_cfg.data
    else:
        node = OmegaConf.load(data_config_dir() / f"{spec}.yaml")
    root = OmegaConf.create({"paths": dict(paths or {}), "data": node})
    for key, value in (data_args or {}).items():
        if key == "_target_":
            raise ConfigError("data_args._target_", value, "a data setting, not a class")
        root.data[key] = value
    plain = OmegaConf.to_container(root, resolve=True, throw_on_missing=False)
    assert isinstance(plain, dict)
    data = plain["data"]
    assert isinstance(data, dict)
    for key, value in data.items():
        if value == "???":
            raise ConfigError(f"data_args.{key}", None, f"a value: data config {spec} needs it")
    return data


def build_datamodule(spec: str, data: Mapping[str, Any]) -> Any:
    """Instantiate a scan data config; its argument errors name ``data_args.<key>``."""
    from medgen.imaging.data import ScanDataModule
    from medgen.tasks.checks import instantiate_checked

    try:
        dm = instantiate_checked(dict(data), "data_args")
    except ConfigError as err:
        if not err.key.startswith("data."):
            raise
        raise ConfigError(
            "data_args." + err.key.removeprefix("data."), err.value, f"{err.allowed} ({spec})"
        ) from None
    if not isinstance(dm, ScanDataModule):
        raise UserError(f"{spec}: its data ({data.get('_target_')}) is not a source of scans")
    return dm


def _fill_from_samples(
    data: dict[str, Any],
    like: VolumeSet | None,
    given: Mapping[str, Any],
    *,
    role: str,
    geometry: bool,
) -> dict[str, Any]:
    """What a data config leaves to the samples (see the module docstring): its geometry (for a
    ``conf/data`` name, not a run's config) and a reference's subject count."""
    data = dict(data)
    if like is None:
        return data
    if geometry:
        for key in ("size", "spatial_size"):
            if key in data and key not in given:
                data[key] = list(like.shape)
        if "spacing" in data and "spacing" not in given:
            data["spacing"] = [round(s, 6) for s in like.spacing]
    if role == "reference" and "num_test" in data and "num_test" not in given:
        data["num_test"] = len(like)
    return data


def read_datamodule(
    spec: str,
    kind: SourceKind,
    *,
    name: str,
    data_args: Mapping[str, Any] | None = None,
    like: VolumeSet | None = None,
    paths: Mapping[str, Any] | None = None,
    split: str | None = None,
    progress: bool = True,
) -> VolumeSet:
    """The split of a data config or run that plays ``name`` (``split``: ``train``, ``val`` or
    ``test``; None: :data:`ROLE_SPLITS`)."""
    from tqdm.auto import tqdm

    from medgen.imaging.phantom import LABEL_NAMES

    given = dict(data_args or {})
    data = data_node(kind, spec, given, paths)
    data = _fill_from_samples(data, like, given, role=name, geometry=kind == SourceKind.DATA_CONFIG)
    dm = build_datamodule(spec, data)
    dm.setup()
    split = split or ROLE_SPLITS[name]
    ds = {"train": dm.train_set, "val": dm.val_set, "test": dm.test_set}[split]
    if ds is None or len(ds) == 0:
        raise UserError(f"{name}={spec}: the data has no {split} split ({dm.no_test_hint()})")
    meta = dm.data_meta
    images, labels, ids, keys = [], [], [], []
    for i in tqdm(range(len(ds)), desc=f"{name} ({spec})", unit="vol", disable=_quiet(progress)):
        item = ds[i]
        x = torch.as_tensor(item["image"]).float()
        images.append(x)
        ids.append(str(item.get("source", f"{spec}:{split}:{i}")))
        keys.append(hashlib.sha256(x.numpy().tobytes()).hexdigest())
        if "label" in item:
            labels.append(torch.as_tensor(item["label"]).long())
    label_names = dict(LABEL_NAMES) if meta.source == "phantom" else {}
    return VolumeSet(
        name,
        f"{spec}:{split}",
        torch.stack(images),
        ids,
        keys,
        IntensityMapping.from_dict(dict(meta.intensity)),
        tuple(float(s) for s in meta.spacing),  # type: ignore[arg-type]
        torch.stack(labels) if len(labels) == len(images) else None,
        label_names,
    )


# ------------------------------------------------------------------------------------ any form


def load_volumes(
    spec: str | Path,
    *,
    name: str,
    intensity: IntensityMapping,
    data_args: Mapping[str, Any] | None = None,
    like: VolumeSet | None = None,
    paths: Mapping[str, Any] | None = None,
    limit: int | None = None,
    split: str | None = None,
    progress: bool = True,
) -> VolumeSet:
    """Read the volume set ``spec`` (any form in the module docstring) playing role ``name``.

    ``intensity`` maps files to [-1, 1]; ``data_args`` and ``paths`` complete a data config;
    ``like`` (the samples) gives the geometry a data config leaves open; ``split`` picks a data
    config's split (None: the role's); ``limit`` keeps the first volumes only. Raises
    :class:`MissingFileError` naming ``name`` and ``spec`` when it names nothing.
    """
    kind = source_kind(spec)
    if kind is None:
        raise MissingFileError(
            f"{name}={spec}: no such folder or datalist .json, and not a data config "
            f"({', '.join(data_config_names())})"
        )
    if kind in (SourceKind.DATA_CONFIG, SourceKind.RUN):
        vs = read_datamodule(
            str(spec), kind, name=name, data_args=data_args, like=like, paths=paths, split=split,
            progress=progress,
        )  # fmt: skip
    else:
        path = Path(str(spec)).expanduser()
        if kind == SourceKind.FOLDER:
            entries, names, root = nifti_entries(path), _cohort_label_names(path), path
        else:
            (entries, names), root = datalist_entries(path), path.parent
        if limit is not None:
            entries = entries[:limit]
        vs = read_files(
            entries, name=name, source=str(spec), root=root.resolve(), intensity=intensity,
            label_names=names, progress=progress,
        )  # fmt: skip
    if limit is not None and len(vs) > limit:
        vs = vs.subset(limit)
    log.info("%s: %d volumes of %s from %s", name, len(vs), list(vs.shape), vs.source)
    return vs


def _cohort_label_names(folder: Path) -> dict[int, str]:
    """Label names a cohort's ``dataset.json`` lists (empty when there are none)."""
    path = folder / "dataset.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        return {}
    return {int(k): str(v) for k, v in (doc.get("labels") or {}).items() if str(k).isdigit()}


def check_source(
    key: str,
    spec: str,
    data_args: Mapping[str, Any] | None = None,
    paths: Mapping[str, Any] | None = None,
) -> SourceKind:
    """Cheap checks of a source before any run folder exists: it exists, a datalist parses and
    its files exist, a folder holds NIfTI files, a data config builds with ``data_args``."""
    kind = source_kind(spec)
    if kind is None:
        raise MissingFileError(
            f"{key}={spec}: no such folder or datalist .json, and not a data config "
            f"({', '.join(data_config_names())})"
        )
    path = Path(spec).expanduser()
    if kind == SourceKind.FOLDER:
        nifti_entries(path)
    elif kind == SourceKind.DATALIST:
        datalist_entries(path)
    else:
        build_datamodule(spec, data_node(kind, spec, data_args, paths))
    return kind
