"""Molecule outputs carry the synthetic mark and read back as before; a screen of a user's file
does not claim to be synthetic, one of a marked file keeps the mark; ``share`` leaks nothing."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pandas as pd
import pytest
import torch
from rdkit import Chem

from medgen.chem.io import MoleculeWriter, mark_file, read_molecules
from medgen.generation import Generated, Output, sample_to
from medgen.marking import (
    ReleaseOptions,
    check_shareable,
    provenance,
    read_mark,
    with_release,
)
from medgen.molecules.cohort import MoleculeCohort
from medgen.molecules.release import TRAIN_SET_FILE, TrainingSet
from medgen.records import SampleSettings
from medgen.utils.provenance import file_sha256
from medgen.utils.seeding import sample_generator

# what the stand-in draws from: canonical SMILES without stereo (as the graph VAE writes them),
# a mustard and an invalid draw among them
POOL = [
    Chem.MolToSmiles(Chem.MolFromSmiles(s), isomericSmiles=False)
    for s in ("CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC", "ClCCSCCCl", "C#CCO",
              "O=C(O)c1ccccc1", "CCOC(=O)C", "c1ccncc1", "CC(C)Cc1ccc(C(C)C(=O)O)cc1")
] + [None]  # fmt: skip
TRAIN = [s for s in POOL[:3] if s]  # the stand-in's "training set"


class MoleculeStandIn(torch.nn.Module):
    """A molecule generator drawing from :data:`POOL`: molecule ``i`` of seed ``s`` from
    ``sample_generator(s, i)`` alone, as the protocol asks."""

    output = Output.MOLECULES
    default_batch_size = 4

    def resolve_settings(self, settings: SampleSettings) -> SampleSettings:
        return settings

    def generate(self, indices, settings: SampleSettings) -> Generated:
        picks = [
            int(torch.randint(len(POOL), (1,), generator=sample_generator(settings.seed, int(i))))
            for i in indices
        ]
        return Generated([int(i) for i in indices], [POOL[k] for k in picks])

    def cohort(self, out, settings: SampleSettings, checkpoint) -> MoleculeCohort:
        return MoleculeCohort(out, settings, checkpoint, generator=self)


def stream(n: int, seed: int = 0) -> list[str | None]:
    """Molecules ``0..n-1`` of the stand-in."""
    return MoleculeStandIn().generate(list(range(n)), SampleSettings(seed=seed)).items


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A run dir with a stand-in 'checkpoint' and the training-set record training writes."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"stand-in weights")
    TrainingSet.from_smiles(TRAIN, {"source": "toy.smi"}).save(run / TRAIN_SET_FILE)
    return ckpt


def draw(out, checkpoint, *, n=12, seed=0, share=False, **extra):
    settings = SampleSettings(seed=seed, extra=extra)
    if share:
        settings = with_release(settings, ReleaseOptions(share=True))
    return sample_to(MoleculeStandIn(), settings, out=out, checkpoint=checkpoint, n=n,
                     batch_size=5, preview=False)  # fmt: skip


@pytest.mark.parametrize("suffix", [".csv", ".sdf"])
def test_sampled_files_carry_the_mark_and_read_back_as_before(tmp_path, checkpoint, suffix):
    out = tmp_path / f"mols{suffix}"
    draw(out, checkpoint, n=12)
    mark = read_mark(out)
    assert mark is not None and mark["synthetic"] is True and mark["kind"] == "molecules"
    assert mark["checkpoint_sha256"] == file_sha256(checkpoint)
    assert mark["generator"].endswith("MoleculeStandIn") and mark["settings"]["seed"] == 0
    back = pd.concat(list(read_molecules(out)))
    expected = [s for s in stream(12)] if suffix == ".csv" else [s for s in stream(12) if s]
    got = [s if s else None for s in back["smiles"].tolist()]
    assert got == expected  # the mark lines are no rows; order kept
    assert "medgen_synthetic" not in back.columns  # the SDF mark is the file's, not a column
    if suffix == ".csv":
        lines = out.read_text().splitlines()
        assert lines[0].startswith("# medgen-synthetic {") and lines[1].startswith("# ")
        assert lines[2] == "index,seed,smiles,valid,dualuse_alerts"
        assert back["index"].tolist() == [str(i) for i in range(12)]
    else:
        text = out.read_text()  # every record says it is synthetic
        assert text.count("<medgen_synthetic>") == text.count("$$$$") == len(expected)


@pytest.mark.parametrize("name", ["m.smi", "m.csv.gz", "m.tsv", "m.parquet", "m.sdf"])
def test_writer_marks_every_format_and_readers_skip_it(tmp_path, name):
    record = provenance("molecules", checkpoint_sha256="ab" * 32, generator="g", settings={})
    frame = pd.DataFrame({"smiles": ["C#N", "CCO", "c1ccccc1"], "name": ["a", "b", "c"]})
    plain, marked = tmp_path / "plain" / name, tmp_path / "marked" / name
    for path, mark in ((plain, None), (marked, record)):
        path.parent.mkdir()
        with MoleculeWriter(path, mark=mark) as writer:
            writer.write(frame)
    assert read_mark(plain) is None if not name.endswith(".tsv") else True
    if not name.endswith(".tsv"):  # read_mark knows the suffixes medgen writes marks into
        assert read_mark(marked)["checkpoint_sha256"] == "ab" * 32
    a, b = (pd.concat(list(read_molecules(p))) for p in (plain, marked))
    assert b["smiles"].tolist() == ["C#N", "CCO", "c1ccccc1"]  # '#' in a SMILES is no comment
    pd.testing.assert_frame_equal(a.drop(columns="line"), b.drop(columns="line"))


def test_a_screen_keeps_the_mark_of_a_marked_input_and_claims_none_for_a_user_file(
    tmp_path, checkpoint
):
    from medgen.chem.reference import _read_smiles
    from medgen.chem.screen import screen_file

    sampled = tmp_path / "mols.csv"
    draw(sampled, checkpoint, n=12)
    user = tmp_path / "user.csv"
    pd.DataFrame({"smiles": [s for s in stream(12) if s]}).to_csv(user, index=False)
    # what medgen evaluate reads: the same SMILES from the marked and the plain file
    read = [s for s in _read_smiles(sampled) if s]  # invalid draws are empty cells
    assert read == [s for s in stream(12) if s] == _read_smiles(user)
    common = dict(n_jobs=1, progress=False, groups=["identity"])
    for out in ("from_sample.csv", "from_sample.sdf", "from_sample.parquet"):
        summary = screen_file(sampled, tmp_path / out, **common)
        assert summary.written == len([s for s in stream(12) if s])
        kept = read_mark(tmp_path / out)
        assert kept is not None and kept["checkpoint_sha256"] == file_sha256(checkpoint)
        table = pd.concat(list(read_molecules(tmp_path / out, smiles_column="smiles")))
        assert "dualuse_alerts" in table.columns  # generated molecules: the screen is on
    assert read_mark(tmp_path / "from_sample.rejects.csv") is not None
    screen_file(user, tmp_path / "from_user.csv", **common)
    assert read_mark(tmp_path / "from_user.csv") is None
    assert "medgen-synthetic" not in (tmp_path / "from_user.csv").read_text()


def test_mark_file_replaces_an_earlier_mark(tmp_path):
    first = provenance("molecules", checkpoint_sha256="a" * 64, generator="g", settings={})
    second = provenance("molecules", checkpoint_sha256="b" * 64, generator="g", settings={})
    for name in ("m.csv", "m.sdf"):
        path = tmp_path / name
        with MoleculeWriter(path, mark=first) as writer:
            writer.write(pd.DataFrame({"smiles": ["CCO", "CCN"]}))
        mark_file(path, second)
        assert read_mark(path)["checkpoint_sha256"] == "b" * 64
        assert "a" * 64 not in path.read_text()
        assert [s for s in pd.concat(list(read_molecules(path)))["smiles"]] == ["CCO", "CCN"]


def test_share_writes_no_absolute_path_or_host(tmp_path, checkpoint):
    out = tmp_path / "shared.csv"
    summary = draw(out, checkpoint, n=12, share=True)
    written = [out, out.with_name(out.name + ".json"), Path(summary["card"])]
    written.append(Path(summary["card"]).with_name("shared.card.json"))
    host = socket.gethostname()
    for path in written:
        text = path.read_text()
        assert str(tmp_path) not in text and os.sep + "run" + os.sep not in text, path
        assert host.lower() not in text.lower(), path
    assert check_shareable(json.loads(written[1].read_text())) == []
    assert check_shareable(read_mark(out)) == []
    assert check_shareable(json.loads(written[3].read_text())) == []
    # without share, the local sidecar keeps the checkpoint path (it is for this site)
    local = tmp_path / "local.csv"
    draw(local, checkpoint, n=12)
    assert str(checkpoint) in local.with_name("local.csv.json").read_text()


@pytest.mark.parametrize("name", ["m.csv", "m.csv.gz"])
def test_a_marked_csv_with_triple_bonds_reads_back_intact(tmp_path, name):
    """The header's advice holds: medgen's readers and pandas with ``skiprows`` keep ``C#N``;
    pandas' ``comment="#"`` (the advice it must not give) would cut it."""
    from medgen.chem.readers import read_molecules as read_chunks
    from medgen.marking import header_line_count, header_lines

    record = provenance("molecules", checkpoint_sha256="cd" * 32, generator="g", settings={})
    smiles = ["C#N", "N#Cc1ccccc1", "CC#CC(=O)O", "CCO"]
    frame = pd.DataFrame({"index": range(4), "smiles": smiles, "note": ["a#b", "", "x", "y"]})
    path = tmp_path / name
    with MoleculeWriter(path, mark=record) as writer:
        writer.write(frame)
    back = pd.concat(list(read_chunks(path)))
    assert back["smiles"].tolist() == smiles and back["note"].tolist() == ["a#b", "", "x", "y"]
    assert back["line"].tolist() == [4, 5, 6, 7]  # the file's own line numbers: 2 mark lines
    assert header_line_count(path) == len(header_lines(record)) == 2
    table = pd.read_csv(path, skiprows=header_line_count(path), keep_default_na=False)
    assert table["smiles"].tolist() == smiles and table["note"].tolist() == ["a#b", "", "x", "y"]
    cut = pd.read_csv(path, comment="#")
    assert cut["smiles"].tolist() != smiles  # why the docstring warns against comment="#"
    assert read_mark(path)["checkpoint_sha256"] == "cd" * 32
    (tmp_path / "plain.csv").write_text("smiles\nC#N\n")
    assert header_line_count(tmp_path / "plain.csv") == 0


