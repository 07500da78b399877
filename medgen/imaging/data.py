"""Lightning datamodules for 3D scans: procedural phantoms, users' NIfTI scans, MedMNIST-3D.

All yield the same item (see :mod:`medgen.imaging.sources`), hold three disjoint splits (train,
val, and a test split that only ``trainer.test`` reads), and describe their data in
``data_meta``, a :class:`~medgen.records.DataMeta` (geometry, intensity mapping, modality,
channels, classes) that :class:`~medgen.imaging.diffusion.DiffusionModule` stores in every
checkpoint (``DataMeta.to_dict()``) so that sampling and export write volumes with the training
data's geometry and units.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, ClassVar, NamedTuple, Protocol

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader, Subset

from medgen.errors import ConfigError, UserError
from medgen.imaging.intensity import IntensityKind, IntensityMapping
from medgen.imaging.phantom import SIZE_CLASSES, phantom_affine, resolve_geometry
from medgen.records import DataMeta, Modality
from medgen.utils.logging import get_logger
from medgen.utils.validate import check_value

log = get_logger(__name__)

# phantom subject seeds of each split: seed + offset + i (never overlapping)
PHANTOM_SPLITS = {"train": 0, "val": 1_000_000, "test": 2_000_000}


class NiftiCache(StrEnum):
    """How NIfTI items are kept between epochs."""

    NONE = "none"  # loaded and transformed on every access
    MEMORY = "memory"  # MONAI CacheDataset: all loaded at setup
    DISK = "disk"  # MONAI PersistentDataset in cache_dir


def _choice(name: str, value: Any, enum: type[StrEnum]) -> Any:
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise ConfigError(f"data.{name}", value, f"one of {allowed}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int_arg(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in ``lo..hi``, else :class:`ConfigError` naming ``data.<name>``."""
    return check_value(f"data.{name}", value, int, {"ge": lo, **({} if hi is None else {"le": hi})})


def _number(name: str, value: Any, *, above: float | None = None, least: float | None = None):
    """``value`` as a finite float (``> above``, ``>= least``), else :class:`ConfigError`."""
    bounds = {k: v for k, v in (("gt", above), ("ge", least)) if v is not None}
    return check_value(f"data.{name}", value, float, bounds)


def _triple(value: Any, name: str, cast=float, lo: int = 1, hi: int | None = None) -> tuple:
    """One value or 3, checked: ints in ``lo..hi`` (``cast=int``), else finite floats > 0 (mm)."""
    vals = (
        list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value] * 3
    )
    if len(vals) != 3:
        raise ConfigError(f"data.{name}", value, "one value or 3 values")
    if cast is int:
        if any(not _is_int(v) or v < lo or (hi is not None and v > hi) for v in vals):
            span = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise ConfigError(f"data.{name}", value, f"one or 3 integers {span}")
        return tuple(int(v) for v in vals)
    if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in vals) or not all(
        math.isfinite(v) and v > 0 for v in vals
    ):
        raise ConfigError(f"data.{name}", value, "one or 3 finite numbers > 0 (mm)")
    return tuple(float(v) for v in vals)


def _intensity(kind: Any, lo: Any, hi: Any, lo_key: str, hi_key: str) -> IntensityMapping:
    """An :class:`IntensityMapping` whose bad settings raise :class:`ConfigError` naming the key."""
    kind = _choice("intensity", kind, IntensityKind)
    lo, hi = _number(lo_key, lo), _number(hi_key, hi)
    if not hi > lo:
        raise ConfigError(f"data.{hi_key}", hi, f"must be > data.{lo_key}={lo}")
    if kind == "percentile" and lo < 0.0:
        raise ConfigError(f"data.{lo_key}", lo, "a percentile in 0..100")
    if kind == "percentile" and hi > 100.0:
        raise ConfigError(f"data.{hi_key}", hi, "a percentile in 0..100")
    return IntensityMapping(kind, lo, hi)


