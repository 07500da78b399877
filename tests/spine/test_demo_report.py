"""The demo's report (:func:`medgen.demo.report`) on hand-written metric and screen files: known
values appear formatted, skipped shipped models are one line each, missing files are reported
instead of raising. The demo itself (minutes of training) is not run here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medgen.demo import (
    EMBEDDED,
    MOLECULE_MODEL,
    MOLECULE_TRAIN_ROWS,
    REFERENCE_ROWS,
    SCAN_MODEL,
    Layout,
    molecule_line,
    report,
    write_reference,
)


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record), encoding="utf-8")


def _molecule_metrics(path: Path, *, reference: str, train: str, n: int, **metrics) -> None:
    _write(path, {"metrics": metrics, "n_samples": n, "reference": reference, "train": train})


def _full_layout(root: Path) -> Layout:
    """Every file the demo's steps write, with known values (a registered ``moses``)."""
    layout = Layout(root)
    _molecule_metrics(
        layout.pretrained_metrics, reference="moses", train="moses", n=1000,
        **{"valid": 0.9123, "unique@100": 1.0, "unique@1000": 0.9981, "Novelty": 0.87654,
           "FCD/Test": 1.2345, "FCD/TestSF": 1.9},
    )  # fmt: skip
    _molecule_metrics(
        layout.metrics, reference="/x/moses_sample.smi", train="/x/moses_sample.smi", n=500,
        # unique@1000 of fewer than 1000 valid molecules is null in the JSON
        **{"valid": 0.5, "unique@100": 0.99, "unique@1000": None, "Novelty": None,
           "FCD/Ref": 12.3456},
    )  # fmt: skip
    passed = {"lipinski": 400, "veber": 390, "pains": 380}
    summary = {"rows": 500, "valid": 450, "invalid": 50, "passed_filter": passed, "passed_all": 321}
    _write(layout.screen_summary, {"summary": summary})
    evaluation = {
        "metrics": {"fidelity/frechet": 38.637, "fidelity/hu_js": 0.5432, "fidelity/band_tv": 0.125,
                    "diversity/ms_ssim": 0.781, "diversity/ms_ssim_reference": 0.733,
                    "memorization/flagged": 0.0},
        "sets": {"samples": {"n": 4}, "reference": {"n": 4}},
    }  # fmt: skip
    _write(layout.scan_evaluation / "evaluation.json", evaluation)
    for png in (layout.scans / "preview.png", layout.scan_evaluation / "evaluation.png"):
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(b"\x89PNG")
    for epoch in (0, 4):
        png = layout.scan_train / "previews" / f"epoch_{epoch:03d}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(b"\x89PNG")
    return layout


def test_known_values_appear_formatted(tmp_path):
    layout = _full_layout(tmp_path)
    skipped = {SCAN_MODEL: "not registered (no shipped 3D diffusion model yet)"}
    text = report(layout, skipped=skipped, times=[("train scans", 100.4), ("screen", 9.6)])
    lines = text.splitlines()
    (moses,) = [line for line in lines if line.startswith(f"- {MOLECULE_MODEL}:")]
    assert "1000 molecules (pretrained_molecules/generated.csv)" in moses
    # the largest k with a value, the first FCD reference, novelty against MOSES train
    assert "validity 0.912, unique@1000 0.998, novelty 0.877, FCD/Test 1.23" in moses
    assert "(reference MOSES test, novelty vs MOSES train)" in moses
    (brief,) = [line for line in lines if line.startswith("- molecules:")]
    assert "validity 0.500, unique@100 0.990, novelty n/a, FCD/Ref 12.35" in brief
    assert "reference moses_sample.smi" in brief
    screen = next(line for line in lines if line.startswith("- screen"))
    assert "(lipinski, veber, pains): 321 of 450 valid molecules passed (500 rows)" in screen
    scans = next(line for line in lines if line.startswith("- scans:"))
    assert "4 samples vs 4 held-out phantoms: FD 38.64, HU JS 0.543, band TV 0.125" in scans
    assert "MS-SSIM 0.781 (reference 0.733), flagged as training copies 0/4" in scans
    # pictures: only files that exist, the last training preview only
    assert "- synthetic_scans/preview.png" in lines
    assert "- scan_evaluation/evaluation.png" in lines
    assert "- scan_train/previews/epoch_004.png" in lines
    assert "epoch_000" not in text
    assert "total 110 s" in text and "train scans 100 s, screen 10 s" in text
    assert len(lines) <= 30