def test_what_survives_a_round_trip_through_other_tools(tmp_path):
    """The molecule table of docs/release.md: RDKit's SDF reader/writer and pyarrow keep the
    mark (a later SDF record alone: the short tag); pandas' CSV and parquet round trips drop it."""
    import pyarrow.parquet as pq

    record = provenance("molecules", checkpoint_sha256="ef" * 32, generator="g", settings={})
    frame = pd.DataFrame({"smiles": ["C#N", "CCO", "c1ccccc1"], "name": ["a", "b", "c"]})
    for name in ("m.csv", "m.sdf", "m.parquet"):
        with MoleculeWriter(tmp_path / name, mark=record) as writer:
            writer.write(frame)
    mols = list(Chem.SDMolSupplier(str(tmp_path / "m.sdf")))
    for path, kept in ((tmp_path / "rdkit.sdf", mols), (tmp_path / "later.sdf", mols[1:2])):
        with Chem.SDWriter(str(path)) as writer:
            for mol in kept:
                writer.write(mol)
    assert read_mark(tmp_path / "rdkit.sdf")["checkpoint_sha256"] == "ef" * 32
    later = read_mark(tmp_path / "later.sdf")
    assert later["partial"] is True and later["checkpoint_sha12"] == "ef" * 6
    pq.write_table(pq.read_table(tmp_path / "m.parquet"), tmp_path / "arrow.parquet")
    assert read_mark(tmp_path / "arrow.parquet")["checkpoint_sha256"] == "ef" * 32
    pd.read_csv(tmp_path / "m.csv", skiprows=2).to_csv(tmp_path / "pandas.csv", index=False)
    pd.read_parquet(tmp_path / "m.parquet").to_parquet(tmp_path / "pandas.parquet")
    assert read_mark(tmp_path / "pandas.csv") is None
    assert read_mark(tmp_path / "pandas.parquet") is None


def test_a_damaged_mark_still_says_synthetic_without_a_made_up_hash(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('# medgen-synthetic {"mark": "medgen-synth\nsmiles\nCCO\n')  # cut JSON
    record = read_mark(path)
    assert record["synthetic"] is True and record["partial"] is True
    assert "checkpoint_sha12" not in record  # not the JSON's first 12 characters
    path.write_text("# medgen-synthetic 0123456789abcdef\nsmiles\nCCO\n")  # the short form
    assert read_mark(path)["checkpoint_sha12"] == "0123456789ab"
