"""The fast evaluation path gives the numbers the straightforward one gave.

Known answers were computed with the implementation before the speed-up (dense float32 Tanimoto
matrices, each metric parsing its own SMILES, ChemNet in one process): exact for counts, 1e-9
relative for Tanimoto means and the other floats, 1e-6 relative for FCD.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem

from medgen.chem.dualuse import dualuse_column
from medgen.chem.metrics import (
    internal_diversities,
    internal_diversity,
    internal_similarity,
    nearest_similarities,
    snn,
)
from medgen.chem.reference import (
    ReferenceStats,
    evaluation_features,
    molecule_features,
    reference_index,
)
from medgen.chem.similarity import (
    fingerprint_index,
    internal_max_similarity,
    max_tanimoto,
    mean_tanimoto,
    morgan_fingerprints,
)

FIXTURE_200 = Path(__file__).resolve().parents[1] / "data" / "chem" / "moses_test_200.smi"

# before the speed-up, on the 200-molecule fixture: SNN of the first 100 against the last 100,
# IntDiv and IntDiv2 of all 200, mean GuacaMol internal similarity (4096 bits)
FIXTURE_ANSWERS = {
    "snn": 0.2795256642997265,
    "intdiv": 0.8519498000686988,
    "intdiv2": 0.8348139236639707,
    "internal_max_mean": 0.2862762238830328,
}
NEAREST_FIRST5 = [0.21739129722118378, 0.33870968222618103, 0.28985506296157837,
                  0.2567567527294159, 0.2631579041481018]  # fmt: skip

# before the speed-up: evaluate_smiles on the first 1,000 MOSES test + first 1,000 MOSES train
# SMILES + ["C1CC", "not a smiles"], reference=moses (Test, TestSF), train=moses, GuacaMol KL
# against 10,000 MOSES test molecules
MOSES_ANSWERS = {
    "valid": 0.999000999000999,
    "unique@1000": 1.0,
    # (unique@10000 was 1.0: it is NaN now, by definition, for fewer than 10,000 valid samples)
    "FCD/Test": 5.538746827814222,
    "SNN/Test": 0.8269233101010323,
    "Frag/Test": 0.9530992932656508,
    "Scaf/Test": 0.7460383736309212,
    "FCD/TestSF": 6.474303236613764,
    "SNN/TestSF": 0.580307420745492,
    "Frag/TestSF": 0.9487911435647819,
    "Scaf/TestSF": 0.0,
    "IntDiv": 0.8511283386630448,
    "IntDiv2": 0.8400406116557558,
    "Filters": 1.0,
    "logP": 0.17882458609641413,
    "SA": 0.2941895785771441,
    "QED": 0.01000985519743855,
    "weight": 13.434311620494809,
    "Novelty": 0.5,
    "guacamol/FCD_score": 0.3303015131152136,
    "guacamol/KL_score": 0.9130365692846197,
    "guacamol/KL/BertzCT": 0.010209078859200346,
    "guacamol/KL/MolLogP": 0.03910808511229396,
    "guacamol/KL/MolWt": 0.1168531258233741,
    "guacamol/KL/TPSA": 0.055393434689746085,
    "guacamol/KL/NumHAcceptors": 0.03186297419801501,
    "guacamol/KL/NumHDonors": 0.03266636721823559,
    "guacamol/KL/NumRotatableBonds": 0.1651396468402338,
    "guacamol/KL/NumAliphaticRings": 0.07274877938372404,
    "guacamol/KL/NumAromaticRings": 0.019015738735942322,
    "guacamol/KL/internal_similarity": 0.43421490201586677,
}
EXACT = {"valid", "unique@1000", "Filters", "Novelty"}


def _fixture() -> list[str]:
    lines = FIXTURE_200.read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.startswith("#")]


def _dense_tanimoto(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The textbook matrix ``(len(x), len(y))`` in float32, empty pairs 1."""
    both = x.astype(np.float32) @ y.T.astype(np.float32)
    union = x.sum(1, dtype=np.float32)[:, None] + y.sum(1, dtype=np.float32)[None, :] - both
    with np.errstate(invalid="ignore"):
        sim = both / union
    return np.where(union == 0, np.float32(1.0), sim)


@pytest.fixture(scope="module")
def fps() -> np.ndarray:
    return morgan_fingerprints([Chem.MolFromSmiles(s) for s in _fixture()])


def test_fixture_metrics_match_the_known_answers(fps):
    assert snn(fps[:100], fps[100:]) == pytest.approx(FIXTURE_ANSWERS["snn"], rel=1e-12)
    assert internal_diversity(fps, 1) == pytest.approx(FIXTURE_ANSWERS["intdiv"], rel=1e-12)
    assert internal_diversity(fps, 2) == pytest.approx(FIXTURE_ANSWERS["intdiv2"], rel=1e-12)
    packed = np.packbits(fps, axis=1)
    nearest = nearest_similarities(packed[:100], fingerprint_index(packed[100:]), chunk_size=7)
    assert nearest[:5].tolist() == NEAREST_FIRST5  # float32 divisions: bit for bit
    one, two = internal_diversities(packed, block=37)  # blocks that do not divide 200
    assert one == pytest.approx(FIXTURE_ANSWERS["intdiv"], rel=1e-12)
    assert two == pytest.approx(FIXTURE_ANSWERS["intdiv2"], rel=1e-12)
    fps4 = morgan_fingerprints([Chem.MolFromSmiles(s) for s in _fixture()], n_bits=4096)
    packed4 = np.packbits(fps4, axis=1)
    inner = internal_similarity(packed4, n_bits=4096, block=64)
    assert inner.mean() == pytest.approx(FIXTURE_ANSWERS["internal_max_mean"], rel=1e-12)
    assert np.array_equal(inner, internal_max_similarity(fps4, batch_size=33))


