"""``medgen evaluate``: judge generated samples; the task decides by what they are.

- a SMILES file: MOSES and GuacaMol distribution metrics (:func:`medgen.chem.evaluation`);
- a folder or ``.json`` datalist of NIfTI volumes: fidelity, diversity, memorization and
  usefulness (:mod:`medgen.imaging.evaluation`), a table, ``evaluation.json`` and ``.png``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medgen.errors import MissingFileError
from medgen.tasks.checks import EvaluateJob
from medgen.tasks.checks import check_evaluate as check
from medgen.utils.atomic import atomic_write_json
from medgen.utils.cache import cache_folder
from medgen.utils.logging import get_logger
from medgen.utils.provenance import file_sha256, provenance

log = get_logger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Score ``cfg.samples`` against ``cfg.reference`` (``moses`` or a SMILES file) and
    ``cfg.train``; log a table and write ``metrics.json`` (to ``cfg.out`` or the run dir).
    Volumes (a folder or datalist): see :func:`evaluate_volumes`."""
    from medgen.chem.evaluation import evaluate_smiles
    from medgen.chem.properties import default_n_jobs
    from medgen.chem.reference import _read_smiles

    job = check(cfg)
    if job.volumes:
        return evaluate_volumes(cfg, job)
    samples = Path(cfg.samples)
    if not samples.is_file():
        raise MissingFileError(f"samples file not found: {samples}")
    smiles = _read_smiles(samples, cfg.get("smiles_column"), cfg.get("limit"))
    log.info("%s: %d generated SMILES", samples, len(smiles))
    n_jobs = cfg.n_jobs or default_n_jobs()
    references, kl_reference = _references(cfg, n_jobs)
    train = _train_set(cfg, n_jobs)
    metrics = evaluate_smiles(
        smiles,
        references=references,
        train=train,
        kl_reference=kl_reference,
        k=list(cfg.k),
        n_jobs=n_jobs,
        batch_size=cfg.batch_size,
        device=cfg.device,
        kl_size=cfg.kl_size,
    )
    log.info("metrics of %s:\n%s", samples, format_table(metrics))
    out = Path(cfg.out) if cfg.get("out") else Path(cfg.paths.output_dir) / "metrics.json"
    record: dict[str, Any] = {
        # NaN (e.g. Scaf when no molecule has 2+ rings) is not valid JSON: write null
        "metrics": {k: (None if math.isnan(v) else v) for k, v in metrics.items()},
        "samples": str(samples),
        "samples_sha256": file_sha256(samples),
        "n_samples": len(smiles),
        "reference": str(cfg.reference),
        "train": None if cfg.get("train") is None else str(cfg.train),
        "provenance": provenance(job_config(cfg)),
        "config": OmegaConf.to_container(job_config(cfg), resolve=True),
    }
    atomic_write_json(out, record)
    log.info("wrote %s", out)
    return metrics


def evaluate_volumes(cfg: DictConfig, job: EvaluateJob) -> dict[str, float]:
    """Judge the volumes ``job.samples`` against ``job.reference`` (and ``job.train``); log a
    table and write ``evaluation.json`` and ``evaluation.png`` into ``job.out`` (or the run dir).
    Returns the metrics that have a value."""
    from medgen.imaging.cohort import read_json
    from medgen.imaging.evaluation.evaluate import VolumeEvalSettings
    from medgen.imaging.evaluation.evaluate import evaluate_volumes as judge
    from medgen.imaging.evaluation.features import ExtractorKind
    from medgen.imaging.evaluation.loading import load_volumes
    from medgen.imaging.evaluation.report import format_table as volume_table
    from medgen.imaging.evaluation.report import headline, write_json, write_png
    from medgen.imaging.intensity import IntensityKind, IntensityMapping
    from medgen.tasks.checks import plain_paths

    kind = IntensityKind(job.intensity)
    intensity = IntensityMapping(kind, job.intensity_lo, job.intensity_hi)
    common: dict[str, Any] = dict(
        intensity=intensity, data_args=job.data_args, paths=plain_paths(cfg),
        progress=job.progress,
    )  # fmt: skip
    samples = load_volumes(job.samples, name="samples", limit=job.limit, **common)
    assert job.reference is not None  # checked
    reference = load_volumes(job.reference, name="reference", like=samples, **common)
    train = None
    if job.train is not None:
        train = load_volumes(job.train, name="train", like=samples, **common)
    settings = VolumeEvalSettings(
        extractor=ExtractorKind(job.extractor),
        weights=job.weights,
        resnet_depth=job.resnet_depth,
        slices_per_plane=job.slices_per_plane,
        encoder_steps=job.encoder_steps,
        feature_size=job.feature_size,
        batch_size=job.volume_batch_size,
        max_pairs=job.max_pairs,
        memorization_percentile=job.memorization_percentile,
        tstr=job.tstr,
        tstr_steps=job.tstr_steps,
        seed=job.seed,
        device=job.device,
        progress=job.progress,
    )
    cache_dir = cache_folder("evaluation", cfg.paths.get("cache_dir"))
    result = judge(samples, reference, train, settings, cache_dir=cache_dir)
    log.info("evaluation of %s:\n%s", job.samples, volume_table(result))
    out = job.out if job.out is not None else Path(cfg.paths.output_dir)
    config = job_config(cfg)
    # what made the samples (checkpoint sha256, sampler, seed), when they are a medgen cohort
    samples_run = read_json(job.samples / "run.json") if job.samples.is_dir() else None
    json_file = write_json(
        out, result, samples_run=samples_run, provenance=provenance(config, seed=job.seed),
        config=OmegaConf.to_container(config, resolve=True),
    )  # fmt: skip
    png_file = write_png(out, result, samples, reference, train)
    log.info("wrote %s and %s", json_file, png_file)
    return headline(result)


