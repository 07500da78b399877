"""Distribution metrics end to end: a set against itself (exact answers), the statistics cache,
the `medgen evaluate` task, and (when `medgen data moses` was run) MOSES's published numbers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medgen.chem import reference as ref_module
from medgen.chem.evaluation import evaluate_smiles
from medgen.chem.reference import (
    cached_reference_stats,
    compute_kl_reference,
    compute_reference_stats,
    load_stats,
    save_stats,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "chem"
SAMPLE = DATA / "moses_test_200.smi"
REPO = Path(__file__).resolve().parents[2]


def _smiles(n: int = 60) -> list[str]:
    lines = SAMPLE.read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.startswith("#")][:n]


@pytest.fixture(scope="module")
def self_stats():
    return compute_reference_stats(_smiles(), name="Self", n_jobs=1, kl_size=60)


def test_a_set_against_itself(self_stats):
    smiles = _smiles()
    kl_ref = (self_stats.kl_descriptors, self_stats.kl_internal_similarity)
    m = evaluate_smiles(
        [*smiles, "C1CC"], references={"Self": self_stats}, train=smiles[:15], kl_reference=kl_ref,
        k=[50], n_jobs=1,
    )  # fmt: skip
    assert m["valid"] == pytest.approx(60 / 61)
    assert m["unique@50"] == 1.0
    assert 0.0 <= m["FCD/Self"] < 1e-4  # rank-deficient covariance (60 < 512)
    assert m["SNN/Self"] == pytest.approx(1.0)
    assert m["Frag/Self"] == pytest.approx(1.0) and m["Scaf/Self"] == pytest.approx(1.0)
    assert m["Filters"] == 1.0  # MOSES molecules pass the MOSES filters by construction
    assert m["Novelty"] == pytest.approx(45 / 60)
    assert m["logP"] == pytest.approx(0.0) and m["weight"] == pytest.approx(0.0)
    assert m["guacamol/FCD_score"] == pytest.approx(1.0)
    assert m["guacamol/KL_score"] == pytest.approx(1.0, abs=1e-6)
    assert 0.80 < m["IntDiv"] < 0.95 and m["IntDiv2"] < m["IntDiv"]


def test_stats_round_trip_without_pickle(self_stats, tmp_path):
    path = save_stats(self_stats, tmp_path / "s.npz")
    back = load_stats(path)
    assert np.array_equal(back.fps, self_stats.fps) and back.fps.shape == (60, 1024)
    assert back.fragments == self_stats.fragments and back.scaffolds == self_stats.scaffolds
    assert np.allclose(back.fcd_sigma, self_stats.fcd_sigma)
    assert np.allclose(back.properties["SA"], self_stats.properties["SA"])


def test_evaluate_task_and_reference_cache(compose_cfg, tmp_path, monkeypatch):
    from medgen.tasks.evaluate import evaluate

    reference = tmp_path / "ref.smi"
    reference.write_text("\n".join(_smiles(40)) + "\n")
    cfg = compose_cfg(
        "evaluate",
        [f"samples={SAMPLE}", f"reference={reference}", f"train={reference}", "k=[50]",
         "n_jobs=1", "kl_size=30", "limit=30"],
    )  # fmt: skip
    metrics = evaluate(cfg)
    assert metrics["Novelty"] == 0.0 and metrics["valid"] == 1.0
    assert 0.0 < metrics["FCD/Ref"] < 30 and metrics["SNN/Ref"] == pytest.approx(1.0)
    record = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert record["n_samples"] == 30 and record["metrics"]["Filters"] == 1.0
    cache = Path(cfg.paths.data_dir) / "cache" / "reference"
    assert len(list(cache.glob("ref-*.npz"))) == 2  # MOSES-style stats + KL reference

    def recompute(*args, **kwargs):
        raise AssertionError("statistics were recomputed instead of read from the cache")

    monkeypatch.setattr(ref_module, "compute_reference_stats", recompute)
    assert cached_reference_stats(reference, cache).fps.shape == (40, 1024)


def test_kl_reference_is_seeded():
    a = compute_kl_reference(_smiles(), size=20, seed=3)
    b = compute_kl_reference(_smiles(), size=20, seed=3)
    assert np.array_equal(a[0], b[0]) and a[0].shape == (20, 9)


def _moses_dir() -> Path | None:
    root = Path(os.environ.get("MEDGEN_DATA_DIR") or REPO / "data") / "moses"
    return (
        root if (root / "test_stats.npz").is_file() and (root / "train.csv.gz").is_file() else None
    )


def _moses_known_answer(n: int) -> dict[str, float]:
    from medgen.chem.reference import load_moses_stats

    root = _moses_dir()
    if root is None:
        pytest.skip("MOSES data not unpacked (run `medgen data moses`)")
    train = pd.read_csv(root / "train.csv.gz")["SMILES"].sample(n, random_state=0).tolist()
    return evaluate_smiles(
        train, references={"Test": load_moses_stats(root / "test_stats.npz")}, k=[n], n_jobs=2
    )


def test_moses_train_sample_lands_near_published_train_row():
    m = _moses_known_answer(300)  # published Train row: SNN/Test 0.642, Frag/Test 1.000
    assert m["valid"] == 1.0 and m["Filters"] == 1.0
    assert 0.62 < m["SNN/Test"] < 0.67
    assert m["Frag/Test"] > 0.98
    assert m["FCD/Test"] < 6.0  # FCD is biased upwards for small samples (~4.7 at n=300)
    assert 0.84 < m["IntDiv"] < 0.87


@pytest.mark.slow
def test_moses_train_sample_10k_lands_near_published_train_row():
    m = _moses_known_answer(10_000)
    assert 0.63 < m["SNN/Test"] < 0.65
    assert m["Frag/Test"] > 0.998 and m["Scaf/Test"] > 0.85
    assert m["FCD/Test"] < 0.3


def test_novelty_canonicalizes_a_non_canonical_train_file(compose_cfg, tmp_path):
    from medgen.tasks.evaluate import _train_set

    train = tmp_path / "train.smi"
    train.write_text("OCC\nC1=CC=CC=C1\nnot_a_smiles\n")  # ethanol and benzene, not canonical
    cfg = compose_cfg("evaluate", [f"samples={train}", f"train={train}"])
    assert _train_set(cfg, n_jobs=1) == {"CCO", "c1ccccc1"}