def _window(kind: Any, preset: Any, lo: Any, hi: Any, lo_key: str, hi_key: str) -> IntensityMapping:
    """:func:`_intensity`, where a ``ct_window`` takes bounds left None from the ``data.window``
    preset (``soft`` [-1000, 1000], ``wide`` [-1024, 3071]); other kinds need both bounds."""
    from medgen.imaging.intensity import WINDOWS, CTWindow

    kind = _choice("intensity", kind, IntensityKind)
    if kind == IntensityKind.CT_WINDOW:
        default = WINDOWS[_choice("window", preset, CTWindow)]
        lo = default[0] if lo is None else lo
        hi = default[1] if hi is None else hi
    for key, value in ((lo_key, lo), (hi_key, hi)):
        if value is None:
            raise ConfigError(f"data.{key}", None, f"a number: data.intensity={kind} needs it")
    return _intensity(kind, lo, hi, lo_key, hi_key)


def _joint(
    meta: DataMeta, datasets: Sequence[ScanDataset | None], names: Sequence[str], encoding: Any
) -> tuple[list[ScanDataset | None], DataMeta]:
    """The datasets with their label maps appended as code channels, and their meta."""
    from medgen.imaging.labels import JointLabels, LabelCodec, joint_meta

    codec = LabelCodec(tuple(names), encoding)
    wrapped = [None if d is None else JointLabels(d, codec) for d in datasets]
    return wrapped, joint_meta(meta, codec)  # type: ignore[return-value]


