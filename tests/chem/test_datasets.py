"""`medgen data`: unpacking from a (fake, local) wheel, no-op on rerun, clear errors. No network."""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import medgen.datasets as ds


def _fake_wheel(folder: Path, source: ds.WheelSource, members: dict[str, bytes]) -> ds.WheelSource:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / source.filename
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ds.WheelSource(source.package, source.version, digest, source.licence)


def _stats_npz(seed: int) -> bytes:
    """A tiny file laid out like molsets' ``*_stats.npz`` (a protocol-2 pickled dict)."""
    rng = np.random.default_rng(seed)
    stats = {
        "FCD": {"mu": rng.random(4).astype(np.float32), "sigma": rng.random((4, 4))},
        "SNN": {"fps": (rng.random((2, 1024)) < 0.1).astype(np.uint8)},
        "Frag": {"frag": Counter({"c1ccccc1": 2})},
        "Scaf": {"scaf": Counter({"c1ccc2ccccc2c1": 1})},
        **{k: {"values": [1.0, 2.0]} for k in ("logP", "SA", "QED", "weight")},
    }
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": "|O", "fortran_order": False, "shape": ()})
    pickle.dump(np.array(stats, dtype=object), npy, protocol=2)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("stats.npy", npy.getvalue())
    return out.getvalue()


def _moses_members(monkeypatch, payload) -> dict[str, bytes]:
    """Wheel members: ``payload(name)`` for the CSVs, real-format statistics (their sha256
    pinned for the test) for the two ``*_stats.npz``."""
    members, digests = {}, {}
    for i, (name, member) in enumerate(ds.MOSES_FILES.items()):
        members[member] = _stats_npz(i) if name in ds.MOSES_STATS_SHA256 else payload(name)
        if name in ds.MOSES_STATS_SHA256:
            digests[name] = hashlib.sha256(members[member]).hexdigest()
    monkeypatch.setattr(ds, "MOSES_STATS_SHA256", digests)
    return members


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Wheels come only from tmp_path/wheels; any attempt to run pip fails the test."""

    def no_pip(*args, **kwargs):
        raise AssertionError(f"tried to download: {args}")

    monkeypatch.setattr(ds.subprocess, "run", no_pip)
    monkeypatch.setenv("MEDGEN_WHEEL_DIR", str(tmp_path / "wheels"))
    return tmp_path / "wheels"


def test_moses_unpacks_then_is_a_noop(offline, tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO", logger="medgen.datasets")
    members = _moses_members(monkeypatch, lambda name: f"payload of {name}".encode())
    monkeypatch.setattr(ds, "MOSES", _fake_wheel(offline, ds.MOSES, members))
    first = ds.prepare("moses", tmp_path / "data")
    plain = ["test_scaffolds_stats.plain.npz", "test_stats.plain.npz"]
    assert sorted(Path(p).name for p in first["written"]) == sorted([*ds.MOSES_FILES, *plain])
    assert ds.moses_stats_path("test", tmp_path / "data").name == "test_stats.plain.npz"
    assert ds.moses_path("test", tmp_path / "data").read_bytes() == b"payload of test.csv.gz"
    assert ds.moses_path("test_stats", tmp_path / "data").name == "test_stats.npz"
    second = ds.prepare("moses", tmp_path / "data")
    assert second["skipped"] and second["written"] == []
    assert "nothing to do" in caplog.text


def test_qm9_merges_parts_into_one_csv(offline, tmp_path, monkeypatch):
    header = ",".join(["XYZ_file", *ds.QM9_COLUMNS])
    parts = {}
    for i, member in enumerate(ds.QM9_PARTS):
        values = [f"f{i}.xyz", str(3 - i), "C" * (i + 1), "InChI=x"] + ["1.5"] * 15
        parts[member] = f"{header}\n{','.join(values)}\n".encode()
    monkeypatch.setattr(ds, "QM9", _fake_wheel(offline, ds.QM9, parts))
    ds.prepare("qm9", tmp_path / "data")
    frame = pd.read_csv(ds.qm9_path(tmp_path / "data"))
    assert frame["smiles"].tolist() == ["CCC", "CC", "C"]  # sorted by QM9 index
    assert list(frame.columns) == list(ds.QM9_COLUMNS.values())


def _geometry(smiles: str) -> tuple[str, str, str]:
    """``(flat SMILES, elements, coordinates)`` of an ETKDG conformer of ``smiles``, written as
    QM9 writes them (Python-style lists, Mathematica exponents)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=7) == 0
    xyz = mol.GetConformer().GetPositions().tolist()
    elements = str([a.GetSymbol() for a in mol.GetAtoms()])
    coords = "[" + ",".join("[" + ",".join(f"{v:.10f}" for v in row) + "]" for row in xyz) + "]"
    coords = coords.replace("0.0000000000", "0.", 1)  # QM9 writes "0." and "1.2*^-6"
    flat = Chem.MolToSmiles(Chem.MolFromSmiles(smiles), isomericSmiles=False)
    return flat, elements, coords


