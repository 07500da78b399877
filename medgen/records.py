"""Typed records that travel between data, models, sampling and export.

Both are frozen dataclasses stored in checkpoints and sidecars as plain dicts (``to_dict``), so a
checkpoint still loads with ``torch.load(weights_only=True)``; ``from_dict`` refuses unknown keys,
so a record written by another version fails with a message instead of being half read.

- :class:`DataMeta`: what the training volumes were (geometry, intensity mapping, channels,
  classes). A datamodule makes it, the model stores it, export writes volumes back with it.
- :class:`SampleSettings`: how to draw (sampler, steps, eta, timestep shift, guidance, condition,
  temperature, seed, EMA weights). One record instead of nine keyword arguments through four
  layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Self

from medgen.errors import ConfigError, UserError


class Modality(StrEnum):
    """DICOM modality of a volume source (``OT``: other, e.g. MedMNIST display values)."""

    CT = "CT"
    MR = "MR"
    OT = "OT"


class Sampler(StrEnum):
    """Reverse processes of the diffusion models (see :mod:`medgen.imaging.samplers`)."""

    DDPM = "ddpm"
    DDIM = "ddim"
    RFLOW = "rflow"
    DPMPP = "dpmpp"
    HEUN = "heun"


def _from_dict(cls: type, values: Mapping[str, Any], what: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"{what}: unknown keys {unknown}; expected a subset of {sorted(names)}")
    return dict(values)


@dataclass(frozen=True)
class DataMeta:
    """A description of the training volumes, enough to write samples back as real scans.

    Attributes:
        source: where the data came from (``phantom``, a folder, a datalist), for provenance.
        spatial_size: ``(D, H, W)`` voxels of a training item after transforms (RAS).
        spacing: mm per voxel along D, H, W.
        affine: (4, 4) voxel-to-RAS-mm matrix of a transformed training item.
        intensity: the :class:`~medgen.imaging.intensity.IntensityMapping` as a dict: how source
            units map to the model's [-1, 1].
        modality: DICOM modality (``CT`` volumes are exported as int16 HU).
        channels: image channels the model generates.
        channel_names: one name per channel (``["ct"]``; label maps: ``["ct", "labels"]``).
        num_classes: class-condition classes (0 or None: unconditional data).
        class_names: one name per class, when the data has them.
        label_names: for a model that generates the label map with the image (extra code
            channels after the image channels, :mod:`medgen.imaging.labels`): one name per
            label value (0: background); None: image channels only.
        label_encoding: how those channels encode the label map (``onehot`` | ``bits``).
        geometry: where ``affine`` came from and how the training items' geometry varies
            (:func:`medgen.imaging.sources.geometry_record`): written into every sidecar.
    """

    source: str
    spatial_size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: tuple[tuple[float, ...], ...]
    intensity: dict[str, Any]
    modality: Modality = Modality.CT
    channels: int = 1
    channel_names: tuple[str, ...] = ("image",)
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    label_names: tuple[str, ...] | None = None
    label_encoding: str | None = None
    geometry: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if len(self.spatial_size) != 3 or any(int(s) < 1 for s in self.spatial_size):
            raise ConfigError("data_meta.spatial_size", self.spatial_size, "[D, H, W] >= 1")
        if len(self.spacing) != 3 or any(float(s) <= 0 for s in self.spacing):
            raise ConfigError("data_meta.spacing", self.spacing, "3 positive mm values")
        if len(self.affine) != 4 or any(len(row) != 4 for row in self.affine):
            raise ConfigError("data_meta.affine", self.affine, "a 4x4 matrix")
        if self.channels < 1 or len(self.channel_names) != self.channels:
            raise ConfigError(
                "data_meta.channel_names", self.channel_names, f"{self.channels} names"
            )

    @property
    def units(self) -> str:
        """The units exported volumes are written in: ``HU`` for a CT window (int16), else
        ``source`` (the source's own scale, float32), as the intensity mapping says."""
        return "HU" if self.intensity.get("kind") == "ct_window" else "source"

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, strings and numbers (for checkpoints and JSON)."""
        d = dataclasses.asdict(self)
        d["modality"] = str(self.modality)
        for key in ("spatial_size", "spacing", "channel_names", "class_names", "label_names"):
            if d[key] is not None:
                d[key] = list(d[key])
        d["affine"] = [list(row) for row in self.affine]
        return d

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        d = _from_dict(cls, values, "data_meta")
        channels = int(d.get("channels", 1))
        return cls(
            source=str(d["source"]),
            spatial_size=tuple(int(s) for s in d["spatial_size"]),  # type: ignore[arg-type]
            spacing=tuple(float(s) for s in d["spacing"]),  # type: ignore[arg-type]
            affine=tuple(tuple(float(v) for v in row) for row in d["affine"]),
            intensity=dict(d["intensity"]),
            modality=Modality(d.get("modality", "CT")),
            channels=channels,
            channel_names=tuple(d.get("channel_names") or ("image",) * channels),
            num_classes=None if d.get("num_classes") is None else int(d["num_classes"]),
            class_names=None if d.get("class_names") is None else tuple(d["class_names"]),
            label_names=None if d.get("label_names") is None else tuple(d["label_names"]),
            label_encoding=None if d.get("label_encoding") is None else str(d["label_encoding"]),
            geometry=None if d.get("geometry") is None else dict(d["geometry"]),
        )


@dataclass(frozen=True)
class SampleSettings:
    """How samples are drawn; sample ``i`` of a run depends on these and ``i`` only.

    Attributes:
        seed: the run's seed; sample ``i`` draws all its noise from ``sample_generator(seed, i)``.
        sampler: ``ddpm`` | ``ddim`` | ``dpmpp`` | ``heun`` | ``rflow``; None: the model's default.
        steps: reverse steps; None: the sampler's default.
        eta: DDIM stochasticity (0 deterministic, 1 the DDPM posterior); None: the sampler's own.
        guidance_scale: classifier-free guidance w (1.0: none).
        condition: class condition, an index or a class name (None: unconditional).
        temperature: softmax temperature of a molecule decoder (1.0: as trained).
        use_ema: draw with the EMA weights when the model has them.
        shift: RFlow timestep shift s, ``t' = s t / (1 + (s - 1) t)`` (1.0: none); records
            written before it existed read as 1.0.
    """

    seed: int = 0
    sampler: Sampler | None = None
    steps: int | None = None
    eta: float | None = None
    guidance_scale: float = 1.0
    condition: int | str | None = None
    temperature: float = 1.0
    use_ema: bool = True
    shift: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> SampleSettings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sampler"] = None if self.sampler is None else str(self.sampler)
        return d

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        d = _from_dict(cls, values, "sample settings")
        if d.get("sampler") is not None:
            d["sampler"] = Sampler(d["sampler"])
        return cls(**d)