class ScanDataset(Protocol):
    """A map-style dataset of scan items (:mod:`medgen.imaging.sources`) with a length."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


class Splits(NamedTuple):
    """What :meth:`ScanDataModule.build` returns: three disjoint datasets and their description."""

    train: ScanDataset
    val: ScanDataset
    test: ScanDataset | None  # None: the source has no test split (``trainer.test`` is refused)
    meta: DataMeta


class ScanDataModule(pl.LightningDataModule, abc.ABC):
    """Base datamodule: subclasses implement :meth:`build` (the splits and ``data_meta``).

    Args:
        batch_size: volumes per batch (>= 1).
        num_workers: DataLoader worker processes (>= 0; 0: load in the main process).
        limit: at most this many items per split (None: all; else >= 1), e.g. ``debug=fast``
            sets 16.
        seed: seed of the data itself (phantom subjects, train/val split).
        pin_memory: pin host memory (GPU training).

    Arguments are checked here, at instantiation: a bad value raises
    :class:`~medgen.errors.ConfigError` naming its ``data.<key>`` before any work.
    """

    data_kind: ClassVar[str] = "scans"  # what it gives (checked against the model's)

    def __init__(
        self,
        *,
        batch_size: int = 2,
        num_workers: int = 0,
        limit: int | None = None,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.batch_size = _int_arg("batch_size", batch_size, 1)
        self.num_workers = _int_arg("num_workers", num_workers, 0)
        self.limit = None if limit is None else _int_arg("limit", limit, 1)
        self.seed, self.pin_memory = _int_arg("seed", seed, 0), bool(pin_memory)
        self.train_set: ScanDataset | None = None
        self.val_set: ScanDataset | None = None
        self.test_set: ScanDataset | None = None
        self._meta: DataMeta | None = None

    # -- subclass API -----------------------------------------------------------------------------
    @abc.abstractmethod
    def build(self) -> Splits:
        """Return the train, val and test datasets and the data's description."""

    # -- Lightning --------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, val, test, meta = self.build()
        if (limit := self.limit) is not None:
            train, val = (_first(d, limit) for d in (train, val))
            test = None if test is None else _first(test, limit)
        if len(train) == 0:
            raise ValueError(f"{type(self).__name__}: the training split is empty")
        model_classes = self.model_num_classes()
        data_classes = meta.num_classes or 0
        if model_classes is not None and data_classes > model_classes:
            raise ConfigError(
                "model.num_classes",
                model_classes,
                f"the data ({meta.source}) has class labels up to {data_classes - 1}: "
                f"set model.num_classes >= {data_classes}, or null to take it from the data",
            )
        self.train_set, self.val_set, self.test_set, self._meta = train, val, test, meta
        log.info(
            "%s: %d train / %d val / %d test volumes of %s",
            meta.source,
            len(train),
            len(val),
            0 if test is None else len(test),
            list(meta.spatial_size),
        )

    def model_num_classes(self) -> int | None:
        """``num_classes`` of the class-conditional model this datamodule is training (from the
        attached trainer), when the model sets it; None otherwise (no trainer, unconditional,
        or ``model.num_classes`` taken from the data)."""
        trainer = getattr(self, "trainer", None)
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        hparams = getattr(module, "hparams", None) or {}
        if hparams.get("class_conditional") and hparams.get("num_classes") is not None:
            return int(hparams["num_classes"])
        return None

    def planned_meta(self) -> DataMeta | None:
        """The data's description when the settings alone give it (no file read, nothing
        generated), so a model can refuse the data before a run folder exists
        (:func:`medgen.tasks.checks.check_train`); None when it takes the data (the default)."""
        return None

    @property
    def data_meta(self) -> DataMeta:
        """The data's description (geometry, intensity, channels, classes); sets up if needed."""
        if self._meta is None:
            self.setup()
        assert self._meta is not None
        return self._meta

    def _loader(self, ds: ScanDataset | None, shuffle: bool) -> DataLoader:
        assert ds is not None  # set up
        return DataLoader(
            ds,  # type: ignore[arg-type]  # a map-style dataset; torch wants its Dataset class
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle and len(ds) >= self.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The held-out test split (never the validation split)."""
        self.setup()
        if self.test_set is None or len(self.test_set) == 0:
            raise UserError(
                f"{type(self).__name__} ({self.data_meta.source}) has no test items for test=true: "
                f"{self.no_test_hint()}"
            )
        return self._loader(self.test_set, shuffle=False)

    def no_test_hint(self) -> str:
        """What to set for a test split (see :meth:`test_dataloader`)."""
        return "give the data a test split"


def _first(ds: ScanDataset, limit: int) -> ScanDataset:
    """The first ``limit`` items of ``ds``."""
    return Subset(ds, range(min(limit, len(ds))))  # type: ignore[arg-type]


def _meta(
    source: str,
    size,
    spacing,
    intensity: IntensityMapping,
    modality: str,
    num_classes: int | None,
    class_names: list[str] | None,
    affine: Any = None,
    geometry: dict[str, Any] | None = None,
) -> DataMeta:
    """The :class:`DataMeta` of one-channel scans; ``affine`` (4, 4) is a transformed training
    item's (its column norms give the spacing), else a phantom-style affine centred at 0 from
    ``size`` and ``spacing``. The channel is named after the modality (``ct``, ``mr``, else
    ``image``)."""
    if affine is None:
        affine = phantom_affine(tuple(size), tuple(spacing))
    else:
        affine = np.asarray(affine, dtype=np.float64)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
    modality = Modality(modality)
    d, h, w = (int(s) for s in size)
    sx, sy, sz = (round(float(s), 6) for s in spacing)
    return DataMeta(
        source=source,
        spatial_size=(d, h, w),
        spacing=(sx, sy, sz),
        affine=tuple(tuple(float(v) for v in row) for row in np.asarray(affine, np.float64)),
        intensity=intensity.to_dict(),
        modality=modality,
        channels=1,
        channel_names=(modality.value.lower() if modality != Modality.OT else "image",),
        num_classes=num_classes or None,
        class_names=tuple(class_names) if class_names else None,
        geometry=geometry,
    )


class PhantomDataModule(ScanDataModule):
    """Procedural CT torso phantoms (``data=phantom``); no files needed.

    Args:
        size: voxels per axis (one int or 3), 16..256.
        spacing: mm per voxel (one or 3); None fits a 420 mm field of view.
        num_train, num_val, num_test: subjects per split; train seeds are ``seed + i``, val
            seeds ``seed + 1_000_000 + i``, test seeds ``seed + 2_000_000 + i`` (never
            overlapping for ``num_train`` and ``num_val`` below a million).
        noise_hu: CT noise SD in HU.
        window: CT window preset, ``soft`` ([-1000, 1000] HU) or ``wide`` ([-1024, 3071] HU).
        window_lo, window_hi: CT window in HU mapped to [-1, 1] (None: the preset's).
        labels: generate each CT with its organ label map (code channels after the image,
            :mod:`medgen.imaging.labels`; the phantom's label table, value 0 ``background``).
        label_encoding: ``onehot`` (one channel per label) or ``bits``.
        cache: keep generated subjects in memory.
        disk_cache: a folder where generated subjects are stored once and read back (by every
            DataLoader worker), :mod:`medgen.imaging.phantom_cache`; None: none.
        batch_size, num_workers, limit, seed, pin_memory: see :class:`ScanDataModule`.
    """

    def __init__(
        self,
        *,
        size: int | Sequence[int] = 32,
        spacing: float | Sequence[float] | None = None,
        num_train: int = 256,
        num_val: int = 8,
        num_test: int = 8,
        noise_hu: float = 12.0,
        window: str = "soft",
        window_lo: float | None = None,
        window_hi: float | None = None,
        labels: bool = False,
        label_encoding: str = "onehot",
        cache: bool = True,
        disk_cache: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.disk_cache = None if disk_cache is None else str(disk_cache)
        size = list(_triple(size, "size", int, lo=16, hi=256))
        spacing = None if spacing is None else list(_triple(spacing, "spacing", float))
        self.size, self.spacing = resolve_geometry(size, spacing)
        gap = PHANTOM_SPLITS["test"] - PHANTOM_SPLITS["val"]  # seeds per split
        self.num_train = _int_arg("num_train", num_train, 1, gap)
        self.num_val = _int_arg("num_val", num_val, 0, gap)
        self.num_test = _int_arg("num_test", num_test, 0)
        self.noise_hu, self.cache = _number("noise_hu", noise_hu, least=0.0), bool(cache)
        self.intensity = _window(
            "ct_window", window, window_lo, window_hi, "window_lo", "window_hi"
        )
        if not isinstance(labels, bool):
            raise ConfigError("data.labels", labels, "true or false")
        self.labels, self.label_encoding = labels, label_encoding
        if labels:  # a bad encoding is named now, not at setup
            from medgen.imaging.labels import LabelCodec

            LabelCodec(("background", "x"), label_encoding)

    def build(self) -> Splits:
        from medgen.imaging.sources import PhantomDataset

        common = dict(
            size=self.size,
            spacing=self.spacing,
            intensity=self.intensity,
            noise_hu=self.noise_hu,
            cache=self.cache,
        )
        counts = {"train": self.num_train, "val": self.num_val, "test": self.num_test}
        train, val, test = (
            PhantomDataset(seeds=self.split_seeds(split, count), **common)
            for split, count in counts.items()
        )
        if self.disk_cache:  # generated once, then read (medgen.imaging.phantom_cache)
            from medgen.imaging.phantom_cache import DiskCachedDataset

            folder = self.disk_cache
            train, val, test = (DiskCachedDataset(d, folder) for d in (train, val, test))  # type: ignore[assignment]
        from medgen.imaging.labels import JointLabels, codec_of

        meta = self.planned_meta()
        if (codec := codec_of(meta)) is not None:  # data.labels: code channels after the CT
            train, val, test = (JointLabels(d, codec) for d in (train, val, test))  # type: ignore[assignment]
        return Splits(train, val, test, meta)

    def planned_meta(self) -> DataMeta:
        """The phantoms' description, from the settings alone (nothing is generated)."""
        geometry = {
            "affine_from": "the phantom grid",
            "items": self.num_train,
            "varies": False,
            "note": "every phantom subject and exported sample shares one grid, centred at 0",
        }
        meta = _meta(
            "phantom",
            self.size,
            self.spacing,
            self.intensity,
            "CT",
            len(SIZE_CLASSES),
            list(SIZE_CLASSES),
            geometry=geometry,
        )
        if self.labels:
            from medgen.imaging.labels import LabelCodec, joint_meta, label_table
            from medgen.imaging.phantom import LABEL_NAMES

            names = list(label_table([LABEL_NAMES[k] for k in sorted(LABEL_NAMES)]).values())
            meta = joint_meta(meta, LabelCodec(tuple(names), self.label_encoding))
        return meta

    def split_seeds(self, split: str, count: int) -> list[int]:
        """The subject seeds of ``split`` (``train``, ``val``, ``test``)."""
        return [self.seed + PHANTOM_SPLITS[split] + i for i in range(count)]

    def no_test_hint(self) -> str:
        return "set data.num_test >= 1"


class NiftiDataModule(ScanDataModule):
    """Users' NIfTI scans (``data=nifti data.path=<folder | glob | datalist.json>``) via MONAI.

    Args:
        path: a folder of ``.nii``/``.nii.gz``, a glob, or a Decathlon-style datalist JSON.
        labels: for a folder/glob, a folder with label maps of the same file names (optional);
            ``true``: generate each image with its label map (``joint_labels=true``) from the
            datalist's ``label`` entries.
        joint_labels: generate the image and its label map together (code channels after the
            image, :mod:`medgen.imaging.labels`); needs a label map per scan.
        label_names: one name per label value 0..K-1 (None: the datalist's ``labels`` table).
        label_encoding: ``onehot`` (one channel per label) or ``bits``.
        spatial_size: training shape (D, H, W) after resampling (one int or 3).
        spacing: target voxel size in mm (one or 3).
        shape_mode: ``crop_pad`` (centre crop / pad with -1; warns when body voxels are cut),
            ``fit`` (crop to the body, shrink uniformly only if larger than the shape, pad) or
            ``resize`` (interpolate to the shape, per axis).
        modality: ``CT`` or ``MR`` (recorded for export).
        intensity: ``ct_window`` (lo/hi HU), ``percentile`` (lo/hi in %) or ``minmax``.
        window: ``ct_window`` preset for bounds left None: ``soft`` [-1000, 1000] HU or
            ``wide`` [-1024, 3071] HU.
        intensity_lo, intensity_hi: bounds for ``intensity`` (None: the window's for
            ``ct_window``; required otherwise).
        val_fraction: share of the entries held out for validation when the datalist has no
            ``validation`` list (split reproducibly with ``seed``).
        test_fraction: share held out for ``test=true`` when the datalist has no ``test`` list
            (split with the validation share, disjoint from both).
        cache: ``none``, ``memory`` (MONAI CacheDataset) or ``disk`` (PersistentDataset in
            ``cache_dir``).
        cache_dir: folder for ``cache=disk``.
        class_names: names of the datalist's ``class_label`` values (optional).
    """

    def __init__(
        self,
        *,
        path: str,
        labels: str | bool | None = None,
        joint_labels: bool = False,
        label_names: Sequence[str] | None = None,
        label_encoding: str = "onehot",
        spatial_size: int | Sequence[int] = 64,
        spacing: float | Sequence[float] = 2.0,
        shape_mode: str = "crop_pad",
        modality: str = "CT",
        intensity: str = "ct_window",
        window: str = "soft",
        intensity_lo: float | None = None,
        intensity_hi: float | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        cache: str = "none",
        cache_dir: str | None = None,
        class_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from medgen.imaging.transforms import ShapeMode

        if not isinstance(joint_labels, bool):
            raise ConfigError("data.joint_labels", joint_labels, "true or false")
        self.joint_labels = joint_labels or labels is True
        self.path = str(path)
        self.labels = str(labels) if labels and not isinstance(labels, bool) else None
        self.label_names = [str(n) for n in label_names] if label_names else None
        self.label_encoding = label_encoding
        if self.joint_labels:  # bad names or encoding are named now, not at setup
            from medgen.imaging.labels import LabelCodec

            LabelCodec(tuple(self.label_names or ("background", "x")), label_encoding)
        self.spatial_size = _triple(spatial_size, "spatial_size", int)
        self.spacing = _triple(spacing, "spacing", float)
        self.shape_mode = _choice("shape_mode", shape_mode, ShapeMode)
        if str(modality).upper() not in (Modality.CT, Modality.MR):
            raise ConfigError("data.modality", modality, "CT or MR")
        self.modality = Modality(str(modality).upper())
        self.intensity = _window(
            intensity, window, intensity_lo, intensity_hi, "intensity_lo", "intensity_hi"
        )
        self.val_fraction = _number("val_fraction", val_fraction, least=0.0)
        self.test_fraction = _number("test_fraction", test_fraction, least=0.0)
        if self.val_fraction >= 1.0:
            raise ConfigError("data.val_fraction", val_fraction, "a share in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                "data.test_fraction",
                test_fraction,
                f"a share with data.val_fraction={self.val_fraction} below 1 (some must train)",
            )
        cache = _choice("cache", cache, NiftiCache)
        if cache == NiftiCache.DISK and not cache_dir:
            raise ConfigError("data.cache_dir", cache_dir, "a folder, needed by data.cache=disk")
        self.cache, self.cache_dir = cache, cache_dir
        self.class_names = list(class_names) if class_names else None

    def build(self) -> Splits:
        from medgen.imaging.sources import NiftiDataset, resolve_nifti_entries, split_entries
        from medgen.imaging.transforms import (
            build_nifti_transforms,
            check_pair,
            percentile_reference,
        )

        # every datalist item is checked here, before training: files, class labels in range
        limit = [
            (n, key)
            for n, key in (
                (self.model_num_classes(), "model.num_classes"),
                (len(self.class_names) if self.class_names else None, "len(data.class_names)"),
            )
            if n is not None
        ]
        num_classes, key = min(limit) if limit else (None, "num_classes")
        entries, val, test = resolve_nifti_entries(
            self.path, self.labels, num_classes=num_classes, num_classes_key=key
        )
        for e in entries + (val or []) + (test or []):
            check_pair(e["image"], e.get("label"))
        # held-out lists the datalist gives are used as they are; the others are split off the
        # training entries (seeded, disjoint)
        fractions = (
            None if val is not None else self.val_fraction,
            0.0 if test is not None else self.test_fraction,
        )
        train, val_split, test_split = split_entries(
            entries, val_fraction=fractions[0], test_fraction=fractions[1], seed=self.seed
        )
        val = val if val is not None else val_split
        test = test if test is not None else test_split
        intensity = self.intensity
        if intensity.kind == "percentile":
            ref = percentile_reference([e["image"] for e in train[:8]], intensity.lo, intensity.hi)
            intensity = IntensityMapping(IntensityKind.PERCENTILE, intensity.lo, intensity.hi, *ref)

        def transforms(group: list[dict[str, Any]]):  # Decathlon test lists have no labels
            return build_nifti_transforms(
                spatial_size=self.spatial_size,
                spacing=self.spacing,
                intensity=intensity,
                shape_mode=self.shape_mode,
                with_label=bool(group) and "label" in group[0],
            )

        classes = [e["class_label"] for e in entries + val + test if "class_label" in e]
        num_classes = max(classes) + 1 if classes else None
        names = self.class_names if num_classes else None
        label_names = self.joint_label_names(entries) if self.joint_labels else None
        if label_names is not None and test and "label" not in test[0]:
            log.info("%s: the test list has no label maps; test=true is off", self.path)
            test = []
        kw: dict[str, Any] = dict(cache=self.cache, cache_dir=self.cache_dir)
        tf = transforms(entries)
        train_ds, val_ds = NiftiDataset(train, tf, **kw), NiftiDataset(val, tf, **kw)
        test_ds = NiftiDataset(test, transforms(test), **kw) if test else None
        # the geometry of a transformed item (MONAI's MetaTensor tracks the affine through
        # orientation, resampling, resize and crop/pad): world origin and true voxel size
        first = train_ds[0] if len(train_ds) else val_ds[0]
        from medgen.imaging.sources import geometry_record

        scans = [e["image"] for e in (train or val)]
        meta = _meta(
            self.path,
            self.spatial_size,
            self.spacing,
            intensity,
            self.modality,
            num_classes,
            names,
            affine=first["affine"].numpy(),
            geometry=geometry_record(first["source"], scans, spacing=self.spacing),
        )
        if meta.geometry and meta.geometry["varies"]:
            log.warning("%s: %s", self.path, meta.geometry["note"])
        if label_names is not None:
            sets, meta = _joint(meta, (train_ds, val_ds, test_ds), label_names, self.label_encoding)
            return Splits(sets[0], sets[1], sets[2], meta)  # type: ignore[arg-type]
        return Splits(train_ds, val_ds, test_ds, meta)

    def joint_label_names(self, entries: list[dict[str, Any]]) -> list[str]:
        """The label names of ``joint_labels``: ``data.label_names``, else the datalist's
        ``labels`` table; every training entry needs a label map."""
        from medgen.imaging.sources import datalist_label_names

        if not entries or "label" not in entries[0]:
            raise ConfigError(
                "data.joint_labels",
                True,
                f'false, or label maps for {self.path}: a datalist with "label" entries, or '
                "data.labels=<folder> of maps with the scans' file names",
            )
        names = self.label_names or datalist_label_names(self.path)
        if not names:
            raise ConfigError(
                "data.label_names",
                None,
                f'one name per label value 0..K-1 ({self.path} has no "labels" table)',
            )
        return names

    def no_test_hint(self) -> str:
        return 'give the datalist a "test" list, or set data.test_fraction > 0 (3+ scans)'


class MedMNIST3DDataModule(ScanDataModule):
    """A published MedMNIST-3D ``.npz`` (``data=medmnist3d data.path=<file.npz>``); no download.

    Args:
        path: the ``.npz`` (``train_images`` (N, S, S, S) uint8, ``train_labels`` (N, 1),
            ``val_*``, ``test_*``: its own splits, ``test`` read by ``test=true``).
        spatial_size: training shape; volumes are centre padded/cropped (28^3 -> 32^3 by default).
        spacing: nominal voxel size in mm written into the affine (MedMNIST records none).
        modality: recorded for export only (default ``OT``, DICOM "other"): MedMNIST holds
            0..255 display values, exported in that scale (float32), never as HU.
        class_names: names of the label values (optional).
    """

    def __init__(
        self,
        *,
        path: str,
        spatial_size: int | Sequence[int] = 32,
        spacing: float | Sequence[float] = 1.0,
        modality: str = "OT",
        class_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.path = str(path)
        self.spatial_size = _triple(spatial_size, "spatial_size", int)
        self.spacing = _triple(spacing, "spacing", float)
        self.modality = _choice("modality", str(modality).upper(), Modality)
        self.class_names = list(class_names) if class_names else None
        self.intensity = IntensityMapping(IntensityKind.MINMAX, 0.0, 255.0)

    def build(self) -> Splits:
        from medgen.imaging.sources import MedMNIST3DDataset

        kw: dict[str, Any] = dict(
            path=self.path,
            spatial_size=self.spatial_size,
            spacing=self.spacing,
            intensity=self.intensity,
        )
        train, val, test = (MedMNIST3DDataset(split=s, **kw) for s in ("train", "val", "test"))
        num_classes = int(max(int(d.labels.max()) for d in (train, val, test) if len(d))) + 1
        meta = _meta(
            self.path,
            self.spatial_size,
            self.spacing,
            self.intensity,
            self.modality,
            num_classes,
            self.class_names,
        )
        return Splits(train, val, test, meta)
