"""Screening: nothing silently lost, filters with reasons, dedup, top-k, parallel == serial."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medgen.chem.properties import score
from medgen.chem.screen import screen_file
from tests.conftest import run_medgen

DATA = Path(__file__).resolve().parents[1] / "data" / "chem"
MIXED = DATA / "mixed.csv.gz"


def _accounted(out: Path, rejects: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    kept = pd.read_csv(out) if out.suffix == ".csv" else pd.read_parquet(out)
    rejected = pd.read_csv(rejects, keep_default_na=False)
    return kept, rejected


def test_every_row_is_written_or_rejected_with_reason(tmp_path):
    out = tmp_path / "hits.csv"
    summary = screen_file(
        MIXED, out, rules=["lipinski", "pains"], ranges=["qed>=0.5"], n_jobs=1, chunk_size=4,
        progress=False,
    )  # fmt: skip
    kept, rejected = _accounted(out, tmp_path / "hits.rejects.csv")
    assert sorted(kept["line"].tolist() + rejected["line"].tolist()) == list(range(2, 14))
    assert summary.rows == 12 and summary.invalid == 3 and summary.valid == 9
    assert summary.written == len(kept) and summary.rejected == len(rejected)
    reasons = dict(zip(rejected["compound_id"], rejected["reason"], strict=True))
    assert reasons["M3"].startswith("invalid: SMILES Parse Error")
    assert reasons["M4"] == "invalid: empty SMILES"
    assert "unclosed ring" in reasons["M7"]
    assert reasons["M8"] == "failed pains"  # benzylidene rhodanine
    assert reasons["M10"] == "failed qed>=0.5"  # tetramethylammonium, QED 0.36
    # carried columns survive, in the output too
    assert {"compound_id", "name", "pIC50"} <= set(kept.columns)
    assert kept.set_index("compound_id").loc["M1", "name"] == "aspirin"
    assert summary.passed_filter == {"lipinski": 9, "pains": 8, "qed>=0.5": 7}


def test_dedup_sort_and_top_k(tmp_path):
    out = tmp_path / "top.parquet"
    summary = screen_file(
        MIXED, out, dedup=True, sort_by="qed", top_k=3, n_jobs=1, chunk_size=5, progress=False
    )
    kept, rejected = _accounted(out, tmp_path / "top.rejects.csv")
    assert len(kept) == 3 and kept["qed"].is_monotonic_decreasing
    assert kept["compound_id"].tolist()[0] == "M5"  # ibuprofen has the highest QED here
    dup = rejected[rejected["compound_id"] == "M9"]["reason"].item()
    assert dup == "duplicate InChIKey BSYNRYMUTXBXSQ-UHFFFAOYSA-N (first at line 2)"
    assert summary.duplicates == 1 and summary.outside_top_k == 9 - 1 - 3
    assert (rejected["reason"] == "outside top_k=3 by qed").sum() == summary.outside_top_k
    assert len(kept) + len(rejected) == 12


def test_sorted_output_without_top_k_and_sdf_out(tmp_path):
    out = tmp_path / "sorted.sdf"
    summary = screen_file(MIXED, out, sort_by="mw", descending=False, n_jobs=1, progress=False)
    from medgen.chem.io import read_molecules

    back = pd.concat(read_molecules(out))
    assert summary.written == 9 and len(back) == 9
    assert back["mw"].astype(float).is_monotonic_increasing
    assert back["compound_id"].iloc[0] == "M12"  # pyrrole, the lightest


def test_bad_filter_names_fail_before_work(tmp_path):
    with pytest.raises(ValueError, match="unknown rule 'lipinsky'"):
        screen_file(MIXED, tmp_path / "o.csv", rules=["lipinsky"], progress=False)
    with pytest.raises(ValueError, match="unknown property 'qedd'"):
        screen_file(MIXED, tmp_path / "o.csv", ranges=["qedd>=0.5"], progress=False)
    with pytest.raises(ValueError, match="not '<property> <op> <number>'"):
        screen_file(MIXED, tmp_path / "o.csv", ranges=["qed is high"], progress=False)
    with pytest.raises(ValueError, match="sort_by='potency' is not a column"):
        screen_file(MIXED, tmp_path / "o.csv", sort_by="potency", progress=False)
    assert not (tmp_path / "o.csv").exists()


def test_parallel_output_equals_serial(tmp_path):
    smiles = [s.strip() for s in (DATA / "moses_test_200.smi").read_text().splitlines()]
    smiles = [s for s in smiles if s and not s.startswith("#")][:60] + ["C1CC", "", "CCO.Cl"]
    serial = score(smiles, n_jobs=1)
    parallel = score(smiles, n_jobs=2, chunk_size=16)
    pd.testing.assert_frame_equal(serial, parallel)


def test_screen_cli_end_to_end(tmp_path):
    out = tmp_path / "hits.csv"
    result = run_medgen(
        ["screen", f"input={MIXED}", f"out={out}", "rules=[veber,brenk]", "n_jobs=1",
         'ranges=["mw<200"]', "progress=false"],
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    kept = pd.read_csv(out)
    assert set(kept["compound_id"]) == {"M2", "M12"}  # caffeine, pyrrole
    record = json.loads((tmp_path / "hits.summary.json").read_text())
    assert record["summary"]["written"] == 2 and record["provenance"]["config_hash"]
    assert "passed all filters" in result.stdout + result.stderr


def test_parallel_screen_streams_in_input_order(tmp_path):
    for n_jobs in (1, 2):
        screen_file(
            MIXED, tmp_path / f"o{n_jobs}.csv", rules=["veber"], n_jobs=n_jobs, chunk_size=3,
            progress=False,
        )  # fmt: skip
    assert (tmp_path / "o1.csv").read_text() == (tmp_path / "o2.csv").read_text()
    assert (tmp_path / "o1.rejects.csv").read_text() == (tmp_path / "o2.rejects.csv").read_text()


def test_duckdb_sort_matches_in_memory_sort(tmp_path):
    from tests.chem.test_screen_dask import merged, reference_sort

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "line": np.arange(1, 501),
            "qed": pd.array(np.round(rng.uniform(size=500), 2), dtype="float64"),
            "hbd": pd.array(rng.integers(0, 4, size=500), dtype="Int64"),
            "note": rng.choice(["a", "b", "10", "9"], size=500),
        }
    )
    frame.loc[::7, "qed"] = np.nan
    frame.loc[::11, "hbd"] = pd.NA
    for column in ("qed", "hbd", "note"):
        for descending in (True, False):
            got = merged(tmp_path / f"{column}{descending}", frame, sort_by=column,
                         descending=descending, parts=13)  # fmt: skip
            want = reference_sort(frame, column, descending)
            assert got["line"].tolist() == want["line"].tolist(), (column, descending)
    assert got["note"].tolist()[-2:] == ["b", "b"]  # ascending: numeric text first, as numbers


def test_rows_an_sdf_cannot_hold_go_to_rejects(tmp_path, monkeypatch):
    from medgen.chem import properties

    real = properties.score_molecule

    def broken_canonical(mol, groups):  # a canonical SMILES that RDKit cannot read back
        row = real(mol, groups)
        if row.get("canonical_smiles") == "c1cc[nH]c1":
            row["canonical_smiles"] = "c1cc[nH]c"
        return row

    monkeypatch.setattr(properties, "score_molecule", broken_canonical)
    out = tmp_path / "o.sdf"
    summary = screen_file(MIXED, out, n_jobs=1, progress=False)
    rejected = pd.read_csv(tmp_path / "o.rejects.csv", keep_default_na=False)
    reason = rejected.set_index("compound_id").loc["M12", "reason"]
    assert reason.startswith("not writable to SDF")
    assert summary.written == 8 and summary.written + summary.rejected == 12
