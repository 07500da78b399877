"""SMILES sources, graph caches, rejects files and the GraphDataModule."""

from __future__ import annotations

import csv
import gzip
import shutil

import pytest

from medgen.molecules.data import GraphDataModule
from medgen.molecules.featurize import EMBEDDED_SAMPLE, cache_file, load_source


def read_rejects(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_rejects_file_lists_bad_rows_with_line_numbers(tmp_path, data_dir, cache_dir):
    src = tmp_path / "bad_rows.smi"
    shutil.copy(data_dir / "bad_rows.smi", src)
    dm = GraphDataModule(path=str(src), val_fraction=0.0, batch_size=4)
    dm.setup()
    rejects = {int(r["line"]): r for r in read_rejects(dm.rejects_path)}
    assert set(rejects) == {4, 6, 7, 10}  # header on line 1, blank line 5 is not a row
    assert "unclosed ring" in rejects[4]["reason"]
    assert "disconnected fragments" in rejects[6]["reason"]
    assert "valence" in rejects[7]["reason"].lower()
    assert rejects[10]["smiles"] == "not_a_smiles"
    assert len(dm.train_set) == 5  # ethanol, benzene, nitrobenzene, pyrrole, methylammonium
    assert dm.rejects_path.parent == cache_dir / "graphs"  # with the cache, never beside the source
    assert "N+1" in dm.vocabulary.tokens and "O-1" in dm.vocabulary.tokens


def test_fixed_vocabulary_rejects_unknown_atoms(tmp_path, data_dir, cache_dir):
    src = tmp_path / "bad_rows.smi"
    shutil.copy(data_dir / "bad_rows.smi", src)
    dm = GraphDataModule(path=str(src), val_fraction=0.0, vocabulary=["C", "N", "O"])
    dm.setup()
    reasons = {int(r["line"]): r["reason"] for r in read_rejects(dm.rejects_path)}
    assert "not in the vocabulary: N+1, O-1" in reasons[8]
    assert "not in the vocabulary: N+1" in reasons[11]
    assert len(dm.train_set) == 3


def test_csv_column_detected_properties_kept_and_gzip(tmp_path, data_dir, cache_dir):
    src = tmp_path / "small.csv.gz"
    src.write_bytes(gzip.compress((data_dir / "small.csv").read_bytes()))
    feats, _ = load_source(src)
    assert len(feats) == 5 and [r[0] for r in feats.rejects] == [5]  # "broken" on line 5
    assert feats.smiles[0] == "CC(=O)Oc1ccccc1C(=O)O"
    values = feats.properties["pIC50"].tolist()
    assert values[:3] == pytest.approx([5.1, 4.2, 6.3]) and values[3] != values[3]  # NaN


def test_sdf_source(tmp_path, data_dir, cache_dir):
    src = tmp_path / "small.sdf"
    shutil.copy(data_dir / "small.sdf", src)
    feats, _ = load_source(src)
    assert feats.smiles == ["CCO", "Oc1ccccc1", "c1ccc2[nH]ccc2c1"]
    assert [r[0] for r in feats.rejects] == [4]  # the 4th record cannot be read


def test_cache_is_reused_and_falls_back_when_folder_is_read_only(
    tmp_path, data_dir, cache_dir, monkeypatch
):
    src = tmp_path / "bad_rows.smi"
    shutil.copy(data_dir / "bad_rows.smi", src)
    _, first = load_source(src)
    assert first.parent == cache_dir / "graphs" and first.is_file()  # never beside the source
    feats, again = load_source(src)
    assert again == first and len(feats) == 5
    # the installed package's embedded sample too
    assert cache_file(src, None, None).parent == cache_dir / "graphs"
    assert cache_file(EMBEDDED_SAMPLE, 16, None).parent == cache_dir / "graphs"


def test_embedded_sample_with_limit_and_split(cache_dir):
    dm = GraphDataModule(limit=40, val_fraction=0.25, seed=3, batch_size=8)
    dm.setup()
    assert len(dm.train_set) == 30 and len(dm.val_set) == 10
    batch = next(iter(dm.train_dataloader()))
    assert batch.atoms.shape[0] == 8 and batch.adj.shape[1] == batch.atoms.shape[1]
    again = GraphDataModule(limit=40, val_fraction=0.25, seed=3)
    again.setup()
    assert again.val_indices == dm.val_indices
    assert set(dm.train_smiles()).isdisjoint(dm.source.smiles[k] for k in dm.val_indices)


def test_missing_file_is_named(tmp_path, cache_dir):
    with pytest.raises(FileNotFoundError, match="nope.smi"):
        GraphDataModule(path=str(tmp_path / "nope.smi")).setup()


def test_rows_that_used_to_crash_are_rejected_with_line_numbers(tmp_path, data_dir, cache_dir):
    # C:C stayed aromatic after kekulization (KeyError); *CC reached the vocabulary (ValueError)
    src = tmp_path / "bad_rows_errors.csv"
    shutil.copy(data_dir / "bad_rows_errors.csv", src)
    dm = GraphDataModule(path=str(src), val_fraction=0.0, min_atom_count=2)
    dm.setup()
    reasons = {int(r["line"]): r["reason"] for r in read_rejects(dm.rejects_path)}
    assert set(reasons) == {3, 4, 5, 6, 8, 10}
    assert "AROMATIC" in reasons[3]
    assert "atomic number 0" in reasons[4]
    assert "no SMILES" in reasons[5] and "no SMILES" in reasons[10]  # blank line, empty cell
    assert "not in the vocabulary" in reasons[6] and "Fe" in reasons[6]  # one iron: too rare
    assert reasons[8]  # RDKit's parse error
    assert sorted(dm.train_smiles()) == ["CC(=O)O", "CCO", "NCCN", "c1ccccc1"]
    # the cache (with its rejects) is reused on a rerun and gives the same answer
    again = GraphDataModule(path=str(src), val_fraction=0.0, min_atom_count=2)
    again.setup()
    assert again.rejects == dm.rejects


def test_cache_key_changes_with_the_featurizer_version(tmp_path, monkeypatch):
    # caches built by the featurizer before v2 (which stored bad rows) must not be reused
    import medgen.molecules.featurize as featurize

    src = tmp_path / "a.smi"
    src.write_text("CCO\n")
    now = cache_file(src, None, None)
    monkeypatch.setattr(featurize, "FEATURIZER_VERSION", 1)
    assert featurize.cache_file(src, None, None) != now


def test_stored_smiles_are_those_of_the_standardized_graph(tmp_path, cache_dir):
    src = tmp_path / "iso.smi"
    src.write_text("[2H]C\nC[C@H](N)O\nOCC\n[13CH3]c1ccccc1\n")
    feats, _ = load_source(src)
    assert feats.smiles == ["C", "CC(N)O", "CCO", "Cc1ccccc1"]


def test_vocabulary_comes_from_the_training_split_only(tmp_path, cache_dir):
    src = tmp_path / "br.smi"
    src.write_text("\n".join(["CCO", "CCN", "CCC", "OCCO", "NCCN", "CCCO", "CCBr", "CCCN"]) + "\n")
    rejected_in_val = 0
    for seed in range(12):
        dm = GraphDataModule(path=str(src), val_fraction=0.25, seed=seed)
        dm.setup()
        train_tokens = {t for k in dm.train_indices for t in _tokens_of(dm, k)}
        assert set(dm.vocabulary.tokens) == train_tokens
        reasons = {int(r["line"]): r["reason"] for r in read_rejects(dm.rejects_path)}
        if 7 in reasons:  # CCBr drawn into val: its bromine is unknown to the training split
            assert "training split" in reasons[7] and "Br" in reasons[7]
            assert "CCBr" not in [dm.source.smiles[k] for k in dm.val_indices]
            rejected_in_val += 1
        else:
            assert "Br" in dm.vocabulary.tokens
    assert 0 < rejected_in_val < 12


def _tokens_of(dm, k):
    src = dm.source
    a0, a1 = int(src.atom_ptr[k]), int(src.atom_ptr[k + 1])
    return {src.tokens[a] for a in src.atoms[a0:a1].tolist()}


def test_a_token_no_vocabulary_accepts_only_rejects_its_molecules(tmp_path, cache_dir):
    # a cache from an older featurizer could hold '*'; setup() must not fail on it
    from medgen.molecules.featurize import FeaturizedSource

    src = tmp_path / "two.smi"
    src.write_text("CCO\nCCC\n")
    dm = GraphDataModule(path=str(src), val_fraction=0.0)
    dm.setup()
    feats = dm.source
    feats = FeaturizedSource(**{**feats.__dict__, "tokens": feats.tokens + ["*"]})
    feats.atoms[0] = len(feats.tokens) - 1  # first atom of CCO (or CCC) becomes '*'
    dm.source = feats
    dm.use_vocabulary(None)
    assert len(dm.train_set) == 1 and "*" not in dm.vocabulary.tokens
    assert any("not in the vocabulary: *" in r[2] for r in dm.rejects)


def test_train_val_and_test_splits_are_disjoint_and_seeded(cache_dir):
    dm = GraphDataModule(limit=60, val_fraction=0.2, test_fraction=0.15, seed=5, batch_size=8)
    dm.setup()
    train, val, test = set(dm.train_indices), set(dm.val_indices), set(dm.test_indices)
    assert (len(train), len(val), len(test)) == (39, 12, 9)
    assert train.isdisjoint(val) and train.isdisjoint(test) and val.isdisjoint(test)
    assert len(dm.test_set) == 9 and len(train | val | test) == 60
    smiles = dm.source.smiles
    assert {smiles[k] for k in test}.isdisjoint(dm.train_smiles())
    # the test loader serves the test split, not the validation split
    tested = sum(b.atoms.shape[0] for b in dm.test_dataloader())
    assert tested == 9
    # validation is drawn first: adding a test split leaves it as it was
    no_test = GraphDataModule(limit=60, val_fraction=0.2, seed=5)
    no_test.setup()
    assert no_test.val_indices == dm.val_indices and no_test.test_indices == []
    again = GraphDataModule(limit=60, val_fraction=0.2, test_fraction=0.15, seed=5)
    again.setup()
    assert again.test_indices == dm.test_indices
    other = GraphDataModule(limit=60, val_fraction=0.2, test_fraction=0.15, seed=6)
    other.setup()
    assert other.test_indices != dm.test_indices


def test_testing_without_a_test_split_is_refused(cache_dir):
    dm = GraphDataModule(limit=20, val_fraction=0.25)
    dm.setup()
    with pytest.raises(ValueError, match="data.test_fraction=0.0"):
        dm.test_dataloader()
    with pytest.raises(ValueError, match="test_fraction"):
        GraphDataModule(val_fraction=0.5, test_fraction=0.5)


def test_long_featurizing_and_property_work_logs_progress(tmp_path, monkeypatch, caplog):
    # a 1.58 M-row source takes many minutes: progress lines every PROGRESS_EVERY_S seconds
    import logging

    import medgen.molecules.featurize as featurize
    from medgen.molecules.data import property_values

    src = tmp_path / "few.smi"
    src.write_text("SMILES\nCCO\nc1ccccc1\nnot_a_smiles\nCC(=O)O\n")
    monkeypatch.setattr(featurize, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO):
        feats = featurize.featurize_source(src)
        values = property_values(list(feats.smiles), ["logp"])
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("featurizing few.smi: 3 molecules (1 rejected)") for m in lines), lines
    assert any(m.startswith("properties: 3 of 3 molecules") for m in lines), lines
    assert values.shape == (3, 1)