@pytest.mark.parametrize(
    "smiles", ["C[C@H](N)C(=O)O", "C[C@@H](N)C(=O)O", "C/C=C/C", "C/C=C\\C", "C[C@H]1C[C@@H]1C"]
)
def test_geometry_smiles_reads_the_stereo_of_a_3d_structure(smiles):
    import ast

    flat, elements, coords = _geometry(smiles)
    xyz = ast.literal_eval(coords)
    assert ds.geometry_smiles(flat, ast.literal_eval(elements), xyz) == smiles


def test_geometry_smiles_refuses_a_geometry_of_another_molecule():
    import ast

    _, elements, coords = _geometry("CCO")
    with pytest.raises(ValueError, match="bonds are not those of the SMILES"):
        ds.geometry_smiles("COC", ast.literal_eval(elements), ast.literal_eval(coords))


def test_qm9_stereo_takes_stereo_from_the_geometry_and_reports_rejects(
    offline, tmp_path, monkeypatch
):
    header = "XYZ_file,Index,SMILES,Elements,XYZ_Ang"
    rows = [("C[C@@H](N)C(=O)O", 2), ("C/C=C\\C", 1)]
    parts = {}
    for i, member in enumerate(ds.QM9_PARTS):
        lines = [header]
        if i < len(rows):
            flat, elements, coords = _geometry(rows[i][0])
            lines.append(f'f{i}.xyz,{rows[i][1]},{flat},"{elements}","{coords}"')
        else:  # a relaxed geometry that is not its SMILES
            _, elements, coords = _geometry("CCO")
            lines.append(f'f{i}.xyz,3,COC,"{elements}","{coords}"')
        parts[member] = ("\n".join(lines) + "\n").encode()
    monkeypatch.setattr(ds, "QM9", _fake_wheel(offline, ds.QM9, parts))
    result = ds.prepare("qm9_stereo", tmp_path / "data")
    assert result["rows"] == 2 and result["rejected"] == 1
    frame = pd.read_csv(ds.qm9_stereo_path(tmp_path / "data"))
    assert frame["smiles"].tolist() == ["C/C=C\\C", "C[C@@H](N)C(=O)O"]  # by QM9 index
    rejects = pd.read_csv(tmp_path / "data" / "qm9_stereo" / "rejects.csv")
    assert rejects["smiles"].tolist() == ["COC"]
    assert "not those of the SMILES" in rejects["reason"][0]
    assert ds.prepare("qm9_stereo", tmp_path / "data")["skipped"]


def test_missing_data_tells_the_user_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `medgen data moses`"):
        ds.moses_path("train", tmp_path)
    with pytest.raises(ValueError, match="unknown MOSES split 'validation'"):
        ds.moses_path("validation", tmp_path)
    with pytest.raises(ValueError, match="unknown data set 'zinc'"):
        ds.prepare("zinc", tmp_path)


def test_corrupt_cached_wheel_is_not_used(offline, tmp_path, monkeypatch):
    offline.mkdir(parents=True)
    (offline / ds.MOSES.filename).write_bytes(b"not a wheel")
    with pytest.raises(AssertionError, match="tried to download"):
        ds.fetch_wheel(ds.MOSES, tmp_path / "data" / "wheels")


def test_data_task_through_config(compose_cfg, offline, monkeypatch):
    members = _moses_members(monkeypatch, lambda name: b"x")
    monkeypatch.setattr(ds, "MOSES", _fake_wheel(offline, ds.MOSES, members))
    from medgen.tasks.data import data

    cfg = compose_cfg("data", ["dataset=moses"])
    result = data(cfg)
    assert Path(result["folder"]) == Path(cfg.paths.data_dir) / "moses"
    assert io.BytesIO(Path(result["written"][0]).read_bytes()).read() == b"x"
