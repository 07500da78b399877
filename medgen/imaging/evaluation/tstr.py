"""Usefulness: train on synthetic, test on real (TSTR), and tissue statistics of unlabelled scans.

Two copies of one small segmentation network (MONAI ``UNet``, :data:`RECIPE`) are trained from the
same seed for the same steps: one on the synthetic image + label pairs, one on as many real
training pairs; both are tested on held-out real scans (the reference) with MONAI's
``DiceMetric`` per label (background excluded). The real arm is the yardstick: synthetic pairs
are useful as far as their Dice comes close to it.

Samples without label maps (an image-only model) have no synthetic arm; the real arm still
trains, and labels the samples so that each tissue's volume and mean HU can be compared with the
reference's (true labels) and, for phantoms, with the generator's own HU table.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medgen.imaging.evaluation.histograms import tissue_table
from medgen.utils.logging import get_logger

log = get_logger(__name__)

RECIPE: dict[str, Any] = {
    "version": 1,
    "channels": [8, 16, 32],
    "strides": [2, 2],
    "num_res_units": 1,
    "loss": "DiceCELoss(softmax, one-hot labels)",
    "lr": 5e-3,
    "batch": 4,
}


def segmenter(num_classes: int) -> nn.Module:
    """The TSTR network: MONAI ``UNet``, (B, 1, D, H, W) -> (B, num_classes, D, H, W) logits."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=num_classes,
        channels=tuple(RECIPE["channels"]),
        strides=tuple(RECIPE["strides"]),
        num_res_units=RECIPE["num_res_units"],
    )


def segmenter_key(keys: list[str], num_classes: int, steps: int, seed: int) -> str:
    text = json.dumps(
        {"recipe": RECIPE, "classes": num_classes, "steps": steps, "seed": seed, "volumes": keys}
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_segmenter(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    steps: int = 150,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "segmenter",
) -> nn.Module:
    """Fit :func:`segmenter` on (N, 1, D, H, W) images in [-1, 1] and int label maps."""
    from monai.losses import DiceCELoss
    from tqdm.auto import tqdm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = segmenter(num_classes).to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=RECIPE["lr"])
    g = torch.Generator().manual_seed(seed)
    n, batch = images.shape[0], min(RECIPE["batch"], images.shape[0])
    net.train()
    losses = []
    for _ in tqdm(range(steps), desc=desc, unit="step", disable=None if progress else True):
        idx = torch.randperm(n, generator=g)[:batch]
        x, y = images[idx].to(device), labels[idx].to(device)
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    log.info("%s: %d steps on %d pairs, loss %.3f -> %.3f", desc, steps, n, losses[0], losses[-1])
    return net.eval()


def cached_segmenter(
    images: torch.Tensor,
    labels: torch.Tensor,
    keys: list[str],
    num_classes: int,
    *,
    cache_dir: Path | None,
    steps: int,
    seed: int,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "segmenter",
) -> nn.Module:
    """:func:`train_segmenter`, its weights cached by the training pairs' keys and the recipe."""
    file = None
    if cache_dir is not None:
        file = Path(cache_dir) / f"segmenter-{segmenter_key(keys, num_classes, steps, seed)}.pt"
        if file.is_file():
            net = segmenter(num_classes)
            net.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
            log.info("%s from the cache: %s", desc, file)
            return net.to(device).eval()
    net = train_segmenter(
        images, labels, num_classes, steps=steps, seed=seed, device=device, progress=progress,
        desc=desc,
    )  # fmt: skip
    if file is not None:
        from medgen.utils.atomic import atomic_path

        with atomic_path(file) as tmp:
            torch.save({k: v.cpu() for k, v in net.state_dict().items()}, tmp)
    return net