def test_a_model_not_registered_is_one_line(tmp_path):
    layout = _full_layout(tmp_path)
    skipped = {
        SCAN_MODEL: "not registered (no shipped 3D diffusion model yet)",
        MOLECULE_MODEL: "not registered (no shipped molecule model yet)",
    }
    lines = report(layout, skipped=skipped).splitlines()
    assert f"- {SCAN_MODEL}: not registered (no shipped 3D diffusion model yet)" in lines
    assert f"- {MOLECULE_MODEL}: not registered (no shipped molecule model yet)" in lines
    assert sum(line.startswith(f"- {MOLECULE_MODEL}") for line in lines) == 1
    assert not any("pretrained_molecules" in line for line in lines)  # its metrics are not read


def test_missing_files_are_reported_not_raised(tmp_path):
    layout = Layout(tmp_path / "empty")
    text = report(layout)  # nothing skipped, nothing written: every line says what is missing
    assert f"- {MOLECULE_MODEL}: no metrics (pretrained_molecules/metrics.json is missing)" in text
    assert "- molecules: no metrics (molecules/metrics.json is missing)" in text
    assert "- screen: no summary (molecules/screened.summary.json is missing)" in text
    assert "- scans: not written" in text
    assert "- none were written" in text
    assert "Wall times" not in text


def test_unreadable_or_partial_files_do_not_crash(tmp_path):
    layout = Layout(tmp_path)
    layout.metrics.parent.mkdir(parents=True)
    layout.metrics.write_text("{not json", encoding="utf-8")
    _write(layout.pretrained_metrics, {"metrics": {"valid": "high"}})  # no n, no FCD, odd value
    _write(layout.scan_evaluation / "evaluation.json", {"metrics": {}})
    layout.scans.mkdir()
    text = report(layout)
    assert "- molecules: no metrics (molecules/metrics.json is missing)" in text
    assert f"- {MOLECULE_MODEL}: ? molecules" in text and "validity n/a" in text
    assert "uniqueness n/a" in text and "FCD n/a" in text
    assert "4 samples" not in text and "FD n/a" in text
    assert "flagged as training copies" not in text  # no memorization figure: no claim


def test_molecule_line_names_the_file_outside_the_demo_folder(tmp_path):
    metrics = tmp_path / "elsewhere" / "metrics.json"
    _molecule_metrics(metrics, reference="moses", train="moses", n=10, valid=1.0)
    line = molecule_line("mine", tmp_path / "g.csv", metrics, tmp_path / "demo")
    assert line.startswith(f"- mine: 10 molecules ({tmp_path / 'g.csv'}): validity 1.000")


def test_the_molecule_reference_is_the_embedded_rows_never_trained_on(tmp_path):
    out = write_reference(tmp_path / "ref.smi")
    embedded = [line for line in EMBEDDED.read_text().splitlines() if line.strip()]
    lines = out.read_text().splitlines()
    assert lines == embedded[-REFERENCE_ROWS:] and len(lines) == REFERENCE_ROWS
    assert not set(lines) & set(embedded[:MOLECULE_TRAIN_ROWS])
    assert write_reference(tmp_path / "again.smi").read_bytes() == out.read_bytes()  # one cache key


def test_a_too_short_source_is_refused_by_name(tmp_path):
    source = tmp_path / "few.smi"
    source.write_text("CCO\nc1ccccc1\n")
    with pytest.raises(ValueError, match=r"few\.smi holds 2 SMILES"):
        write_reference(tmp_path / "ref.smi", source)


def test_a_registered_scan_model_gets_its_figures(tmp_path):
    layout = _full_layout(tmp_path)
    layout.pretrained_scans.mkdir()
    evaluation = {
        "metrics": {"fidelity/frechet": 20.0, "fidelity/hu_js": 0.1, "fidelity/band_tv": 0.05,
                    "diversity/ms_ssim": 0.7, "diversity/ms_ssim_reference": 0.72},
        "sets": {"samples": {"n": 4}, "reference": {"n": 4}},
    }  # fmt: skip
    _write(layout.pretrained_scan_evaluation / "evaluation.json", evaluation)
    lines = report(layout).splitlines()
    (line,) = [line for line in lines if line.startswith(f"- {SCAN_MODEL}:")]
    assert line.startswith(f"- {SCAN_MODEL}: pretrained_scans/ (NIfTI")
    assert "4 samples vs 4 held-out phantoms: FD 20.00, HU JS 0.100, band TV 0.050" in line
    assert line.endswith("MS-SSIM 0.700 (reference 0.720)")  # no memorization: no copies claim
