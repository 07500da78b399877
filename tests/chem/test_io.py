"""Streaming readers and writers: formats, gzip, carried columns, line numbers, round trips."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medgen.chem.io import MoleculeWriter, detect_smiles_column, file_format, read_molecules

DATA = Path(__file__).resolve().parents[1] / "data" / "chem"


def test_gzipped_csv_streams_in_chunks_with_lines_and_extra_columns():
    chunks = list(read_molecules(DATA / "mixed.csv.gz", chunk_size=5))
    assert [len(c) for c in chunks] == [5, 5, 2]
    frame = pd.concat(chunks, ignore_index=True)
    assert list(frame.columns) == ["line", "smiles", "compound_id", "name", "pIC50"]
    assert frame["line"].tolist() == list(range(2, 14))  # line 1 is the header
    assert frame["smiles"][0] == "CC(=O)Oc1ccccc1C(=O)O"
    assert frame["smiles"][3] == ""  # an empty cell stays an (invalid) row
    assert frame["pIC50"][0] == "7.1"  # carried columns keep their text


def test_limit_and_missing_file():
    assert sum(len(c) for c in read_molecules(DATA / "mixed.csv.gz", chunk_size=5, limit=7)) == 7
    with pytest.raises(FileNotFoundError, match="nope.smi"):
        next(read_molecules(DATA / "nope.smi"))


def test_smi_with_header_names_comments_and_blank_lines(tmp_path):
    path = tmp_path / "m.smi"
    path.write_text("SMILES Name\nCCO ethanol\n\n# comment\nc1ccccc1 benzene ring\nC1CC\n")
    frame = pd.concat(read_molecules(path))
    assert frame["line"].tolist() == [2, 5, 6]
    assert frame["smiles"].tolist() == ["CCO", "c1ccccc1", "C1CC"]
    assert frame["name"].tolist() == ["ethanol", "benzene ring", ""]


def test_smiles_column_detection_and_errors(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b"], "structure_text": ["CCO", "c1ccccc1"], "y": ["1", "2"]})
    assert detect_smiles_column(frame) == "structure_text"
    path = tmp_path / "t.csv"
    pd.DataFrame({"id": ["a"], "value": ["1.5"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="no SMILES column found among \\['id', 'value'\\]"):
        next(read_molecules(path))
    with pytest.raises(ValueError, match="smiles_column='smi' is not a column"):
        next(read_molecules(path, smiles_column="smi"))
    with pytest.raises(ValueError, match="unknown molecule file type"):
        file_format("x.xlsx")


def test_sdf_written_and_read_back_with_tags(tmp_path):
    out = tmp_path / "m.sdf"
    frame = pd.DataFrame(
        {
            "smiles": ["CCO", "c1ccncc1", "C1CC"],
            "name": ["eth", "pyr", "bad"],
            "qed": [0.4, 0.45, None],
        }
    )
    with MoleculeWriter(out) as writer:
        writer.write(frame)
    back = pd.concat(read_molecules(out))
    assert back["smiles"].tolist() == ["CCO", "c1ccncc1"]  # the invalid row is left out
    assert back["name"].tolist() == ["eth", "pyr"]
    assert back["qed"].astype(float).tolist() == [0.4, 0.45]


def test_parquet_and_csv_gz_round_trip_and_atomicity(tmp_path):
    frame = pd.DataFrame({"smiles": ["CCO", "CCN"], "n": pd.array([1, None], dtype="Int64")})
    for name in ("a.parquet", "a.csv.gz"):
        with MoleculeWriter(tmp_path / name) as writer:
            writer.write(frame.iloc[:1])
            writer.write(frame.iloc[1:])
        back = pd.concat(read_molecules(tmp_path / name))
        assert back["smiles"].tolist() == ["CCO", "CCN"]
    with pytest.raises(RuntimeError, match="boom"):
        with MoleculeWriter(tmp_path / "b.csv") as writer:
            writer.write(frame)
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv.gz", "a.parquet"]  # no b.csv


def test_unreadable_sdf_record_keeps_its_place(tmp_path):
    from rdkit import Chem

    block = Chem.MolToMolBlock(Chem.MolFromSmiles("CCO"))
    broken = block.replace(" O ", " Xx")  # an unknown element: RDKit rejects the record
    (tmp_path / "b.sdf").write_text(f"{block}$$$$\n{broken}$$$$\n{block}>  <x>\n1\n\n$$$$\n")
    frame = pd.concat(read_molecules(tmp_path / "b.sdf"))
    assert frame["line"].tolist() == [1, 2, 3]
    assert frame["smiles"][0] == frame["smiles"][2] == "CCO" and pd.isna(frame["smiles"][1])


def test_parquet_unknown_smiles_column_names_the_file(tmp_path):
    path = tmp_path / "m.parquet"
    pd.DataFrame({"smiles": ["CCO"]}).to_parquet(path)
    with pytest.raises(ValueError, match=r"m\.parquet: smiles_column='smi' is not a column"):
        next(read_molecules(path, smiles_column="smi"))


def test_sdf_writer_counts_only_the_records_it_wrote(tmp_path):
    frame = pd.DataFrame({"smiles": ["CCO", "C1CC", "c1ccncc1"], "name": ["a", "b", "c"]})
    with MoleculeWriter(tmp_path / "m.sdf") as writer:
        writer.write(frame)
    assert writer.rows == 2 and writer.skipped == 1


def test_malformed_csv_row_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("smiles,id\nCCO,1\nCCN,2,extra\n")
    with pytest.raises(ValueError, match=r"bad\.csv: .*line 3"):
        list(read_molecules(path))
