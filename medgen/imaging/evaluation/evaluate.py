"""All four judgements of a synthetic scan cohort at once: :func:`evaluate_volumes`.

    from medgen.imaging.evaluation.evaluate import VolumeEvalSettings, evaluate_volumes
    from medgen.imaging.evaluation.loading import load_volumes

    samples = load_volumes("synth/", name="samples", intensity=IntensityMapping())
    reference = load_volumes("phantom", name="reference", intensity=..., like=samples)
    result = evaluate_volumes(samples, reference, train, VolumeEvalSettings(), cache_dir=...)
    result["metrics"]      # flat {name: value}; METRICS says which way is better

``medgen evaluate samples=<folder | dataset.json> ...`` reads the sets and writes the result
(:mod:`~medgen.imaging.evaluation.report`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medgen.errors import ConfigError, UserError
from medgen.imaging.evaluation import diversity, fidelity, histograms, memorization, tstr
from medgen.imaging.evaluation.features import Extractor, ExtractorKind, extract_features
from medgen.imaging.evaluation.loading import VolumeSet
from medgen.utils.logging import get_logger

log = get_logger(__name__)

# metric -> (which way is better, what it is)
METRICS: dict[str, tuple[str, str]] = {
    "fidelity/frechet": ("lower", "Fréchet distance of features, samples vs reference"),
    "fidelity/mmd": ("lower", "MMD^2 (linear kernel) of features, samples vs reference"),
    "fidelity/hu_js": ("lower", "Jensen-Shannon distance of the HU histograms (0..1)"),
    "fidelity/band_tv": ("lower", "total variation of the air/lung/fat/soft/bone fractions"),
    "diversity/ms_ssim": ("near reference", "mean pairwise MS-SSIM of the samples"),
    "diversity/ms_ssim_reference": ("-", "mean pairwise MS-SSIM of the reference"),
    "memorization/flagged": ("lower", "fraction of samples flagged as near copies of train"),
    "memorization/distance_ratio": ("higher, ~1", "median nearest-train distance / train's own"),
    "tstr/dice_synthetic": ("higher", "mean Dice on real test scans, net trained on samples"),
    "tstr/dice_real": ("higher", "mean Dice on real test scans, net trained on real pairs"),
}


@dataclass(frozen=True)
class VolumeEvalSettings:
    """How volumes are judged.

    Attributes:
        extractor: ``encoder`` (trained on the reference here), ``resnet3d`` or ``slices2d``
            (weights from ``weights``), see :mod:`~medgen.imaging.evaluation.features`.
        weights: the weights file of ``resnet3d`` / ``slices2d``.
        resnet_depth: their ResNet depth (None: 10 for ``resnet3d``, 50 for ``slices2d``).
        slices_per_plane: slices per axis of ``slices2d``.
        encoder_steps: training steps of the contrastive encoder.
        feature_size: the encoder sees volumes average-pooled to this size per axis (None: as
            they are; large volumes make training it slow).
        batch_size: volumes per feature batch.
        max_pairs: MS-SSIM pairs per set (a seeded random subset beyond; None: all pairs).
        memorization_percentile: the flagging percentile of train-to-train distances.
        tstr: train on synthetic, test on real (needs labelled train and reference sets).
        tstr_steps: training steps of each TSTR network.
        seed: seed of the encoder, the TSTR networks and the MS-SSIM pair subset.
        device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto`` (a GPU when there is one).
        progress: progress bars (shown on a terminal only).
    """

    extractor: ExtractorKind = ExtractorKind.ENCODER
    weights: Path | None = None
    resnet_depth: int | None = None
    slices_per_plane: int = 16
    encoder_steps: int = 300
    feature_size: int | None = None
    batch_size: int = 4
    max_pairs: int | None = 1000
    memorization_percentile: float = 1.0
    tstr: bool = False
    tstr_steps: int = 150
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["extractor"] = str(self.extractor)
        d["weights"] = None if self.weights is None else str(self.weights)
        return d


def build_extractor(
    settings: VolumeEvalSettings, reference: VolumeSet, cache_dir: Path | None
) -> Extractor:
    """The feature extractor ``settings`` name (the encoder is trained on ``reference``)."""
    from medgen.imaging.evaluation.encoder import encoder_extractor
    from medgen.imaging.evaluation.features import resnet3d_extractor, slices_extractor

    device = settings.torch_device()
    kind = ExtractorKind(settings.extractor)
    if kind == ExtractorKind.ENCODER:
        return encoder_extractor(
            reference, cache_dir=cache_dir, steps=settings.encoder_steps, seed=settings.seed,
            device=device, progress=settings.progress, size=settings.feature_size,
        )  # fmt: skip
    if settings.weights is None:
        raise ConfigError("weights", None, f"a weights file: extractor={kind} needs one")
    if kind == ExtractorKind.RESNET3D:
        return resnet3d_extractor(settings.weights, settings.resnet_depth or 10).to(device)
    return slices_extractor(
        settings.weights, settings.resnet_depth or 50, settings.slices_per_plane
    ).to(device)


def check_sets(samples: VolumeSet, *others: VolumeSet | None) -> None:
    """Every set has the samples' shape and 2+ volumes."""
    for vs in (samples, *others):
        if vs is None:
            continue
        if len(vs) < 2:
            raise UserError(f"{vs.name}={vs.source} holds {len(vs)} volume(s); 2+ are needed")
        if vs.shape != samples.shape:
            raise UserError(
                f"{vs.name}={vs.source} has volumes of {list(vs.shape)}, samples "
                f"{list(samples.shape)}: compare sets of one geometry"
            )
        if vs.intensity != samples.intensity:
            log.warning(
                "%s and samples map intensities differently (%s vs %s)",
                vs.name, vs.intensity.to_dict(), samples.intensity.to_dict(),
            )  # fmt: skip


