"""SMILES sources, graph caches, rejects files and the GraphDataModule."""

from __future__ import annotations

import csv
import gzip
import shutil

import pytest

from medgen.molecules.data import EMBEDDED_SAMPLE, GraphDataModule, cache_file, load_source


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
    assert dm.rejects_path.parent == src.parent  # the cache and rejects live next to the source
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
    assert first.parent == tmp_path and first.is_file()
    feats, again = load_source(src)
    assert again == first and len(feats) == 5
    # a read-only source folder (or the installed package) caches in the cache dir
    monkeypatch.setattr("medgen.molecules.data.os.access", lambda *a: False)
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
