"""``medgen inspect <file>`` on a synthetic and a real file, and on a missing one."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

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
