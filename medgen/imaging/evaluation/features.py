"""Feature extractors for Fréchet distance and MMD, and a feature cache keyed by volume sha256.

Three extractors, none of which downloads anything:

- ``resnet3d``: a MedicalNet-style 3D ResNet (MONAI ``resnet10``..``resnet200`` layout, one input
  channel, global average pooled, no classifier) loaded from a weights file the user supplies
  (MedicalNet's ``resnet_<depth>*.pth``: a ``state_dict`` whose keys may start with ``module.``).
  Input: each volume z-scored (MedicalNet's normalisation).
- ``slices2d``: 2.5D features as in MAISI's evaluation: a 2D ResNet (torchvision layout, MONAI
  ``resnet`` with ``spatial_dims=2``; e.g. RadImageNet or ImageNet ResNet-50 weights the user
  supplies) over ``slices_per_plane`` evenly spaced slices along each of the three axes; features
  averaged over the slices of a plane, the three planes concatenated (3 x 2048 for ResNet-50).
  Input: [-1, 1] -> [0, 1], grey copied to 3 channels, ImageNet mean/std.
- ``encoder``: the contrastive encoder medgen trains on the reference set itself
  (:mod:`medgen.imaging.evaluation.encoder`), so a figure exists without outside weights.

An extractor maps (B, 1, D, H, W) in [-1, 1] to (B, F) float32. :func:`extract_features` caches
each volume's features under its key (:class:`~medgen.imaging.evaluation.loading.VolumeSet`) in
``<cache_dir>/features-<extractor name>.pt``, so re-evaluating a grown cohort computes only the
new volumes; the extractor's name covers its network and weights (sha256).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medgen.errors import InputFileError, MissingFileError
from medgen.utils.logging import get_logger

log = get_logger(__name__)

RESNET_DEPTHS = (10, 18, 34, 50, 101, 152, 200)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ExtractorKind(StrEnum):
    """Which features Fréchet distance and MMD are computed on (see the module docstring)."""

    ENCODER = "encoder"
    RESNET3D = "resnet3d"
    SLICES2D = "slices2d"


@dataclass
class Extractor:
    """A feature network with its preprocessing.

    Attributes:
        name: the cache namespace: kind, depth and the weights' sha256 (or the encoder's key).
        module: the network, (B, C, ...) -> (B, F).
        prepare: (B, 1, D, H, W) in [-1, 1] -> the network's input (or inputs, see ``call``).
        call: how ``module`` is applied to the prepared batch (default: ``module(x)``).
    """

    name: str
    module: nn.Module
    prepare: Callable[[torch.Tensor], torch.Tensor]
    call: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) in [-1, 1] -> (B, F) float32."""
        self.module.eval()
        device = next(iter(self.module.parameters()), x).device
        prepared = self.prepare(x.to(device).float())
        out = self.call(self.module, prepared) if self.call else self.module(prepared)
        return out.reshape(x.shape[0], -1).float()

    def to(self, device: str | torch.device) -> Extractor:
        self.module.to(device)
        return self


def read_weights(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (``torch.load(weights_only=True)``; nested under ``state_dict``
    and ``module.`` prefixes removed); :class:`MissingFileError` / :class:`InputFileError` name it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"weights={path}: no such file (the {what} weights you supply)")
    try:
        data: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or pickled file: name it
        raise InputFileError(f"weights={path}: not a weights_only state dict ({err})") from err
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InputFileError(f"weights={path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


def load_into(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Load ``state`` (classifier ``fc.*`` dropped) into ``module``; a misfit names ``path``."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = " ".join(str(err).split())[:300]
        raise InputFileError(f"weights={path} do not fit a {what}: {first}") from err


def weights_sha(path: str | os.PathLike) -> str:
    from medgen.utils.provenance import file_sha256

    return file_sha256(Path(path).expanduser())[:16]


def resnet3d(depth: int = 10) -> nn.Module:
    """A MedicalNet-layout 3D ResNet of ``depth`` (MONAI), pooled features, no classifier."""
    from monai.networks import nets
    from monai.networks.nets.resnet import get_medicalnet_pretrained_resnet_args

    bias_downsample, shortcut = get_medicalnet_pretrained_resnet_args(depth)
    return getattr(nets, f"resnet{depth}")(
        pretrained=False,
        spatial_dims=3,
        n_input_channels=1,
        feed_forward=False,
        shortcut_type=shortcut,
        bias_downsample=bias_downsample,
    )


def resnet2d(depth: int = 50) -> nn.Module:
    """A torchvision-layout 2D ResNet of ``depth`` (MONAI), 3 input channels, pooled, no fc."""
    from monai.networks import nets

    return getattr(nets, f"resnet{depth}")(
        pretrained=False,
        spatial_dims=2,
        n_input_channels=3,
        conv1_t_size=7,
        conv1_t_stride=2,
        feed_forward=False,
        shortcut_type="B",
        bias_downsample=False,
    )


def _zscore(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1)
    mean = flat.mean(1).view(-1, 1, 1, 1, 1)
    std = flat.std(1).clamp_min(1e-6).view(-1, 1, 1, 1, 1)
    return (x - mean) / std


def resnet3d_extractor(weights: str | os.PathLike, depth: int = 10) -> Extractor:
    """Extractor (a): :func:`resnet3d` with the user's MedicalNet weights."""
    path = Path(weights).expanduser()
    state = read_weights(path, f"MedicalNet resnet{depth}")
    module = resnet3d(depth)
    load_into(module, state, path, f"MONAI resnet{depth} (3D, MedicalNet layout)")
    return Extractor(f"resnet3d{depth}-{weights_sha(path)}", module, _zscore)


def slice_indices(n: int, count: int) -> list[int]:
    """``count`` evenly spaced slice indices of ``n`` (all of them when ``count >= n``)."""
    if count >= n:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, count + 2)[1:-1]})