def test_popcount_grouped_search_equals_the_full_matrix(fps):
    rng = np.random.default_rng(0)
    # duplicates, empty fingerprints and a reference in random order
    reference = np.vstack([fps[50:], fps[60:70], np.zeros((3, 1024), np.uint8)])
    reference = reference[rng.permutation(len(reference))]
    query = np.vstack([fps[:50], np.zeros((2, 1024), np.uint8)])
    index = fingerprint_index(np.packbits(reference, axis=1))
    assert index.size == len(reference) and len(index.bits) == 151  # 150 distinct + one empty
    assert np.all(np.diff(index.counts) >= 0)
    got = max_tanimoto(np.packbits(query, axis=1), index, block=16)
    dense = _dense_tanimoto(query, reference).max(1).astype(np.float64)
    assert np.array_equal(got, dense)
    assert got[-1] == 1.0  # an empty query meets the empty reference fingerprint (MOSES: 1)
    means = mean_tanimoto(np.packbits(reference, axis=1), block=29)
    full = _dense_tanimoto(reference, reference).astype(np.float64)
    assert np.allclose(means[:, 0], full.mean(1), rtol=1e-12, atol=0)
    assert np.allclose(means[:, 1], (full**2).mean(1), rtol=1e-12, atol=0)


def test_one_parse_features_equal_the_per_metric_features():
    smiles = [*_fixture()[:40], "C1CC", None, "", "OCC", "C[C@H](N)O"]
    feats = evaluation_features(smiles, fcd=False, dualuse=True, chunk_size=9)
    canon = [c for c in feats["canonical"] if c is not None]
    assert len(feats["canonical"]) == len(smiles) and len(canon) == 42
    assert feats["canonical"][40:43] == [None, None, None] and canon[-2:] == ["CCO", "C[C@H](N)O"]
    old = molecule_features(canon)
    for key, value in old.items():
        assert np.array_equal(feats[key], value) if key == "fps" else feats[key] == value, key
    assert feats["flat"][-1] == "CC(N)O" and feats["fcd_smiles"][-1] == "C[C@H](N)O"
    assert feats["dualuse"] == dualuse_column(canon)


def test_reference_index_is_cached_as_plain_npz(tmp_path, fps):
    stats = ReferenceStats("r", np.zeros(2), np.eye(2), fps, {}, {}, cache_dir=tmp_path)
    index = reference_index(stats)
    files = list(tmp_path.glob("fps-*.npz"))
    assert len(files) == 1
    with np.load(files[0], allow_pickle=False) as npz:
        assert sorted(npz.files) == ["bits", "counts", "size"]
    again = reference_index(ReferenceStats("r", np.zeros(2), np.eye(2), fps, {}, {},
                                           cache_dir=tmp_path))  # fmt: skip
    assert np.array_equal(again.bits, index.bits) and again.size == index.size == len(fps)


@pytest.mark.slow
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_moses_table_matches_the_known_answers(n_jobs):
    from medgen.chem.evaluation import evaluate_smiles
    from medgen.chem.reference import cached_kl_reference, load_moses_stats
    from medgen.datasets import default_data_dir

    moses = default_data_dir() / "moses"
    if not (moses / "test_stats.plain.npz").is_file():
        pytest.skip("MOSES data not unpacked (medgen data moses)")

    def first(split: str, n: int) -> list[str]:
        with gzip.open(moses / f"{split}.csv.gz", "rt") as fh:
            next(fh)
            return [next(fh).strip() for _ in range(n)]

    smiles = first("test", 1000) + first("train", 1000) + ["C1CC", "not a smiles"]
    references = {
        "Test": load_moses_stats(moses / "test_stats.npz", "Test"),
        "TestSF": load_moses_stats(moses / "test_scaffolds_stats.npz", "TestSF"),
    }
    kl = cached_kl_reference(moses / "test.csv.gz", moses.parent / "cache" / "reference")
    with gzip.open(moses / "train.csv.gz", "rt") as fh:
        next(fh)
        train = {line.strip() for line in fh}
    got = evaluate_smiles(
        smiles, references=references, train=train, kl_reference=kl, n_jobs=n_jobs
    )
    wrong = {}
    for name, expected in MOSES_ANSWERS.items():
        rel = 0.0 if name in EXACT else 1e-6 if "FCD" in name else 1e-9
        if not got[name] == pytest.approx(expected, rel=rel, abs=0.0 if rel == 0 else 1e-12):
            wrong[name] = (got[name], expected)
    assert not wrong, wrong
