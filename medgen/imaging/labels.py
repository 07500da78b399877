"""An image and its label map generated together, as extra channels of one volume.

Why channels and not a label-conditioned model: a generator that makes the label map with the
image needs no given label map at sampling time, and it works unchanged for the pixel model and
for a latent model whose autoencoder takes C input channels (the network only sees ``C``).

A label map with values ``0..K-1`` is encoded voxel by voxel as a code of ``M`` channels in
``{-1, +1}`` (the diffusion range) and stacked after the image channel: ``(1 + M, D, H, W)``.

- ``onehot``: ``M = K``, code ``k`` is +1 in channel ``k`` and -1 elsewhere (robust: a voxel is
  decoded to the largest channel).
- ``bits``: ``M = ceil(log2 K)``, code ``k`` is the binary digits of ``k`` as -1/+1 (compact, for
  label tables too large for one channel each, e.g. 100+ structures).

Decoding is the nearest code: all codes have the same norm, so it is the arg max over ``k`` of
``<x, code_k>``; a bits code beyond ``K - 1`` can never be chosen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import torch

from medgen.errors import ConfigError, InputFileError
from medgen.records import DataMeta

BACKGROUND = "background"


class LabelEncoding(StrEnum):
    """How a label map becomes channels (see the module docstring)."""

    ONEHOT = "onehot"
    BITS = "bits"


@dataclass(frozen=True)
class LabelCodec:
    """Encode (D, H, W) label maps with values ``0..K-1`` as ``channels`` code channels.

    Args:
        names: one name per label value, ``names[0]`` the background (K >= 2).
        encoding: ``onehot`` or ``bits``.
    """

    names: tuple[str, ...]
    encoding: LabelEncoding | str = LabelEncoding.ONEHOT

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        try:
            object.__setattr__(self, "encoding", LabelEncoding(self.encoding))
        except ValueError:
            allowed = ", ".join(e.value for e in LabelEncoding)
            raise ConfigError("data.label_encoding", self.encoding, f"one of {allowed}") from None
        if len(self.names) < 2:
            raise ConfigError(
                "data.label_names", list(self.names), "2 or more names (0: background)"
            )

    @property
    def num_labels(self) -> int:
        return len(self.names)

    @property
    def channels(self) -> int:
        """Code channels ``M`` (K for onehot, ceil(log2 K) for bits)."""
        k = self.num_labels
        return k if self.encoding == LabelEncoding.ONEHOT else max(1, math.ceil(math.log2(k)))

    def codes(self) -> torch.Tensor:
        """(K, M) float32 codes in {-1, +1}; row ``k`` encodes label ``k``."""
        k = self.num_labels
        if self.encoding == LabelEncoding.ONEHOT:
            return torch.eye(k) * 2.0 - 1.0  # (K, K)
        bits = (torch.arange(k)[:, None] >> torch.arange(self.channels)[None, :]) & 1
        return bits.float() * 2.0 - 1.0

    def channel_names(self) -> tuple[str, ...]:
        if self.encoding == LabelEncoding.ONEHOT:
            return tuple(f"label:{n}" for n in self.names)
        return tuple(f"label:bit{b}" for b in range(self.channels))

    def encode(self, label: Any, *, source: str = "label map") -> torch.Tensor:
        """A label map ``(D, H, W)`` or ``(1, D, H, W)`` of ints -> ``(M, D, H, W)`` float32.

        Raises :class:`InputFileError` naming ``source`` for a value outside ``0..K-1``.
        """
        lab = torch.as_tensor(np.asarray(label)).long()
        if lab.ndim == 4 and lab.shape[0] == 1:
            lab = lab[0]
        if lab.ndim != 3:
            raise ValueError(f"{source}: expected a (D, H, W) label map, got {tuple(lab.shape)}")
        lo, hi = int(lab.min()), int(lab.max())
        if lo < 0 or hi >= self.num_labels:
            bad = lo if lo < 0 else hi
            raise InputFileError(
                f"{source} holds label value {bad}, outside 0..{self.num_labels - 1} "
                f"(data.label_names has {self.num_labels} names)"
            )
        return self.codes()[lab].permute(3, 0, 1, 2).contiguous()  # (M, D, H, W)

    def decode(self, x: Any) -> np.ndarray:
        """Code channels ``(M, D, H, W)`` (any real values) -> the nearest label, ``(D, H, W)``
        uint8 (int16 for more than 256 labels)."""
        t = torch.as_tensor(x).detach().to("cpu", torch.float32)
        if t.ndim != 4 or t.shape[0] != self.channels:
            raise ValueError(
                f"expected ({self.channels}, D, H, W) label channels, got {tuple(t.shape)}"
            )
        score = torch.einsum("km,mdhw->kdhw", self.codes(), t)  # (K, D, H, W)
        dtype = np.uint8 if self.num_labels <= 256 else np.int16
        return score.argmax(0).numpy().astype(dtype)


def codec_of(meta: DataMeta) -> LabelCodec | None:
    """The codec of a joint image + label model's data (None: image channels only)."""
    if not meta.label_names:
        return None
    return LabelCodec(tuple(meta.label_names), LabelEncoding(meta.label_encoding or "onehot"))


def image_channels(meta: DataMeta) -> int:
    """Channels of ``meta`` that are image (the rest, for a joint model, are label codes)."""
    codec = codec_of(meta)
    return meta.channels - (codec.channels if codec else 0)


def joint_meta(meta: DataMeta, codec: LabelCodec) -> DataMeta:
    """``meta`` (image channels only) with the label code channels appended."""
    import dataclasses

    return dataclasses.replace(
        meta,
        channels=meta.channels + codec.channels,
        channel_names=tuple(meta.channel_names) + codec.channel_names(),
        label_names=codec.names,
        label_encoding=str(codec.encoding),
    )


def split_joint(volume: Any, meta: DataMeta) -> tuple[torch.Tensor, np.ndarray | None]:
    """A generated ``(C, D, H, W)`` volume -> (image channels ``(C_img, D, H, W)``, decoded label
    map ``(D, H, W)`` or None when ``meta`` has no label channels)."""
    x = torch.as_tensor(volume).detach().to("cpu", torch.float32)
    codec = codec_of(meta)
    if codec is None:
        return x, None
    if x.ndim != 4 or x.shape[0] != meta.channels:
        raise ValueError(f"expected ({meta.channels}, D, H, W) joint volume, got {tuple(x.shape)}")
    n = meta.channels - codec.channels
    return x[:n], codec.decode(x[n:])


class JointLabels:
    """A scan dataset whose items' ``image`` gets the label map's code channels appended:
    ``(1 + M, D, H, W)`` in [-1, 1]; the item keeps its ``label`` (``(1, D, H, W)`` int64)."""

    def __init__(self, dataset: Any, codec: LabelCodec) -> None:
        self.dataset, self.codec = dataset, codec

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        source = str(item.get("source", f"item {index}"))
        if item.get("label") is None:
            raise InputFileError(f"{source} has no label map: data.labels=true needs one per scan")
        code = self.codec.encode(item["label"], source=f"label map of {source}")
        item["image"] = torch.cat([torch.as_tensor(item["image"]).float(), code], dim=0)
        return item


def label_table(names: Sequence[str]) -> dict[int, str]:
    """Label value -> name, value 0 called ``background`` (as Decathlon and nnU-Net expect)."""
    return {k: (BACKGROUND if k == 0 else str(n)) for k, n in enumerate(names)}