def slices_extractor(
    weights: str | os.PathLike, depth: int = 50, slices_per_plane: int = 16
) -> Extractor:
    """Extractor (b): 2.5D features of :func:`resnet2d` with the user's weights."""
    path = Path(weights).expanduser()
    state = read_weights(path, f"2D resnet{depth}")
    module = resnet2d(depth)
    load_into(module, state, path, f"MONAI resnet{depth} (2D, torchvision layout)")
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def planes(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for axis in (2, 3, 4):  # D, H, W: the three orthogonal planes
            idx = slice_indices(x.shape[axis], slices_per_plane)
            s = x.index_select(axis, torch.tensor(idx, device=x.device)).movedim(axis, 1)
            b, k = s.shape[:2]
            s = s.reshape(b * k, 1, *s.shape[3:]).expand(-1, 3, -1, -1)  # (B*K, 3, h, w)
            s = (s - mean.to(s.device)) / std.to(s.device)
            feats.append(module(s).reshape(b, k, -1).mean(1))  # average over the plane's slices
        return torch.cat(feats, dim=1)

    return Extractor(
        f"slices2d{depth}x{slices_per_plane}-{weights_sha(path)}",
        module,
        lambda x: (x + 1.0) / 2.0,
        planes,
    )


def _cache_file(cache_dir: Path, name: str) -> Path:
    return cache_dir / f"features-{name}.pt"


def read_cache(cache_dir: Path | None, name: str) -> dict[str, torch.Tensor]:
    if cache_dir is None or not _cache_file(cache_dir, name).is_file():
        return {}
    try:
        data = torch.load(_cache_file(cache_dir, name), map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged cache is recomputed, not trusted
        log.warning("ignoring unreadable feature cache %s: %s", _cache_file(cache_dir, name), err)
        return {}
    return {str(k): v for k, v in data.items()} if isinstance(data, dict) else {}


def write_cache(cache_dir: Path, name: str, cache: dict[str, torch.Tensor]) -> None:
    from medgen.utils.atomic import atomic_path

    with atomic_path(_cache_file(cache_dir, name)) as tmp:
        torch.save(cache, tmp)


def extract_features(
    volumes: Any,
    extractor: Extractor,
    *,
    cache_dir: Path | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> torch.Tensor:
    """Features (N, F) float32 of a :class:`~medgen.imaging.evaluation.loading.VolumeSet`.

    Volumes whose key is in the cache are not recomputed; new ones are added to it.
    """
    from tqdm.auto import tqdm

    cache = read_cache(cache_dir, extractor.name)
    todo = [i for i, key in enumerate(volumes.keys) if key not in cache]
    if todo:
        batches = [todo[s : s + batch_size] for s in range(0, len(todo), batch_size)]
        bar = tqdm(
            batches,
            desc=f"features {volumes.name}",
            unit="batch",
            disable=None if progress else True,
        )
        for batch in bar:
            feats = extractor(volumes.images[batch]).cpu()
            for i, f in zip(batch, feats, strict=True):
                cache[volumes.keys[i]] = f.clone()
        if cache_dir is not None:
            write_cache(cache_dir, extractor.name, cache)
    log.info(
        "%s features of %s: %d computed, %d from the cache",
        extractor.name, volumes.name, len(todo), len(volumes) - len(todo),
    )  # fmt: skip
    return torch.stack([cache[k] for k in volumes.keys]).float()
