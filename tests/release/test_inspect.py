"""``medgen inspect <file>`` on a synthetic and a real file, and on a missing one."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medgen.cli import main
from tests.release.volume_helpers import cohort, smooth_volumes, write
from tests.sampling.helpers import AFFINE, CKPT_SHA


def test_inspect_a_synthetic_volume(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = cohort(tmp_path / "synth")
    write(c, smooth_volumes(1, seed=1))
    path = tmp_path / "synth" / "images" / "sample_00000.nii.gz"
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "synthetic: yes" in text and f"checkpoint sha256: {CKPT_SHA}" in text
    assert "generator: tests.release.FakeGenerator" in text and '"seed": 3' in text
    assert not (tmp_path / "outputs").exists()  # a read-only task makes no run folder
    assert main(["inspect", f"path={path}", "json=true"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["marking"]["checkpoint_sha256"] == CKPT_SHA


def test_inspect_a_real_scan_and_a_plain_csv(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scan = tmp_path / "patient.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), AFFINE), scan)
    (tmp_path / "plain.csv").write_text("smiles\nCCO\n")
    for path in (scan, tmp_path / "plain.csv"):
        assert main(["inspect", str(path)]) == 0
        text = capsys.readouterr().out
        assert "synthetic: no" in text and "no medgen marking found" in text


def test_inspect_a_missing_or_broken_file_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", str(tmp_path / "nope.nii.gz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"medgen inspect: error: path={tmp_path / 'nope.nii.gz'}: no such file"]
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    assert main(["inspect", str(tmp_path / "broken.nii.gz")]) == 2
    assert "not a readable NIfTI file" in capsys.readouterr().err


# --- molecule files: a sampled CSV and SDF, a user's CSV and SDF, a record cut out of an SDF --


def test_inspect_synthetic_and_real_molecule_files(tmp_path, capsys, monkeypatch):
    from rdkit import Chem

    from medgen.utils.provenance import file_sha256
    from tests.release.test_marking_molecules import draw

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    (run / "last.ckpt").write_bytes(b"stand-in weights")
    sha = file_sha256(run / "last.ckpt")
    for name, where in (("mols.csv", "text header"), ("mols.sdf", "sdf property")):
        draw(tmp_path / name, run / "last.ckpt", n=6, seed=2)
        assert main(["inspect", str(tmp_path / name)]) == 0
        text = capsys.readouterr().out.splitlines()
        assert "synthetic: yes (made by medgen)" in text and "kind: molecules" in text
        assert f"checkpoint sha256: {sha}" in text and f"marks found in: {where}" in text
        assert any(line.startswith("settings: ") and '"seed": 2' in line for line in text)
    # one record cut out of the sampled SDF keeps the short mark
    records = (tmp_path / "mols.sdf").read_text().split("$$$$\n")
    (tmp_path / "one.sdf").write_text(records[1] + "$$$$\n")
    assert main(["inspect", str(tmp_path / "one.sdf")]) == 0
    text = capsys.readouterr().out.splitlines()
    assert "synthetic: yes (made by medgen)" in text
    assert f"checkpoint sha256: {sha[:12]}... (short mark only)" in text
    # a user's files: a CSV with a triple bond ('#' in a SMILES is no comment) and an SDF
    (tmp_path / "user.csv").write_text("smiles,name\nC#N,hcn\nCC#CC,butyne\n")
    with Chem.SDWriter(str(tmp_path / "user.sdf")) as writer:
        for smiles in ("CCO", "N#Cc1ccccc1"):
            writer.write(Chem.MolFromSmiles(smiles))
    for name in ("user.csv", "user.sdf"):
        assert main(["inspect", str(tmp_path / name), "json=true"]) == 0
        assert json.loads(capsys.readouterr().out)["marking"] is None
        assert main(["inspect", str(tmp_path / name)]) == 0
        assert capsys.readouterr().out.splitlines()[1:] == [
            "synthetic: no",
            "no medgen marking found",
        ]
    assert not (tmp_path / "outputs").exists()


def _gzip_damaged(path, how: str):
    """A gzipped marked CSV (or SDF, NIfTI) made unreadable: ``truncated`` (EOFError),
    ``flipped`` deflate bytes (zlib.error) or ``not gzip`` at all (gzip.BadGzipFile)."""
    import gzip

    data = gzip.compress(b"# medgen-synthetic {}\nsmiles\n" + b"CCO\n" * 2000, mtime=0)
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "flipped":
        data = data[:30] + bytes(b ^ 0xFF for b in data[30:60]) + data[60:]
    else:
        data = b"plain text, not gzip\n"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", ["m.csv.gz", "m.sdf.gz", "m.nii.gz"])
@pytest.mark.parametrize("how", ["truncated", "flipped", "not gzip"])
def test_inspect_a_damaged_gzip_file_is_one_line_naming_it(tmp_path, capsys, monkeypatch, name,
                                                           how):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    path = _gzip_damaged(tmp_path / name, how)
    assert main(["inspect", str(path)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"medgen inspect: error: {path}: "), err
    assert "Traceback" not in captured.err and captured.out == ""
