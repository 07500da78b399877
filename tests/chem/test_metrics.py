"""Generative metrics: hand-checkable known answers, invariants and MOSES conventions."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem

from medgen.chem.fcd import frechet_distance
from medgen.chem.metrics import (
    canonical_smiles,
    continuous_kl,
    discrete_kl,
    fraction_passes_filters,
    fraction_unique,
    fraction_valid,
    internal_diversity,
    kl_divergence_score,
    novelty,
    snn,
)
from medgen.chem.reference import brics_fragments, compute_scaffold
from medgen.chem.similarity import (
    aggregated_tanimoto,
    cosine_similarity_counts,
    internal_max_similarity,
    morgan_fingerprints,
)

GEN = ["CCO", "OCC", "c1ccccc1", "C1CC", None, "", "CC(=O)O"]


def test_validity_uniqueness_novelty_by_hand():
    assert fraction_valid(GEN) == pytest.approx(4 / 7)
    # valid canonical: CCO, CCO, c1ccccc1, CC(=O)O -> 3 distinct of 4
    assert fraction_unique(GEN) == pytest.approx(3 / 4)
    assert fraction_unique(GEN, k=2) == pytest.approx(1 / 2)  # first 2 *valid*: CCO, CCO
    assert novelty(GEN, train=["CCO", "CC(=O)O"]) == pytest.approx(1 / 3)  # only benzene is new
    assert fraction_valid([]) == 0.0 and fraction_unique(["x"]) == 0.0 and novelty([None], []) == 0
    assert canonical_smiles("OCC") == "CCO" and canonical_smiles("C1CC") is None
    assert canonical_smiles("C[C@H](N)O", isomeric=False) == "CC(N)O"


def _fps(*smiles):
    return morgan_fingerprints([Chem.MolFromSmiles(s) for s in smiles])


def test_tanimoto_snn_and_internal_diversity_by_hand():
    a = np.array([[1, 1, 0, 0]], dtype=np.uint8)
    b = np.array([[1, 0, 1, 0]], dtype=np.uint8)  # |a & b| = 1, |a | b| = 3
    assert aggregated_tanimoto(a, b)[0] == pytest.approx(1 / 3)
    both = np.vstack([a, b])
    # IntDiv1 = 1 - mean over i of mean_j T_ij = 1 - (1 + 1/3) / 2
    assert internal_diversity(both, p=1) == pytest.approx(1 - 2 / 3)
    assert internal_diversity(both, p=2) == pytest.approx(1 - np.sqrt((1 + 1 / 9) / 2))
    assert snn(b, both) == pytest.approx(1.0)
    assert internal_max_similarity(both).tolist() == pytest.approx([1 / 3, 1 / 3])
    same = _fps("CCO", "CCO")
    assert internal_diversity(same) == pytest.approx(0.0)
    assert morgan_fingerprints([Chem.MolFromSmiles("CCO")]).shape == (1, 1024)


def test_fragments_scaffolds_and_cosine():
    # ethyl benzoate cut at its BRICS bonds: ethyl | ether O | carbonyl | phenyl
    frags = brics_fragments(Chem.MolFromSmiles("CCOC(=O)c1ccccc1"))
    assert sorted(frags) == sorted(["[1*]C([6*])=O", "[16*]c1ccccc1", "[3*]O[3*]", "[4*]CC"])
    assert brics_fragments(Chem.MolFromSmiles("CCO")) == ["CCO"]  # no BRICS bond
    assert compute_scaffold(Chem.MolFromSmiles("c1ccccc1CCc1ccncc1")) == "c1ccc(CCc2ccncc2)cc1"
    assert compute_scaffold(Chem.MolFromSmiles("c1ccccc1C")) is None  # one ring < min_rings=2
    assert cosine_similarity_counts({"a": 1, "b": 1}, {"a": 2, "b": 2}) == pytest.approx(1.0)
    assert cosine_similarity_counts({"a": 1}, {"b": 1}) == pytest.approx(0.0)
    assert np.isnan(cosine_similarity_counts({}, {"a": 1}))
    assert fraction_passes_filters([True, False, True, True]) == 0.75


def test_frechet_distance_known_answers():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    mu, sigma = x.mean(0), np.cov(x.T)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    # same covariance, shifted mean: the distance is the squared shift
    assert frechet_distance(mu, sigma, mu + 2.0, sigma) == pytest.approx(4 * 8, rel=1e-6)
    # isotropic: ||mu||^2 + d (s1 + s2 - 2 sqrt(s1 s2))
    eye = np.eye(4)
    assert frechet_distance(np.zeros(4), eye, np.ones(4), 4 * eye) == pytest.approx(4 + 4 * 1.0)
    from fcd_torch.utils import calculate_frechet_distance

    y = rng.normal(size=(300, 8)) * 1.5
    expected = calculate_frechet_distance(mu, sigma, y.mean(0), np.cov(y.T))
    assert frechet_distance(mu, sigma, y.mean(0), np.cov(y.T)) == pytest.approx(expected)


def test_kl_divergences():
    rng = np.random.default_rng(1)
    x = rng.normal(size=2000)
    assert continuous_kl(x, x) == pytest.approx(0.0, abs=1e-9)
    assert continuous_kl(x, x + 3) > 1.0
    counts = rng.integers(0, 6, size=2000).astype(float)
    assert discrete_kl(counts, counts) == pytest.approx(0.0, abs=1e-9)
    desc = rng.normal(size=(500, 9))
    sim = rng.uniform(size=500)
    score, parts = kl_divergence_score(desc, sim, desc, sim)
    assert score == pytest.approx(1.0) and len(parts) == 10


@pytest.mark.parametrize("density", [0.04, 0.5])
def test_bit_counts_are_exact_in_every_count_type(density):
    """The shared-bit counts are the exact integer product, in the narrow type when every count
    fits it and in a wider one when popcounts pass 255 (dense fingerprints), and so are the
    similarities built on them."""
    import medgen.chem.similarity as similarity
    from medgen.chem.similarity import fingerprint_index, max_tanimoto

    bits = (np.random.default_rng(3).random((40, 1024)) < density).astype(np.uint8)
    packed = np.packbits(bits, axis=1)
    indptr, indices, right_t = similarity._product_sides(packed, packed, 1024)
    wide = bits.sum(1).max() > 255
    assert right_t.dtype == (np.uint16 if wide else np.uint8)
    counts = similarity._common_bits(indptr, indices, right_t, 0, 40)
    np.testing.assert_array_equal(counts, bits.astype(np.int64) @ bits.T.astype(np.int64))
    np.testing.assert_array_equal(  # a row range of the CSR side
        similarity._common_bits(indptr, indices, right_t, 5, 17), counts[5:17]
    )
    union = bits.sum(1)[:, None] + bits.sum(1)[None, :] - counts
    expected = np.where(np.eye(40, dtype=bool), 0.0, counts / union).max(1)
    np.testing.assert_allclose(internal_max_similarity(bits), expected, rtol=1e-6)
    query = np.packbits(bits[:7], axis=1)
    np.testing.assert_array_equal(max_tanimoto(query, fingerprint_index(packed)), np.ones(7))