def format_table(metrics: dict[str, float]) -> str:
    """One row per metric: name, value, which way is better (↑/↓), what it is
    (:func:`medgen.chem.evaluation.describe_metric`)."""
    from medgen.chem.evaluation import describe_metric

    first = next((k.partition("/")[2] for k in metrics if k.startswith("FCD/")), None)
    rows = [("metric", "value", "better", "what")]
    rows += [(name, *describe_metric(name, value, first)) for name, value in metrics.items()]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(f"  {line}" for line in lines)


def _references(cfg: DictConfig, n_jobs: int):
    """``({name: ReferenceStats}, kl_reference or None)`` for ``cfg.reference``."""
    from medgen.chem.reference import (
        cached_kl_reference,
        cached_reference_stats,
        load_moses_stats,
    )
    from medgen.datasets import moses_path, moses_stats_path

    if cfg.reference is None:
        return {}, None
    data_dir = cfg.paths.data_dir
    cache_dir = cache_folder("reference", cfg.paths.get("cache_dir"))
    kwargs = {"n_jobs": n_jobs, "batch_size": cfg.batch_size, "device": cfg.device}
    if str(cfg.reference) == "moses":
        references = {
            "Test": load_moses_stats(moses_stats_path("test", data_dir), "Test"),
            "TestSF": load_moses_stats(moses_stats_path("test_scaffolds", data_dir), "TestSF"),
        }
        for stats in references.values():  # their fingerprint index goes with every other cache
            stats.cache_dir = cache_dir
        kl_source = moses_path("test", data_dir)
    else:
        kl_source = Path(cfg.reference)
        if not kl_source.is_file():
            raise MissingFileError(
                f"reference must be 'moses' or a SMILES file; {kl_source} not found"
            )
        name = cfg.get("reference_name") or "Ref"
        references = {name: cached_reference_stats(kl_source, cache_dir, **kwargs)}
    kl_reference = None
    if cfg.guacamol:
        kl_reference = cached_kl_reference(kl_source, cache_dir, size=cfg.kl_size, n_jobs=n_jobs)
    return references, kl_reference


def _train_set(cfg: DictConfig, n_jobs: int = 1) -> set[str] | None:
    """Canonical SMILES of ``cfg.train`` for novelty. MOSES train is stored canonical and used as
    is (as MOSES does); any other file is canonicalized here, invalid entries dropped, since the
    generated side is compared by canonical SMILES."""
    from medgen.chem.mol import canonical_smiles_list
    from medgen.chem.parallel import map_chunks
    from medgen.chem.reference import _read_smiles
    from medgen.datasets import moses_path

    if cfg.get("train") is None:
        return None
    is_moses = str(cfg.train) == "moses"
    path = moses_path("train", cfg.paths.data_dir) if is_moses else Path(cfg.train)
    if not path.is_file():
        raise MissingFileError(f"train must be 'moses' or a SMILES file; {path} not found")
    raw = _read_smiles(path)
    if is_moses:
        train = set(raw)
    else:
        chunks = [raw[i : i + 10_000] for i in range(0, len(raw), 10_000)]
        parts = map_chunks(canonical_smiles_list, chunks, n_jobs=n_jobs)
        train = {c for part in parts for c in part if c is not None}
    log.info("novelty against %d training SMILES from %s", len(train), path)
    return train


def keeps_run_folder(cfg: DictConfig) -> bool:
    """Whether ``medgen evaluate`` keeps its run folder: with ``keep_run=true``, or when there
    is no ``out`` (the results are written into the run folder then)."""
    return bool(cfg.get("keep_run")) or cfg.get("out") in (None, "")


def job_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` without Hydra's own ``hydra`` node (present when composed in tests)."""
    # masked_copy takes str keys, as a composed config's top-level keys are
    return OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])


if __name__ == "__main__":
    from medgen.cli import main

    sys.exit(main(["evaluate", *sys.argv[1:]]))
