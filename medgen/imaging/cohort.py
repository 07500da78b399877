"""A synthetic cohort folder and its one owner, :class:`VolumeCohort` (the
:class:`~medgen.generation.Cohort` protocol for volumes).

Layout of a cohort folder ``out``::

    out/run.json                      what made the cohort (checkpoint sha256, seed, sampler, ...)
    out/images/sample_00042.nii.gz    one volume, source units (HU for CT), training affine
    out/images/sample_00042.json      its sidecar: seed, index, sampler, steps, guidance, provenance
    out/labels/sample_00042.nii.gz    its label map, when there is one
    out/manifest.csv                  one row per sample: file, sha256, seed, index, shape, spacing
    out/dataset.json                  Decathlon datalist (``data=nifti data.path=out/dataset.json``)
    out/preview.png                   orthogonal mid-slices of the first samples
    out/CARD.md, out/card.json        the cohort card (:mod:`medgen.imaging.release`); audit.json

With ``layout=nnunet`` (:mod:`medgen.imaging.layouts`) images and sidecars go to
``imagesTr/sample_00042_0000.nii.gz`` / ``.json``, label maps to ``labelsTr/`` and
``dataset.json`` is nnU-Net v2's. A model that generates the label map with the image (joint
channels, :mod:`medgen.imaging.labels`) has its label channels decoded into the label file.

Drawing into a folder is ``medgen sample`` (:func:`medgen.generation.sample_to`); writing volumes
one already has is :func:`medgen.imaging.api.export_volumes`.

A sample is complete when its sidecar exists, because the sidecar is written last and records the
image's sha256; a rerun into the same ``out`` skips samples whose files still match their sidecar
and manifest row, removes temporaries left by a killed run, and refuses a different checkpoint,
seed or sampler setting unless ``overwrite=True``. A rerun with ``n`` below what the folder holds
is refused too (manifest and datalist would list more samples than were asked for): pass a larger
``n`` to extend the cohort, or ``overwrite=True`` to replace it. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medgen.errors import ConfigError, OutputExistsError, UserError
from medgen.generation import Generated
from medgen.imaging.intensity import IntensityMapping
from medgen.imaging.labels import image_channels, label_table, split_joint
from medgen.imaging.layouts import IMAGE_DIRS, LABEL_DIRS, Layout, layout_of, sample_files
from medgen.imaging.nifti import label_array, nifti_image, read_volume, save_nifti, to_source_units
from medgen.imaging.release import VolumeRelease
from medgen.records import DataMeta, SampleSettings
from medgen.utils.atomic import atomic_write_json, atomic_write_text, remove_stale_temporaries
from medgen.utils.logging import get_logger
from medgen.utils.provenance import file_sha256, provenance
from medgen.utils.seeding import sample_seed

log = get_logger(__name__)

# settings that change what sample i looks like: a cohort must not mix them
IDENTITY_KEYS = (
    "checkpoint_sha256",
    "seed",
    "sampler",
    "steps",
    "eta",
    "guidance_scale",
    "condition",
    "use_ema",
    "shift",
)
# what a run.json written before a key existed means by its absence
IDENTITY_DEFAULTS: dict[str, Any] = {"shift": 1.0}
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
# the sidecar's geometry note for checkpoints made before DataMeta.geometry existed
UNRECORDED_GEOMETRY = (
    "not recorded: the model predates geometry records; the affine is its first training item's"
)
_SAMPLE_RE = re.compile(r"^sample_(\d+)\.json$")
# names that are files, not a folder for volumes (a likely mix-up with a molecule output)
FILE_SUFFIXES = (".csv", ".sdf", ".smi", ".nii", ".gz", ".json", ".parquet", ".npz", ".txt")


class VolumeCohort:
    """The cohort folder ``out`` for volumes of data ``meta`` drawn with ``settings``.

    Args:
        out: the folder.
        meta: the training data's :class:`~medgen.records.DataMeta`: affine (4x4 voxel -> RAS
            mm; array axes of a volume ``(C, D, H, W)`` are the NIfTI axes), intensity mapping
            (HU mappings are written as int16, others as float32), modality, channels, classes.
        settings: the resolved :class:`~medgen.records.SampleSettings` (recorded, and compared
            with what ``out`` already holds).
        checkpoint_sha256, config_hash: provenance of the model and its training config.
        name: the datalist's name (default ``medgen-<source>``).
        label_names: label value -> name of label maps written alongside (datalist ``labels``).
    """

    def __init__(
        self,
        out: str | os.PathLike,
        meta: DataMeta,
        settings: SampleSettings,
        *,
        checkpoint_sha256: str | None = None,
        config_hash: str | None = None,
        name: str | None = None,
        label_names: Mapping[int, str] | None = None,
    ) -> None:
        self.out, self.meta, self.settings = Path(out), meta, settings
        self.affine = np.asarray(meta.affine, dtype=np.float64)
        self.intensity = IntensityMapping.from_dict(dict(meta.intensity))
        self.checkpoint_sha256, self.config_hash = checkpoint_sha256, config_hash
        # marking, privacy of provenance, audit and card (medgen.imaging.release)
        self.release = VolumeRelease(meta, settings, self.identity(), config_hash)
        self.name = name or self.release.cohort_name
        if not label_names and meta.label_names:  # a joint image + label model's table
            label_names = label_table(meta.label_names)
        self.label_names = dict(label_names) if label_names else None
        # settings.extra["layout"]: decathlon (default) | nnunet, a folder-level choice
        self.layout = layout_of(settings.extra.get("layout", Layout.DECATHLON))
        if self.layout == Layout.NNUNET and not self.label_names:
            raise ConfigError(
                "layout",
                "nnunet",
                "decathlon: this model makes no label maps for nnU-Net to train on "
                "(train it with data.labels=true)",
            )
        cond, names = settings.condition, meta.class_names or ()
        # resolved settings hold the class index (a name only where nothing resolved it)
        self.condition_name: str | None = None
        if isinstance(cond, int) and 0 <= cond < len(names):
            self.condition_name = names[cond]

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along the array axes (column norms of the affine)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def units(self) -> str:
        """``"HU"`` (written as int16) or ``"source"``: the intensity mapping's units."""
        return self.intensity.units

    def identity(self) -> dict[str, Any]:
        """The settings recorded in ``run.json`` that a rerun into the same folder must match."""
        s = self.settings
        values = {
            "checkpoint_sha256": self.checkpoint_sha256,
            "seed": int(s.seed),
            "sampler": None if s.sampler is None else str(s.sampler),
            "steps": s.steps,
            "eta": s.eta,
            "guidance_scale": float(s.guidance_scale),
            "condition": s.condition,
            "use_ema": bool(s.use_ema),
            "shift": float(s.shift),
        }
        return {k: values[k] for k in IDENTITY_KEYS}

    def _matches(self, record: Mapping[str, Any]) -> bool:
        return all(record.get(k, IDENTITY_DEFAULTS.get(k)) == v for k, v in self.identity().items())

    # -- the Cohort protocol ------------------------------------------------------------------
    def check(self, n: int | None = None, *, overwrite: bool = False) -> bool:
        """Check (read only) that this cohort may write into ``out``; True when it must be
        cleared first.

        Refuses, unless ``overwrite``: a folder made with another checkpoint or setting, or a
        non-empty one medgen did not make (:class:`~medgen.errors.OutputExistsError`); given
        the cohort size ``n``, a folder holding samples with an index ``>= n`` (``UserError``).
        A file, or a name with a file suffix, is never a cohort folder (``ConfigError``).
        """
        out = self.out
        self.release.check()
        if out.is_file() or (not out.is_dir() and out.name.lower().endswith(FILE_SUFFIXES)):
            raise ConfigError("out", str(out), "a folder for the NIfTI volumes of a scan model")
        if not out.exists():
            return False
        existing = read_json(out / RUN_FILE)
        if existing is None:
            if not [p for p in out.iterdir() if not p.name.startswith(".")]:
                return False
            if overwrite:
                return True
            raise OutputExistsError(
                f"out={out} is not empty and has no {RUN_FILE} (not a medgen export); "
                "choose an empty folder or pass overwrite=true to replace medgen files there"
            )
        diffs = {
            k: (existing.get(k), v)
            for k, v in self.identity().items()
            if existing.get(k, IDENTITY_DEFAULTS.get(k)) != v
        }
        if existing.get("layout", Layout.DECATHLON) != self.layout:
            diffs["layout"] = (existing.get("layout", str(Layout.DECATHLON)), str(self.layout))
        if overwrite:
            return True
        if diffs:
            lines = ", ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in diffs.items())
            raise OutputExistsError(
                f"out={out} holds samples made with other settings ({lines}); a cohort must not "
                "mix them. Choose another out, or pass overwrite=true to delete those samples "
                "and start again."
            )
        if n is not None:
            held = sorted(r["index"] for r in self.records())
            if beyond := [i for i in held if i >= n]:
                raise UserError(
                    f"out={out} holds {len(held)} sample(s) ({sample_name(held[0])} .. "
                    f"{sample_name(held[-1])}), n={n}: pass n>={beyond[-1] + 1} to keep and "
                    "extend them, or overwrite=true to delete them and draw n anew"
                )
        return False

    def prepare(self, *, overwrite: bool = False) -> None:
        """Make ``out`` ready to receive samples (one process only: rank 0): check it, clear it
        when ``overwrite`` asks to, remove temporaries of a killed run, write ``run.json``."""
        out = self.out
        if self.check(overwrite=overwrite):
            log.warning("overwrite=true: removing the previous export in %s", out)
            for sub in (*IMAGE_DIRS.values(), *LABEL_DIRS.values()):
                if (out / sub).is_dir():
                    shutil.rmtree(out / sub)
            for name in (RUN_FILE, MANIFEST, DATALIST, PREVIEW):
                (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        if removed := remove_stale_temporaries(out):
            log.info(
                "removed %d temporary file(s) left by an interrupted run in %s", len(removed), out
            )
        if not (out / RUN_FILE).is_file():
            record = {
                **self.identity(),
                "condition_name": self.condition_name,
                "training_config_hash": self.config_hash,
                "source": self.meta.source,
                "layout": str(self.layout),
            }
            prov = {k: v for k, v in provenance(None).items() if k not in ("config_hash", "seed")}
            run = self.release.run_record({**record, "provenance": prov})  # no paths with share
            atomic_write_json(out / RUN_FILE, run)

    def done(self) -> set[int]:
        """Indices of samples in ``out`` made with these settings, complete and unmodified."""
        return intact_indices(self.out, self.identity())

    def write(self, batch: Generated, *, rank: int = 0, world_size: int = 1) -> list[int]:
        """Write a batch (``items`` (B, C, D, H, W) in [-1, 1]); returns the indices written."""
        where = {"rank": int(rank), "world_size": int(world_size)}
        for index, volume in zip(batch.indices, batch.items, strict=True):
            self.write_sample(index, volume, extra=where)
        return [int(i) for i in batch.indices]

    def finalize(self, n: int | None = None, *, preview: bool = True) -> dict[str, Any]:
        """Rebuild manifest, datalist and preview from the samples on disk (one process only);
        only samples made with these settings whose files exist are listed."""
        remove_stale_temporaries(self.out)
        records = self.records()
        audit = self.release.audit(self.out, records)  # audit=true: refuses memorized samples
        summary: dict[str, Any] = {
            "out": str(self.out),
            "count": len(records),
            "manifest": str(write_manifest(self.out, records)),
            "dataset": str(self.write_index(records)),
            "preview": None,
        }
        if preview and records:
            labels = str(self.settings.extra.get("preview_labels", "overlay"))
            path = write_cohort_preview(self.out, records, self.intensity, labels=labels,
                                        label_names=self.label_names)  # fmt: skip
            summary["preview"] = str(path) if path else None
        summary.update(self.release.finalize(self.out, records, audit))  # card, share checks
        log.info(
            "%d samples in %s (manifest.csv, dataset.json%s)",
            summary["count"],
            self.out,
            ", preview.png" if summary["preview"] else "",
        )
        return summary

    # -- the pieces ---------------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        """Sidecars of this cohort's samples whose image file exists, sorted by index."""
        found = [
            r
            for r in sidecars(self.out).values()
            if self._matches(r) and (self.out / str(r.get("file", ""))).is_file()
        ]
        return sorted(found, key=lambda r: r["index"])

    def to_source_units(self, volume: Any) -> np.ndarray:
        """A volume (C, D, H, W) in [-1, 1] as written: ``(D, H, W)`` (``(D, H, W, C)``); a joint
        model's label channels are left out (:meth:`split`)."""
        image, _ = self.split(volume)
        return to_source_units(image, self.intensity, channels=image_channels(self.meta))

    def split(self, volume: Any) -> tuple[Any, np.ndarray | None]:
        """(image channels, decoded label map (D, H, W) or None) of a generated volume."""
        return split_joint(volume, self.meta)

    def write_index(self, records: Sequence[Mapping[str, Any]]) -> Path:
        """Write the layout's ``dataset.json`` listing ``records``."""
        if self.layout == Layout.NNUNET:
            from medgen.imaging.layouts import write_nnunet_dataset

            return write_nnunet_dataset(self.out, records, self.datalist_info())
        return write_datalist(self.out, records, self.datalist_info())

    def write_sample(
        self, index: int, volume: Any, *, label: Any = None, extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write sample ``index``: image, optional label map, then its sidecar (returned)."""
        out, name, s = self.out, sample_name(index), self.settings
        files = sample_files(self.layout, name)
        image_part, decoded = self.split(volume)
        if label is None:
            label = decoded
        if label is None and self.layout == Layout.NNUNET:
            raise ValueError(f"{name}: the nnU-Net layout needs a label map")
        data = to_source_units(image_part, self.intensity, channels=image_channels(self.meta))
        description = f"medgen {self.name} seed {s.seed} {name}"
        data = self.release.stamp(data)  # the voxel mark (medgen.marking.stamp_voxels)
        image = self.release.mark(nifti_image(data, self.affine, description))
        sha = save_nifti(image, out / files.image)
        record: dict[str, Any] = {
            "file": files.image,
            "sha256": sha,
            "index": int(index),
            "sample_seed": sample_seed(s.seed, int(index)),
            "shape": list(data.shape),
            "spacing": list(self.spacing),
            "affine": self.affine.tolist(),
            "dtype": str(data.dtype),
            "modality": str(self.meta.modality),
            "units": self.units,
            "channel_names": list(self.meta.channel_names[: image_channels(self.meta)]),
            "value_range": [float(data.min()), float(data.max())],
            "geometry": self.meta.geometry or {"note": UNRECORDED_GEOMETRY},
            "condition_name": self.condition_name,
            "training_config_hash": self.config_hash,
            "source": self.meta.source,
            **self.identity(),
            **dict(extra or {}),
        }
        if label is not None:
            lab = label_array(label, data.shape[:3], name)
            record["label"] = files.label
            img = self.release.mark(nifti_image(lab, self.affine, f"medgen labels {name}"))
            record["label_sha256"] = save_nifti(img, out / files.label)
        # provenance last so that its keys (time, version, commit) are never shadowed; its
        # config_hash (of no config) is dropped: training_config_hash is the one that matters
        prov = provenance(None, seed=s.seed)
        record.update({k: v for k, v in prov.items() if k != "config_hash"})
        atomic_write_json(out / files.sidecar, self.release.sidecar(record))
        return record

    def datalist_info(self) -> dict[str, Any]:
        """What :func:`write_datalist` says about the cohort."""
        s = self.settings
        cond = "" if s.condition is None else f", condition {self.condition_name or s.condition}"
        return {
            "name": self.name,
            "modality": str(self.meta.modality),
            "condition": s.condition,
            "label_names": self.label_names,
            "description": f"from checkpoint sha256 {str(self.checkpoint_sha256)[:16]} "
            f"(sampler {s.sampler}, steps {s.steps}, seed {s.seed}, "
            f"guidance {s.guidance_scale}{cond})",
        }


# ----------------------------------------------------------------------------- the index files


def sample_name(index: int) -> str:
    """File stem of sample ``index``: ``sample_00042``."""
    return f"sample_{int(index):05d}"


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's object, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sidecars(out: str | os.PathLike) -> dict[int, dict[str, Any]]:
    """Readable sidecars under ``out/images`` (``out/imagesTr``: nnU-Net layout) keyed by sample
    index."""
    found = {}
    paths = [p for sub in IMAGE_DIRS.values() for p in sorted((Path(out) / sub).glob("*.json"))]
    for path in paths:
        if _SAMPLE_RE.match(path.name) and (record := read_json(path)) is not None:
            found[int(record.get("index", -1))] = record
    return found


def read_manifest(out: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Rows of ``out/manifest.csv`` keyed by image file (empty when there is none)."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        return {row["file"]: row for row in csv.DictReader(fh)}


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
    out: str | os.PathLike, records: Sequence[Mapping[str, Any]], info: Mapping[str, Any]
) -> Path:
    """Write ``out/dataset.json`` in the Medical Segmentation Decathlon datalist format.

    Paths are relative to ``out`` (MONAI's ``load_decathlon_datalist`` resolves them from there);
    ``info`` is :meth:`VolumeCohort.datalist_info`.
    """
    from medgen import __version__

    training = []
    for r in sorted(records, key=lambda r: r["index"]):
        item = {"image": r["file"]}
        if r.get("label"):
            item["label"] = r["label"]
        if info.get("condition") is not None:  # read back by data=nifti as the class condition
            item["class_label"] = int(info["condition"])
        training.append(item)
    datalist: dict[str, Any] = {
        "name": info["name"],
        "description": f"Synthetic {info['modality']} volumes generated by medgen {__version__} "
        + info["description"],
        "reference": "medgen synthetic cohort; see run.json and the per-sample sidecars",
        "licence": "same terms as the model's training data",
        "release": __version__,
        "tensorImageSize": "3D",
        "modality": {"0": info["modality"]},
        "numTraining": len(training),
        "numTest": 0,
        "training": training,
        "test": [],
    }
    if info.get("label_names"):
        datalist["labels"] = {str(k): v for k, v in sorted(info["label_names"].items())}
    return atomic_write_json(Path(out) / DATALIST, datalist)


def write_cohort_preview(
    out: str | os.PathLike,
    records: Sequence[Mapping[str, Any]],
    intensity: Any,
    *,
    k: int = 4,
    labels: str = "overlay",
    label_names: Mapping[int, str] | None = None,
) -> Path | None:
    """Write ``out/preview.png``: orthogonal mid-slices of the first ``k`` samples (every channel
    a row), in source units from the files on disk. A sample's label map, when it has one, is
    shown as ``labels`` says: ``overlay`` (in colour over its first channel, a legend of
    ``label_names`` under the grid), ``rows`` (a grey row of its own) or ``none``."""
    from medgen.imaging.viz import LABEL_VIEWS, save_slice_grid

    if labels not in LABEL_VIEWS:
        raise ValueError(f"labels={labels!r}: one of {', '.join(LABEL_VIEWS)}")
    lo, hi = (float(np.asarray(intensity.from_unit(np.float32(v)))) for v in (-1.0, 1.0))
    vols, titles, overlays = [], [], []
    for r in sorted(records, key=lambda r: r["index"])[:k]:
        data = read_volume(Path(out) / r["file"])
        channels = [data] if data.ndim == 3 else [data[..., c] for c in range(data.shape[-1])]
        names = r.get("channel_names") or [""] * len(channels)
        label = None
        if r.get("label") and labels != "none":
            label = np.rint(read_volume(Path(out) / r["label"])).astype(np.int64)
        for c, v in enumerate(channels):
            vols.append(v)
            titles.append(sample_name(r["index"]) + (f" {names[c]}" if len(channels) > 1 else ""))
            overlays.append(label if labels == "overlay" and c == 0 else None)
        if label is not None and labels == "rows":  # 0..K-1 spread over the window
            top = max(1, int(label.max()))
            vols.append(lo + (hi - lo) * label.astype(np.float32) / top)
            titles.append(f"{sample_name(r['index'])} labels")
            overlays.append(None)
    if not vols:
        return None
    units = "HU" if getattr(intensity, "units", None) == "HU" else "source units"
    caption = f"black..white: {lo:g}..{hi:g} {units} ({getattr(intensity, 'kind', 'window')})"
    shown = overlays if any(o is not None for o in overlays) else None
    return save_slice_grid(
        vols, Path(out) / PREVIEW, vmin=lo, vmax=hi, titles=titles, caption=caption,
        overlays=shown, label_names=label_names,
    )  # fmt: skip


def intact_indices(out: str | os.PathLike, identity: Mapping[str, Any] | None = None) -> set[int]:
    """Indices of samples in ``out`` that are complete and unmodified.

    A sample is intact when its sidecar exists (and, given ``identity``, was made with those
    settings), and the image (and label) file's sha256 matches the sidecar and the manifest row.
    """
    out = Path(out)
    manifest = read_manifest(out)
    intact = set()
    for index, record in sidecars(out).items():
        if identity is not None and any(
            record.get(k, IDENTITY_DEFAULTS.get(k)) != v for k, v in identity.items()
        ):
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


def training_config_hash(ckpt_file: str | os.PathLike, hparams: Mapping[str, Any]) -> str:
    """The training run's config hash (its ``provenance.json``), else a hash of the hparams."""
    from medgen.utils.provenance import config_hash

    for folder in Path(ckpt_file).resolve().parents[:2]:
        prov = folder / "provenance.json"
        if prov.is_file():
            try:
                value = json.loads(prov.read_text()).get("config_hash")
            except ValueError:
                value = None
            if value:
                return str(value)
    return config_hash(dict(hparams))