@torch.inference_mode()
def segment(net: nn.Module, images: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """Label maps (N, 1, D, H, W) int64 predicted for images (N, 1, D, H, W)."""
    device = next(net.parameters()).device
    out = [
        net(images[s : s + batch_size].to(device)).argmax(1, keepdim=True).cpu()
        for s in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(out).long()


def dice_per_label(
    predicted: torch.Tensor, truth: torch.Tensor, num_classes: int
) -> list[float | None]:
    """Mean Dice per label 1..num_classes-1 over the volumes (MONAI ``DiceMetric``); None for a
    label absent from every ground-truth volume."""
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    metric(one_hot(predicted, num_classes), one_hot(truth, num_classes))
    aggregated = metric.aggregate()
    assert isinstance(aggregated, torch.Tensor)  # without get_not_nans: one tensor
    values = aggregated.reshape(-1).tolist()
    return [None if not np.isfinite(v) else float(v) for v in values]


def num_classes_of(*label_sets: torch.Tensor | None, names: dict[int, str] | None = None) -> int:
    top = max(int(lab.max()) for lab in label_sets if lab is not None)
    return max(top + 1, max(names or {0: ""}) + 1, 2)


def tstr(
    samples: Any,
    train: Any,
    reference: Any,
    *,
    steps: int = 150,
    seed: int = 0,
    cache_dir: Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """TSTR Dice per label and the tissue comparison for :class:`VolumeSet` s (``train`` and
    ``reference`` need label maps; ``samples`` need them for the synthetic arm only)."""
    from medgen.imaging.phantom import LABEL_NAMES, LABELS

    if train.labels is None or reference.labels is None:
        missing = "train" if train.labels is None else "reference"
        return {"skipped": f"{missing} has no label maps: TSTR needs labelled real scans"}
    names = dict(reference.label_names or train.label_names or samples.label_names)
    k = num_classes_of(samples.labels, train.labels, reference.labels, names=names)
    names = {v: names.get(v, f"label_{v}") for v in range(k)}
    n = min(len(samples), len(train))
    common: dict[str, Any] = dict(
        cache_dir=cache_dir, steps=steps, seed=seed, device=device, progress=progress
    )
    real_net = cached_segmenter(
        train.images[:n], train.labels[:n], train.keys[:n], k, desc="TSTR real arm", **common
    )
    result: dict[str, Any] = {
        "pairs": n,
        "steps": steps,
        "test_volumes": len(reference),
        "labels": [names[v] for v in range(1, k)],
        "dice_real": dice_per_label(segment(real_net, reference.images), reference.labels, k),
    }
    if samples.labels is not None:
        syn_net = cached_segmenter(
            samples.images[:n], samples.labels[:n], samples.keys[:n], k,
            desc="TSTR synthetic arm", **common,
        )  # fmt: skip
        pred = segment(syn_net, reference.images)
        result["dice_synthetic"] = dice_per_label(pred, reference.labels, k)
    else:
        result["dice_synthetic"] = None
        result["synthetic_skipped"] = "samples have no label maps (an image-only model)"
    # tissue statistics: the samples labelled by the real arm, the reference by its true labels
    sample_labels = (
        samples.labels if samples.labels is not None else segment(real_net, samples.images)
    )
    s_tab = tissue_table(samples.source_units(), sample_labels, samples.spacing, names)
    r_tab = tissue_table(reference.source_units(), reference.labels, reference.spacing, names)
    is_phantom = reference.label_names == LABEL_NAMES  # the generator's table applies
    result["tissue"] = {
        name: {
            "samples_ml": s_tab[name]["volume_ml"],
            "reference_ml": r_tab[name]["volume_ml"],
            "samples_hu": s_tab[name]["mean_hu"],
            "reference_hu": r_tab[name]["mean_hu"],
            "table_hu": LABELS[v][1] if is_phantom and v in LABELS else None,
        }
        for v, name in names.items()
    }
    result["tissue_labels_from"] = "samples' own" if samples.labels is not None else "real arm"
    return result


def mean_dice(values: list[float | None] | None) -> float | None:
    """The mean over labels with a value (None when there is none)."""
    got = [v for v in (values or []) if v is not None]
    return float(np.mean(got)) if got else None
