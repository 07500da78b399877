"""Responsible release of a volume cohort: marking, privacy of provenance, memorization audit, card.

:class:`VolumeRelease` is what :class:`~medgen.imaging.cohort.VolumeCohort` calls at each step
(the cohort folder stays the cohort's; the release logic lives here):

- every image (and label map) is marked (:mod:`medgen.marking`: header ``descrip``,
  ``intent_name``, a JSON extension, a voxel stamp); sidecars, ``run.json`` and ``dataset.json``
  carry the marking record;
- the training data is named by a description (``phantom``, ``nifti folder (12 files)``) and
  ``source_sha256`` (sha256 of its sorted file names), never by its path; host names stay out of
  sidecars; ``share=true`` also keeps them (and the checkpoint's path) out of ``run.json`` and
  checks every JSON and the card for leaks at finalize;
- ``audit=true``: at finalize every sample's nearest training volume
  (:func:`medgen.imaging.evaluation.memorization.memorization`); flagged samples stop it unless
  ``allow_memorized=true``;
- ``CARD.md`` + ``card.json`` (:func:`medgen.card.write_card`) at every finalize.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from medgen import marking
from medgen.card import INTENDED_USE, write_card
from medgen.errors import ConfigError, UserError
from medgen.records import DataMeta, SampleSettings
from medgen.utils.atomic import atomic_write_json
from medgen.utils.logging import get_logger

log = get_logger(__name__)

AUDIT_FILE = "audit.json"
NIFTI_GLOBS = ("*.nii", "*.nii.gz")
# CT tissue bands in HU for the bias check (air, fat, soft tissue, bone)
HU_BANDS = {"air": (-2000.0, -500.0), "fat": (-190.0, -30.0), "soft": (-30.0, 150.0)}
HU_BANDS["bone"] = (300.0, 4000.0)
BODY_HU = -500.0  # voxels above it are the body (its volume fraction: the body-size measure)
BIAS_LIMIT = 512  # volumes per side read for the bias check (the first ones)
AUDIT_TRAIN_FORMS = "a training run folder, a NIfTI folder, a datalist .json or a data config name"


def describe_source(source: str) -> dict[str, str]:
    """A path-free description of a ``DataMeta.source`` and the sha256 of its sorted file list
    (file names relative to the folder, datalist image entries, or the source's own name)."""
    path = Path(source).expanduser()
    if source == "phantom" or source.startswith("phantom:"):
        text, files = "phantom (procedural CT torso phantoms)", ["phantom"]
    elif path.is_dir():
        found = {p for g in NIFTI_GLOBS for p in path.rglob(g)}
        files = sorted(p.relative_to(path).as_posix() for p in found)
        text = f"nifti folder ({len(files)} files)"
    elif path.suffix == ".json" and path.is_file():
        try:
            doc = json.loads(path.read_text())
            items = doc.get("training", []) if isinstance(doc, dict) else []
        except ValueError:
            items = []
        files = sorted(str(e.get("image", e)) if isinstance(e, dict) else str(e) for e in items)
        text = f"nifti datalist ({len(files)} training items)"
    elif path.suffix == ".npz":
        text, files = "medmnist3d archive", [path.name]
    else:
        text, files = "scan data (not found on this machine)", [path.name]
    digest = hashlib.sha256("\n".join(files).encode()).hexdigest()
    return {"description": text, "source_sha256": digest}


def _public_id(value: str, k: int) -> str:
    """A training item's id as written: as it is when shareable (``phantom:42``), else its
    position (``train#17``: an absolute path never goes into a cohort)."""
    return value if not marking.check_shareable([value]) else f"train#{k}"


class VolumeRelease:
    """The release steps of one volume cohort (see the module docstring).

    Args:
        meta: the training data's description.
        settings: the resolved sample settings; ``extra["release"]`` holds the
            :class:`~medgen.marking.ReleaseOptions` (:func:`medgen.marking.release_options`).
        identity: the cohort's identity record (checkpoint sha256 and sampling settings).
        config_hash: the training config's hash.
    """

    def __init__(
        self,
        meta: DataMeta,
        settings: SampleSettings,
        identity: Mapping[str, Any],
        config_hash: str | None = None,
    ) -> None:
        self.meta, self.settings = meta, settings
        self.identity, self.config_hash = dict(identity), config_hash
        self.options = marking.release_options(settings)
        self.training: Any = None  # the training VolumeSet, once the audit read it

    # -- names and records ------------------------------------------------------------------
    @cached_property
    def source(self) -> dict[str, str]:
        return describe_source(self.meta.source)

    @property
    def cohort_name(self) -> str:
        """The datalist name: ``medgen-phantom``, else ``medgen-<kind>-<sha8 of the sources>``."""
        if self.source["description"].startswith("phantom"):
            return "medgen-phantom"
        kind = self.source["description"].split(" ")[0]
        return f"medgen-{kind}-{self.source['source_sha256'][:8]}"

    def data_summary(self) -> dict[str, Any]:
        m = self.meta
        return {
            **self.source,
            "modality": str(m.modality),
            "spatial_size": list(m.spatial_size),
            "spacing": list(m.spacing),
            "units": m.units,
            "channels": m.channels,
            "channel_names": list(m.channel_names),
            "class_names": list(m.class_names) if m.class_names else None,
        }

    @cached_property
    def record(self) -> dict[str, Any]:
        """The marking record every file of this cohort carries."""
        settings = {k: v for k, v in self.identity.items() if k != "checkpoint_sha256"}
        return marking.provenance(
            "volume",
            checkpoint_sha256=str(self.identity.get("checkpoint_sha256") or "unknown"),
            generator=self.options.generator or "unknown",
            settings=settings,
            extra={"data": self.data_summary(), "training_config_hash": self.config_hash},
        )

    # -- hooks the cohort calls --------------------------------------------------------------
    def check(self) -> None:
        """Settings errors found before any output exists (audit data, evaluation report)."""
        if self.options.audit:
            self.training_spec()
        if self.options.evaluation and not Path(self.options.evaluation).expanduser().is_file():
            raise ConfigError("evaluation", self.options.evaluation, "an evaluation.json file")

    def stamp(self, data: np.ndarray) -> np.ndarray:
        """The volume with the voxel stamp (:func:`medgen.marking.stamp_voxels`)."""
        return marking.stamp_voxels(data, self.record)

    def mark(self, img: Any) -> Any:
        """A ``Nifti1Image`` with the header marks (:func:`medgen.marking.mark_nifti`)."""
        return marking.mark_nifti(img, self.record)

    def sidecar(self, record: dict[str, Any]) -> dict[str, Any]:
        """A sample's sidecar as written: source described, no host, the marking record."""
        out = {k: v for k, v in record.items() if k != "host"}
        out["source"] = self.source["description"]
        out["source_sha256"] = self.source["source_sha256"]
        out["marking"] = self.record
        if self.options.share:
            marking.assert_shareable(out, f"sidecar {record.get('file')}")
        return out

    def run_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """``run.json`` as written: without ``share``, the local facts (data path, host,
        checkpoint path) under ``local``; with it, none of them."""
        out = dict(record)
        prov = dict(out.get("provenance") or {})
        host = prov.pop("host", None)
        out.update(provenance=prov, source=self.source["description"], marking=self.record)
        out["source_sha256"] = self.source["source_sha256"]
        out["share"] = self.options.share
        if not self.options.share:
            local = {
                "source": self.meta.source,
                "host": host,
                "checkpoint": self.options.checkpoint,
            }
            out["local"] = local
        return out

    # -- the audit ----------------------------------------------------------------------------
    def training_spec(self) -> str:
        """Where the training volumes are read from: ``audit_train``, else the checkpoint's
        training run folder (``config.yaml`` beside ``checkpoints/``), else the data's own path
        when it exists here; a ``UserError`` naming ``audit_train`` otherwise."""
        from medgen.imaging.evaluation.loading import source_kind

        given = self.options.audit_train
        if given:
            if source_kind(given) is None:
                raise ConfigError("audit_train", given, AUDIT_TRAIN_FORMS)
            return str(given)
        if self.options.checkpoint:
            for folder in Path(self.options.checkpoint).resolve().parents[:2]:
                if (folder / "config.yaml").is_file():
                    return str(folder)
        if self.meta.source != "phantom" and source_kind(self.meta.source) is not None:
            return self.meta.source
        raise UserError(
            f"audit=true needs the training data ({self.source['description']}): the "
            "checkpoint's training run folder (config.yaml) is not beside it and the data is not "
            f"on this machine; set audit_train=<{AUDIT_TRAIN_FORMS}>"
        )

    def _read_samples(self, out: Path, records: Sequence[Mapping[str, Any]]) -> Any:
        from medgen.imaging.evaluation.loading import read_files
        from medgen.imaging.intensity import IntensityMapping

        entries = [(out / str(r["file"]), None) for r in records]
        intensity = IntensityMapping.from_dict(dict(self.meta.intensity))
        return read_files(
            entries, name="samples", source="cohort", root=out, intensity=intensity, progress=False
        )

    def _read_training(self, samples: Any) -> Any:
        from medgen.imaging.evaluation.loading import load_volumes

        if self.training is None:
            spec = self.training_spec()
            log.info("audit: reading the training volumes from %s", spec)
            self.training = load_volumes(
                spec, name="train", intensity=samples.intensity, like=samples, split="train",
                progress=False,
            )  # fmt: skip
        return self.training

    def audit(self, out: Path, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The memorization audit of the samples ``records`` (sidecars) in ``out``, written to
        ``out/audit.json`` and each sidecar; raises a ``UserError`` naming the flagged samples
        unless ``allow_memorized``. ``{"run": False}`` when ``audit`` is off."""
        from medgen.imaging.evaluation.memorization import memorization

        if not self.options.audit or not records:
            return {"run": False}
        if self.meta.channels != 1:
            raise ConfigError("audit", True, "false for multi-channel volumes (one channel only)")
        samples = self._read_samples(out, records)
        train = self._read_training(samples)
        if tuple(train.shape) != tuple(samples.shape):
            raise UserError(
                f"audit: training volumes are {list(train.shape)}, samples {list(samples.shape)}; "
                f"set audit_train=<{AUDIT_TRAIN_FORMS}> with the training geometry"
            )
        ids = [f"sample_{int(r['index']):05d}" for r in records]
        train_ids = [_public_id(t, k) for k, t in enumerate(train.ids)]
        result = memorization(samples.images, train.images, sample_ids=ids, train_ids=train_ids)
        typical = result["median_train_nearest_distance"]
        flagged = {p["sample"]: p for p in result["flagged"]}
        for r, near in zip(records, result["nearest"], strict=True):
            ratio = near["distance"] / typical if typical > 0 else float("nan")
            near["distance_ratio"] = ratio
            entry = {**near, "flagged": near["sample"] in flagged, "threshold": result["threshold"]}
            path = out / str(r["file"]).replace(".nii.gz", ".json")
            atomic_write_json(path, {**r, "memorization": entry})
        summary = {
            "run": True,
            "training": f"{len(train)} volumes ({self.source['description']})",
            "percentile": result["percentile"],
            "threshold": result["threshold"],
            "flagged": [n for n in result["nearest"] if n["sample"] in flagged],
            "flagged_fraction": result["flagged_fraction"],
            "median_nearest_distance": result["median_nearest_distance"],
            "median_train_nearest_distance": typical,
            "distance_ratio": result["distance_ratio"],
            "allow_memorized": self.options.allow_memorized,
        }
        atomic_write_json(out / AUDIT_FILE, {**summary, "nearest": result["nearest"]})
        if flagged and not self.options.allow_memorized:
            names = ", ".join(
                f"{n['sample']} (NN distance ratio {n['distance_ratio']:.3f}, nearest {n['train']})"
                for n in summary["flagged"][:10]
            )
            raise UserError(
                f"audit: {len(flagged)} of {len(records)} samples are closer to a training volume "
                f"than nearly all training volumes are to each other (memorized?): {names}; not "
                f"finalized (see {AUDIT_FILE}); pass allow_memorized=true to finalize anyway"
            )
        return summary

    # -- finalize -----------------------------------------------------------------------------
    def finalize(
        self, out: Path, records: Sequence[Mapping[str, Any]], audit: Mapping[str, Any]
    ) -> dict[str, Any]:
        """After the index files: mark ``dataset.json``, write the card, and with ``share``
        strip ``run.json`` and check every JSON and the card for leaks (a bug if any)."""
        datalist = out / "dataset.json"
        if datalist.is_file():
            doc = json.loads(datalist.read_text())
            doc.update(synthetic=True, medgen_synthetic=self.record)
            atomic_write_json(datalist, doc)
        if self.options.share:
            self._share_run_json(out / "run.json")
        md, js = write_card(out, self.card(out, records, audit), shareable=self.options.share)
        if self.options.share:
            leaks = shareability_problems(out)
            if leaks:
                raise RuntimeError(f"share=true cohort {out} would leak: " + "; ".join(leaks[:5]))
        return {"card": str(md), "card_json": str(js), "audit": dict(audit)}

    def _share_run_json(self, path: Path) -> None:
        if not path.is_file():
            return
        doc = json.loads(path.read_text())
        doc.pop("local", None)
        doc["share"] = True
        if isinstance(doc.get("provenance"), dict):
            doc["provenance"].pop("host", None)
        atomic_write_json(path, doc)

    def card(
        self, out: Path, records: Sequence[Mapping[str, Any]], audit: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The card's dict (see :mod:`medgen.card`)."""
        rec, first = self.record, (records[0] if records else {})
        settings = {k: v for k, v in self.identity.items() if k != "checkpoint_sha256"}
        cohort = {
            "samples": len(records),
            "files": "images/sample_NNNNN.nii.gz (+ sidecar .json)",
            "shape": first.get("shape"),
            "dtype": first.get("dtype"),
            "units": first.get("units"),
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        return {
            "title": f"Synthetic {self.meta.modality} cohort {self.cohort_name}",
            "summary": f"{len(records)} synthetic volumes generated by medgen "
            f"{rec['medgen_version']}. Every file is marked `{marking.MARK}`: "
            "`medgen inspect <file>` reads the marking back.",
            "sections": {
                "Model": {
                    "generator": rec["generator"],
                    "checkpoint_sha256": rec["checkpoint_sha256"],
                    "training_config_hash": self.config_hash,
                },
                "Training data": self.data_summary(),
                "Sampling settings": settings,
                "Cohort": cohort,
                "Evaluation": self.evaluation_figures(out),
                "Memorization audit": audit_section(audit),
                "Bias check": self.bias_check(out, records),
                "Intended use and limits": INTENDED_USE,
            },
        }

    def evaluation_figures(self, out: Path) -> dict[str, Any] | str:
        """The metrics of ``evaluation=<file>`` or an ``evaluation.json`` in ``out``."""
        path = Path(self.options.evaluation).expanduser() if self.options.evaluation else None
        path = path or (out / "evaluation.json")
        if not path.is_file():
            return "not computed (medgen evaluate samples=<this folder> writes evaluation.json)"
        doc = json.loads(path.read_text())
        metrics = doc.get("metrics", doc) if isinstance(doc, dict) else {}
        return {str(k): v for k, v in metrics.items() if isinstance(v, int | float)}

    def bias_check(self, out: Path, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Cohort vs training data: tissue-band fractions, body volume fraction and body-size
        bins (training tertiles); the training side when the audit read it."""
        from medgen.imaging.nifti import read_volume

        hu = self.meta.units == "HU"
        vols = [read_volume(out / str(r["file"])) for r in records[:BIAS_LIMIT]]
        vols = [v if v.ndim == 3 else v[..., 0] for v in vols]
        cohort = volume_stats(vols, hu=hu)
        result: dict[str, Any] = {"cohort volumes": len(vols)}
        cond = self.settings.condition
        names = self.meta.class_names or ()
        if cond is not None:
            label = names[cond] if isinstance(cond, int) and 0 <= cond < len(names) else cond
            result["class condition"] = f"every sample drawn as class {label!r}"
        elif names:
            result["class condition"] = f"unconditional (training classes: {list(names)})"
        training = None
        if self.training is not None:
            mapping = self.training.intensity
            tv = [np.asarray(mapping.from_unit(x[0].numpy())) for x in self.training.images]
            training = volume_stats(tv[:BIAS_LIMIT], hu=hu)
            edges = np.quantile(training["body_fraction_values"], [1 / 3, 2 / 3])
            bins = np.bincount(np.digitize(cohort["body_fraction_values"], edges), minlength=3)
            result["body-size bins (training tertiles), cohort share"] = {
                n: round(float(c) / max(1, len(vols)), 3)
                for n, c in zip(("small", "medium", "large"), bins, strict=True)
            }
        for key, value in cohort.items():
            if key == "body_fraction_values":
                continue
            row = {"cohort": value}
            if training is not None:
                row["training"] = training[key]
            result[key] = row
        if training is None:
            result["training side"] = "not compared (audit=true reads the training data)"
        return result


def volume_stats(vols: Sequence[np.ndarray], *, hu: bool) -> dict[str, Any]:
    """Mean tissue-band fractions (HU) or value percentiles, and the body volume fraction (the
    share of voxels above -500 HU, or above the median value, per volume)."""
    if not vols:
        return {"body_fraction_values": np.zeros(0)}
    stats: dict[str, Any] = {}
    if hu:
        body = np.array([float((v > BODY_HU).mean()) for v in vols])
        for name, (lo, hi) in HU_BANDS.items():
            share = np.mean([float(((v >= lo) & (v < hi)).mean()) for v in vols])
            stats[f"{name} fraction"] = round(float(share), 4)
    else:
        mid = float(np.median(np.concatenate([v.reshape(-1)[::97] for v in vols])))
        body = np.array([float((v > mid).mean()) for v in vols])
        pcts = np.percentile(np.concatenate([v.reshape(-1) for v in vols]), [5, 50, 95])
        stats["value p5/p50/p95"] = [round(float(p), 4) for p in pcts]
    stats["body fraction mean"] = round(float(body.mean()), 4)
    stats["body fraction sd"] = round(float(body.std()), 4)
    stats["body_fraction_values"] = body
    return stats


def audit_section(audit: Mapping[str, Any]) -> dict[str, Any] | str:
    if not audit.get("run"):
        return "not run (medgen sample ... audit=true runs it)"
    flagged = audit.get("flagged") or []
    return {
        "training reference": audit.get("training"),
        "rule": "flag when the nearest-training distance is below percentile "
        f"{audit['percentile']:g} of the training-to-training nearest distances",
        "threshold (1 - correlation)": audit.get("threshold"),
        "flagged samples": [n["sample"] for n in flagged] or "none",
        "median NN distance ratio (samples / training)": audit.get("distance_ratio"),
        "finalized despite flags (allow_memorized)": bool(flagged)
        and bool(audit.get("allow_memorized")),
    }


def shareability_problems(out: Path) -> list[str]:
    """Every leak (:func:`medgen.marking.check_shareable`) in the JSON files and card of ``out``."""
    problems = []
    for path in sorted(out.rglob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            continue
        problems += [f"{path.relative_to(out)}: {p}" for p in marking.check_shareable(doc)]
    card = out / "CARD.md"
    if card.is_file():
        lines = card.read_text().splitlines()
        problems += [f"CARD.md: {p}" for p in marking.check_shareable(lines)]
    return problems