def evaluate_volumes(
    samples: VolumeSet,
    reference: VolumeSet,
    train: VolumeSet | None = None,
    settings: VolumeEvalSettings | None = None,
    *,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Fidelity, diversity, memorization (given ``train``) and, with ``settings.tstr``,
    usefulness of ``samples`` against ``reference``.

    Returns ``metrics`` (flat name -> float or None, see :data:`METRICS`), ``details`` (histograms,
    band fractions, flagged pairs, Dice per label, tissue table), ``features`` (the tensors, for
    plots; not JSON), the set sizes and the settings.
    """
    s = settings or VolumeEvalSettings()
    check_sets(samples, reference, train)
    metrics: dict[str, float | None] = {}
    details: dict[str, Any] = {}

    extractor = build_extractor(s, reference, cache_dir)
    common: dict[str, Any] = dict(cache_dir=cache_dir, batch_size=s.batch_size, progress=s.progress)
    f_s = extract_features(samples, extractor, **common)
    f_r = extract_features(reference, extractor, **common)
    metrics["fidelity/frechet"] = fidelity.frechet_distance(f_s, f_r)
    metrics["fidelity/mmd"] = fidelity.mmd(f_s, f_r)

    hu_s, hu_r = samples.source_units(), reference.source_units()
    edges = histograms.histogram_edges(*reference.intensity.output_range())
    h_s, h_r = histograms.histogram(hu_s, edges), histograms.histogram(hu_r, edges)
    metrics["fidelity/hu_js"] = histograms.js_distance(h_s, h_r)
    details["histogram"] = {
        "edges": edges.tolist(),
        "samples": h_s.tolist(),
        "reference": h_r.tolist(),
    }
    if samples.units == "HU":
        b_s, b_r = histograms.band_fractions(hu_s), histograms.band_fractions(hu_r)
        metrics["fidelity/band_tv"] = 0.5 * sum(abs(b_s[k] - b_r[k]) for k in b_s)
        details["bands"] = {"samples": b_s, "reference": b_r, "edges_hu": _band_edges()}

    device = s.torch_device()
    div: dict[str, Any] = dict(
        max_pairs=s.max_pairs, seed=s.seed, device=device, progress=s.progress
    )
    metrics["diversity/ms_ssim"] = diversity.mean_pairwise_ms_ssim(samples.images, **div)
    metrics["diversity/ms_ssim_reference"] = diversity.mean_pairwise_ms_ssim(
        reference.images, **div
    )
    details["ms_ssim"] = {
        "kernel_size": diversity.KERNEL_SIZE,
        "kernel_sigma": diversity.KERNEL_SIGMA,
        "weights": list(diversity.ms_ssim_weights(samples.shape)),
        "pairs": len(diversity.pairs(len(samples), s.max_pairs)),
    }

    if train is not None:
        mem = memorization.memorization(
            samples.images, train.images, sample_ids=samples.ids, train_ids=train.ids,
            percentile=s.memorization_percentile,
        )  # fmt: skip
        metrics["memorization/flagged"] = mem["flagged_fraction"]
        metrics["memorization/distance_ratio"] = mem["distance_ratio"]
        details["memorization"] = mem
        if mem["flagged"]:
            log.warning(
                "%d of %d samples flagged as near copies of training volumes (closest: %s ~ %s, "
                "correlation %.4f)", len(mem["flagged"]), len(samples), mem["flagged"][0]["sample"],
                mem["flagged"][0]["train"], mem["flagged"][0]["correlation"],
            )  # fmt: skip

    if s.tstr:
        if train is None:
            details["tstr"] = {"skipped": "no train set: TSTR needs labelled real training scans"}
        else:
            details["tstr"] = tstr.tstr(
                samples, train, reference, steps=s.tstr_steps, seed=s.seed, cache_dir=cache_dir,
                device=device, progress=s.progress,
            )  # fmt: skip
        t = details["tstr"]
        metrics["tstr/dice_synthetic"] = tstr.mean_dice(t.get("dice_synthetic"))
        metrics["tstr/dice_real"] = tstr.mean_dice(t.get("dice_real"))

    return {
        "metrics": {k: _finite(v) for k, v in metrics.items()},
        "details": details,
        "extractor": extractor.name,
        "features": {"samples": f_s, "reference": f_r},
        "sets": {
            vs.name: {
                "source": vs.source,
                "n": len(vs),
                "shape": list(vs.shape),
                "spacing": list(vs.spacing),
                "units": vs.units,
                "labels": vs.labels is not None,
            }
            for vs in (samples, reference, train)
            if vs is not None
        },  # fmt: skip
        "settings": s.to_dict(),
    }


def _band_edges() -> dict[str, list[float | None]]:
    return {
        k: [None if math.isinf(lo) else lo, None if math.isinf(hi) else hi]
        for k, (lo, hi) in histograms.HU_BANDS.items()
    }


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)