def test_a_limit_reads_its_molecules_from_a_cache_of_the_whole_file(tmp_path, cache_dir, caplog):
    # the first `limit` molecules of a cached whole file: the same graphs, rejects and tokens as
    # featurizing with the limit, without featurizing; their properties from the whole table
    import logging

    import medgen.molecules.featurize as featurize
    from medgen.molecules.data import property_values

    src = tmp_path / "mixed.smi"
    rows = ["CCO", "not_a_smiles", "c1ccccc1", "C[N+](C)(C)C", "C1CC", "CCS", "OCCCl", "CBr"]
    src.write_text("SMILES\n" + "\n".join(rows) + "\n")
    for limit in (0, 2, 3, 5, 100):
        direct = featurize.featurize_source(src, limit=limit)
        head = featurize.featurize_source(src).head(limit)
        assert head.smiles == direct.smiles and head.tokens == direct.tokens, limit
        assert head.rejects == direct.rejects, limit
        for key in ("atoms", "atom_ptr", "bonds", "bond_ptr", "lines"):
            assert getattr(head, key).equal(getattr(direct, key)), (limit, key)
    assert featurize.featurize_source(src, limit=3).tokens == ["C", "O", "N+1"]  # no S, Cl, Br

    whole, whole_cache = load_source(src)  # the cache of the whole file
    props = whole_cache.with_name(f"{whole_cache.name}.props-logp.npy")
    table = property_values(list(whole.smiles), ["logp"], cache=props)
    calls = []
    monkey = pytest.MonkeyPatch()
    monkey.setattr(featurize, "featurize_source", lambda *a, **k: calls.append(k))
    try:
        with caplog.at_level(logging.INFO):
            dm = GraphDataModule(path=str(src), limit=3, val_fraction=0.0,
                                 condition_properties=["logp"])  # fmt: skip
            dm.setup()
    finally:
        monkey.undo()
    assert calls == []  # nothing featurized
    assert list(dm.source.smiles) == list(whole.smiles[:3])
    assert [int(r[0]) for r in dm.source.rejects] == [3]  # not_a_smiles; C1CC comes after
    assert dm.source.tokens == ["C", "O", "N+1"]
    assert dm.condition_values.equal(table[:3])
    said = [r.getMessage() for r in caplog.records]
    assert any("from the cache of the whole file" in m for m in said), said
    assert any(m.startswith("properties of the first 3 molecules from") for m in said), said
    assert cache_file(src, 3, None).is_file()  # and cached under its own key from now on
