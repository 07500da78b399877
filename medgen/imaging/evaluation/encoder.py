"""Extractor (c): a small contrastive 3D encoder medgen trains on the reference set itself.

So that a Fréchet distance exists with no outside weights at all. The recipe (:data:`RECIPE`):

- network: MONAI ``ResNet`` (basic blocks, one per stage, widths 8-16-32-64, a 3^3 stem of
  stride 2 and max pooling, batch norm); its global average pool is the 64-dim feature. A
  64 -> 64 -> 32 MLP projection head is used in training only (SimCLR: features before the head
  transfer better).
- objective: SimCLR's NT-Xent (Chen et al. 2020, https://arxiv.org/abs/2002.05709, eq. 1) at
  temperature 0.2 over two views of ``batch`` reference volumes.
- views: a random shift of up to 2 voxels per axis (``torch.roll``), intensity ``a * x + b`` with
  ``a ~ U(0.9, 1.1)``, ``b ~ U(-0.05, 0.05)``, and Gaussian noise of SD ``U(0, 0.02)`` (about 20 HU
  in a 2000 HU window). No flips: left and right differ in anatomy.
- training: Adam, lr 1e-3, ``steps`` steps (default 300), all randomness from ``seed``.

The weights are cached in ``<cache_dir>/encoder-<key>.pt`` where the key is the sha256 of the
recipe, the steps, the seed and the reference volumes' keys: the same reference set gives the
same encoder without training again. About 20 s for 300 steps at 32^3 on one CPU core.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medgen.imaging.evaluation.features import Extractor
from medgen.utils.logging import get_logger

log = get_logger(__name__)

RECIPE: dict[str, Any] = {
    "version": 1,
    "widths": [8, 16, 32, 64],
    "stem": {"kernel": 3, "stride": 2, "max_pool": True},
    "projection": [64, 32],
    "temperature": 0.2,
    "batch": 8,
    "shift": 2,
    "scale": 0.1,
    "offset": 0.05,
    "noise": 0.02,
    "lr": 1e-3,
}


def encoder_network() -> nn.Module:
    """The encoder (no head): (B, 1, D, H, W) -> (B, 64)."""
    from monai.networks.nets import ResNet

    stem = RECIPE["stem"]
    return ResNet(
        block="basic",
        layers=[1, 1, 1, 1],
        block_inplanes=list(RECIPE["widths"]),
        spatial_dims=3,
        n_input_channels=1,
        conv1_t_size=stem["kernel"],
        conv1_t_stride=stem["stride"],
        no_max_pool=not stem["max_pool"],
        feed_forward=False,
    )


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalized temperature-scaled cross entropy over two views (B, E) each."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2B, E)
    sim = z @ z.t() / temperature
    n = z1.shape[0]
    sim.fill_diagonal_(float("-inf"))  # a view is not its own positive
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One random view of each volume of (B, 1, D, H, W) (see the module docstring)."""
    r = RECIPE
    out = []
    for v in x:
        shifts = torch.randint(-r["shift"], r["shift"] + 1, (3,), generator=g).tolist()
        out.append(torch.roll(v, shifts=shifts, dims=(1, 2, 3)))
    y = torch.stack(out)
    b = y.shape[0]
    a = 1.0 + (torch.rand(b, 1, 1, 1, 1, generator=g) * 2 - 1) * r["scale"]
    c = (torch.rand(b, 1, 1, 1, 1, generator=g) * 2 - 1) * r["offset"]
    sd = torch.rand(b, 1, 1, 1, 1, generator=g) * r["noise"]
    noise = torch.randn(y.shape, generator=g) * sd
    return y * a + c + noise


def encoder_key(keys: list[str], steps: int, seed: int, size: int | None = None) -> str:
    """The cache key of an encoder trained on volumes ``keys`` (sha256, 16 hex digits)."""
    spec = {"recipe": RECIPE, "steps": steps, "seed": seed, "volumes": sorted(keys)}
    if size is not None:  # keys of full-size encoders stay as they were
        spec["size"] = int(size)
    text = json.dumps(spec)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_encoder(
    images: torch.Tensor,
    *,
    steps: int = 300,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> nn.Module:
    """Train :func:`encoder_network` on ``images`` (N, 1, D, H, W) in [-1, 1] (N >= 2)."""
    from tqdm.auto import tqdm

    if images.shape[0] < 2:
        raise ValueError(
            f"the contrastive encoder needs 2+ reference volumes, got {images.shape[0]}"
        )
    with torch.random.fork_rng(devices=[]):  # seeded initial weights; the caller's RNG untouched
        torch.manual_seed(seed)
        net = encoder_network().to(device)
        head = nn.Sequential(
            nn.Linear(RECIPE["widths"][-1], RECIPE["projection"][0]),
            nn.ReLU(),
            nn.Linear(*RECIPE["projection"]),
        ).to(device)
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=RECIPE["lr"])
    g = torch.Generator().manual_seed(seed)
    n, batch = images.shape[0], min(RECIPE["batch"], images.shape[0])
    net.train()
    losses = []
    for _ in tqdm(
        range(steps), desc="training encoder", unit="step", disable=None if progress else True
    ):
        idx = torch.randperm(n, generator=g)[:batch]
        x = images[idx]
        v1, v2 = augment(x, g).to(device), augment(x, g).to(device)
        loss = nt_xent(head(net(v1)), head(net(v2)), RECIPE["temperature"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    k = max(1, len(losses) // 10)
    log.info(
        "contrastive encoder: %d steps on %d volumes, NT-Xent %.3f (first %d) -> %.3f (last %d)",
        steps, n, sum(losses[:k]) / k, k, sum(losses[-k:]) / k, k,
    )  # fmt: skip
    return net.eval()


def encoder_extractor(
    reference: Any,
    *,
    cache_dir: Path | None = None,
    steps: int = 300,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    size: int | None = None,
) -> Extractor:
    """Extractor (c) for a reference :class:`~medgen.imaging.evaluation.loading.VolumeSet`:
    trained once per reference set (cached), then applied to every set as it is, or average-pooled
    to ``size`` voxels per axis first (training and extraction alike)."""
    key = encoder_key(list(reference.keys), steps, seed, size)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return x if size is None else torch.nn.functional.adaptive_avg_pool3d(x, int(size))

    file = None if cache_dir is None else Path(cache_dir) / f"encoder-{key}.pt"
    net = encoder_network()
    if file is not None and file.is_file():
        net.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        log.info("contrastive encoder from the cache: %s", file)
    else:
        net = train_encoder(
            prepare(reference.images), steps=steps, seed=seed, device=device, progress=progress
        ).cpu()
        if file is not None:
            from medgen.utils.atomic import atomic_path

            with atomic_path(file) as tmp:
                torch.save(net.state_dict(), tmp)
    return Extractor(f"encoder-{key}", net.to(device).eval(), prepare)
