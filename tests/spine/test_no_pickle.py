"""No data file medgen reads can run code: a pickle payload planted in each kind of file (MOSES
statistics, reference caches, the graph cache, MedMNIST, checkpoints) never runs, and the reader
raises a clear error naming the file (the graph cache is rebuilt instead). MOSES's own pickled
statistics are converted once, sha256-checked, by an unpickler that only rebuilds arrays."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import pickle
import re
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import medgen.datasets as ds
from medgen.chem import reference
from medgen.errors import InputFileError, MissingFileError

REPO = Path(__file__).resolve().parents[2]
#: what tools/hooks forbid in medgen/ (written so that this file does not match itself)
FORBIDDEN = re.compile(r"allow_pickle\s*=\s*True|pickle\.load|weights_only\s*=\s*False")


class _Payload:
    """Unpickling this calls ``Path(marker).touch()``: the way a planted file would run code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a planted pickle ran code"


def _object_npz(path: Path, marker: Path, keys=("stats",)) -> Path:
    """An .npz whose arrays are object arrays holding the payload (np.savez pickles them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: np.array(_Payload(marker), dtype=object) for k in keys})
    return path


def _moses_format_npz(path: Path, stats: dict) -> Path:
    """A file laid out like molsets' ``test_stats.npz``: ``stats.npy``, a 0-d object array
    pickled with protocol 2 (bytes through ``_codecs.encode``, as numpy 1.x wrote it)."""
    buf = io.BytesIO()
    header = {"descr": "|O", "fortran_order": False, "shape": ()}
    np.lib.format.write_array_header_1_0(buf, header)
    pickle.dump(np.array(stats, dtype=object), buf, protocol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("stats.npy", buf.getvalue())
    return path


def _tiny_moses_stats() -> dict:
    rng = np.random.default_rng(0)
    fps = (rng.random((3, 1024)) < 0.1).astype(np.uint8)
    return {
        "FCD": {"mu": rng.random(4).astype(np.float32), "sigma": rng.random((4, 4))},
        "SNN": {"fps": fps},
        "Frag": {"frag": Counter({"[1*]C([6*])=O": 3, "c1ccccc1": 2})},
        "Scaf": {"scaf": Counter({"c1ccc2ccccc2c1": 1})},
        **{k: {"values": [0.1 * i + 1 / 3 for i in range(3)]} for k in reference.PROPERTY_NAMES},
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_payload_is_live(tmp_path):
    """Control: an unrestricted unpickler does run the payload, so the tests below mean it."""
    live = tmp_path / "live"
    pickle.Unpickler(io.BytesIO(pickle.dumps(_Payload(live), protocol=2))).load()
    assert live.exists()


def test_medgen_source_has_no_unsafe_loads():
    hits = []
    for path in sorted((REPO / "medgen").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            for n, line in enumerate(path.read_text(errors="ignore").splitlines(), 1):
                if FORBIDDEN.search(line):
                    hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)


# ---------------------------------------------------------------------------------------------
# MOSES statistics


def test_planted_converted_moses_stats_are_refused(tmp_path, marker):
    from omegaconf import OmegaConf

    from medgen.tasks.evaluate import _references

    moses = tmp_path / "data" / "moses"
    for split in ("test", "test_scaffolds"):
        _object_npz(moses / f"{split}_stats.plain.npz", marker, keys=("version", "fcd_mu"))
    with pytest.raises(InputFileError, match="holds pickled Python objects") as info:
        reference.load_moses_stats(moses / "test_stats.plain.npz")
    assert str(moses / "test_stats.plain.npz") in str(info.value)
    cfg = OmegaConf.create(
        {"reference": "moses", "paths": {"data_dir": str(tmp_path / "data")}, "batch_size": 8,
         "device": "cpu", "guacamol": False, "kl_size": 10}
    )  # fmt: skip
    with pytest.raises(InputFileError, match="test_stats.plain.npz holds pickled"):
        _references(cfg, 1)


def test_raw_moses_stats_are_never_loaded_by_evaluate(tmp_path, marker):
    from omegaconf import OmegaConf

    from medgen.tasks.evaluate import _references

    moses = tmp_path / "data" / "moses"
    for name in ds.MOSES_STATS_SHA256:  # old folder: wheel-format files only, here planted
        _moses_format_npz(moses / name, {"FCD": _Payload(marker)})
    with pytest.raises(MissingFileError, match="run `medgen data moses`"):
        reference.load_moses_stats(moses / "test_stats.npz")
    cfg = OmegaConf.create(
        {"reference": "moses", "paths": {"data_dir": str(tmp_path / "data")}, "batch_size": 8,
         "device": "cpu", "guacamol": False, "kl_size": 10}
    )  # fmt: skip
    with pytest.raises(MissingFileError, match="test_stats.plain.npz"):
        _references(cfg, 1)


def test_planted_raw_stats_fail_the_pinned_sha256(tmp_path, marker):
    raw = _moses_format_npz(tmp_path / "test_stats.npz", {"FCD": _Payload(marker)})
    with pytest.raises(InputFileError, match="not the pinned") as info:
        ds.convert_moses_stats(raw, sha256=ds.MOSES_STATS_SHA256["test_stats.npz"])
    assert str(raw) in str(info.value) and "sha256" in str(info.value)
    assert not (tmp_path / "test_stats.plain.npz").exists()


def test_restricted_unpickler_refuses_a_payload_even_when_the_sha256_matches(tmp_path, marker):
    raw = _moses_format_npz(
        tmp_path / "test_stats.npz", {**_tiny_moses_stats(), "x": _Payload(marker)}
    )
    with pytest.raises(InputFileError, match="is not allowed") as info:
        ds.convert_moses_stats(raw, sha256=_sha256(raw))
    assert str(raw) in str(info.value)
    assert not (tmp_path / "test_stats.plain.npz").exists()
    # a whole npz of object arrays (np.savez's own pickle) is refused too
    other = _object_npz(tmp_path / "other_stats.npz", marker)
    with pytest.raises(InputFileError, match="is not allowed"):
        ds.convert_moses_stats(other, sha256=_sha256(other))


def test_converter_copies_a_moses_format_file_exactly(tmp_path):
    stats = _tiny_moses_stats()
    raw = _moses_format_npz(tmp_path / "test_stats.npz", stats)
    out = ds.convert_moses_stats(raw, sha256=_sha256(raw))
    assert out == tmp_path / "test_stats.plain.npz"
    with np.load(out) as npz:  # numpy's default: allow_pickle off
        assert all(npz[k].dtype != object for k in npz.files)
    got = reference.load_moses_stats(raw, "Test")  # the raw name stands for its conversion
    assert got.name == "Test"
    assert got.fcd_mu.dtype == np.float32 and np.array_equal(got.fcd_mu, stats["FCD"]["mu"])
    assert np.array_equal(got.fcd_sigma, stats["FCD"]["sigma"])
    assert np.array_equal(got.fps, stats["SNN"]["fps"])
    assert got.fragments == dict(stats["Frag"]["frag"])
    assert list(got.fragments) == list(stats["Frag"]["frag"])
    assert got.scaffolds == dict(stats["Scaf"]["scaf"])
    for k in reference.PROPERTY_NAMES:
        assert got.properties[k].tobytes() == np.asarray(stats[k]["values"]).tobytes()


def _moses_dir() -> Path | None:
    root = Path(os.environ.get("MEDGEN_DATA_DIR") or REPO / "data") / "moses"
    raw = root / "test_stats.npz"
    return root if raw.is_file() and _sha256(raw) == ds.MOSES_STATS_SHA256[raw.name] else None


def test_real_moses_conversion_reproduces_known_values(tmp_path):
    root = _moses_dir()
    if root is None:
        pytest.skip("MOSES data not unpacked (run `medgen data moses`)")
    out = ds.convert_moses_stats(
        root / "test_stats.npz", sha256=ds.MOSES_STATS_SHA256["test_stats.npz"],
        out=tmp_path / "test_stats.plain.npz",
    )  # fmt: skip
    got = reference.load_moses_stats(out, "Test")
    # values read once through np.load(allow_pickle) of molsets 0.3.1's file, before this change
    assert got.fcd_mu.dtype == np.float32 and got.fcd_mu.shape == (512,)
    assert got.fcd_mu[:3].tolist() == [
        0.0426645427942276,
        0.005639111623167992,
        0.09314089268445969,
    ]
    assert float(got.fcd_sigma[0, 0]) == 0.11998320739302609
    assert got.fps.shape == (176074, 1024) and int(got.fps.sum()) == 7483779
    assert len(got.fragments) == 16038 and sum(got.fragments.values()) == 947619
    assert next(iter(got.fragments.items())) == ("[1*]C([6*])=O", 75983)
    assert len(got.scaffolds) == 77114
    assert got.properties["logP"][:2].tolist() == [3.4567000000000023, 2.8970000000000016]
    assert got.properties["weight"].shape == (176074,)


def test_prepare_moses_converts_an_old_folder_then_is_a_noop(tmp_path, monkeypatch):
    def no_pip(*args, **kwargs):
        raise AssertionError(f"tried to download: {args}")

    monkeypatch.setattr(ds.subprocess, "run", no_pip)
    moses = tmp_path / "data" / "moses"
    moses.mkdir(parents=True)
    digests = {}
    for name in ds.MOSES_FILES:  # unpacked by an older medgen: raw files and SOURCE.json only
        if name in ds.MOSES_STATS_SHA256:
            digests[name] = _sha256(_moses_format_npz(moses / name, _tiny_moses_stats()))
        else:
            (moses / name).write_bytes(b"csv")
    (moses / "SOURCE.json").write_text(json.dumps({"files": list(ds.MOSES_FILES)}))
    monkeypatch.setattr(ds, "MOSES_STATS_SHA256", digests)
    first = ds.prepare("moses", tmp_path / "data")
    plain = sorted(f"{n.removesuffix('.npz')}.plain.npz" for n in digests)
    assert sorted(Path(p).name for p in first["written"]) == plain
    assert set(plain) <= set(json.loads((moses / "SOURCE.json").read_text())["files"])
    assert ds.moses_stats_path("test_scaffolds", tmp_path / "data").is_file()
    second = ds.prepare("moses", tmp_path / "data")
    assert second["skipped"] and second["written"] == []


def test_prepare_moses_refuses_a_planted_raw_stats_file(tmp_path, monkeypatch, marker):
    monkeypatch.setattr(ds.subprocess, "run", lambda *a, **k: pytest.fail("tried to download"))
    moses = tmp_path / "data" / "moses"
    moses.mkdir(parents=True)
    for name in ds.MOSES_FILES:
        if name in ds.MOSES_STATS_SHA256:
            _moses_format_npz(moses / name, {"FCD": _Payload(marker)})
        else:
            (moses / name).write_bytes(b"csv")
    (moses / "SOURCE.json").write_text("{}")
    with pytest.raises(InputFileError, match="sha256") as info:
        ds.prepare("moses", tmp_path / "data")
    assert str(moses / "test_stats.npz") in str(info.value)
    assert not (moses / "test_stats.plain.npz").exists()


# ---------------------------------------------------------------------------------------------
# reference caches, graph cache, MedMNIST


def _no_compute(*args, **kwargs):
    raise AssertionError("the planted cache file was not the one read")


def test_planted_reference_stats_cache_is_refused(tmp_path, monkeypatch, marker):
    from medgen.utils.provenance import file_sha256

    monkeypatch.setattr(reference, "compute_reference_stats", _no_compute)
    smiles = tmp_path / "ref.smi"
    smiles.write_text("CCO\nc1ccccc1\n")
    cache_dir = tmp_path / "data" / "cache" / "reference"
    key = f"{file_sha256(smiles)}:None:{reference.STATS_VERSION}"
    cache = cache_dir / f"ref-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    _object_npz(cache, marker, keys=("version", "name"))
    with pytest.raises(InputFileError, match="holds pickled Python objects") as info:
        reference.cached_reference_stats(smiles, cache_dir)
    assert str(cache) in str(info.value) and "delete this cache file" in str(info.value)
    cache.write_bytes(pickle.dumps(_Payload(marker)))  # a bare pickle under the .npz name
    with pytest.raises(InputFileError, match=r"not an \.npz file \(it is a pickle\)"):
        reference.cached_reference_stats(smiles, cache_dir)


def test_planted_guacamol_kl_cache_is_refused(tmp_path, monkeypatch, marker):
    from medgen.utils.provenance import file_sha256

    monkeypatch.setattr(reference, "compute_kl_reference", _no_compute)
    smiles = tmp_path / "ref.smi"
    smiles.write_text("CCO\nc1ccccc1\n")
    cache_dir = tmp_path / "data" / "cache" / "reference"
    key = hashlib.sha256(f"{file_sha256(smiles)}:kl:10:{reference.STATS_VERSION}".encode())
    cache = cache_dir / f"ref-kl-{key.hexdigest()[:16]}.npz"
    _object_npz(cache, marker, keys=("descriptors", "internal_similarity"))
    with pytest.raises(InputFileError, match="holds pickled Python objects") as info:
        reference.cached_kl_reference(smiles, cache_dir, size=10)
    assert str(cache) in str(info.value)


def test_planted_graph_cache_is_rebuilt_not_run(tmp_path, marker, caplog):
    from medgen.molecules.featurize import cache_file, load_source

    source = tmp_path / "mols.smi"
    source.write_text("CCO\nc1ccccc1\nCC(=O)O\n")
    target = cache_file(source, None, tmp_path / "cache")
    torch.save({"smiles": ["C"], "payload": _Payload(marker)}, target)
    caplog.set_level("WARNING")
    feats, used = load_source(source, cache_dir=tmp_path / "cache")
    assert used == target and feats.smiles == ["CCO", "c1ccccc1", "CC(=O)O"]
    assert "needs pickled code" in caplog.text and str(target) in caplog.text
    again, _ = load_source(source, cache_dir=tmp_path / "cache")  # the rebuilt cache is clean
    assert again.smiles == feats.smiles


def test_planted_medmnist_npz_is_refused(tmp_path, marker):
    from medgen.imaging.sources import load_medmnist_split

    path = _object_npz(tmp_path / "organmnist3d.npz", marker, keys=("train_images", "train_labels"))
    with pytest.raises(InputFileError, match="pickled Python objects") as info:
        load_medmnist_split(path, "train")
    assert str(path) in str(info.value)
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(InputFileError, match="pickled Python objects"):
        load_medmnist_split(path, "train")


# ---------------------------------------------------------------------------------------------
# checkpoints


def test_planted_checkpoint_is_refused_by_every_loader(tmp_path, marker):
    from medgen.imaging.diffusion import DiffusionModule
    from medgen.molecules.api import MoleculeVAE
    from medgen.molecules.module import GraphVAEModule
    from medgen.utils.checkpoint import load_checkpoint, load_medgen_checkpoint

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    hp = {"kind": "graph_vae", "vocabulary": ["C"], "max_atoms": 4}
    torch.save({"state_dict": {}, "hyper_parameters": hp, "x": _Payload(marker)}, ckpt)
    loaders = [
        load_checkpoint,
        load_medgen_checkpoint,
        GraphVAEModule.from_checkpoint,
        DiffusionModule.from_checkpoint,
        MoleculeVAE.from_checkpoint,
    ]
    for load in loaders:
        with pytest.raises(InputFileError, match="refuses to load: needs pickled code") as info:
            load(tmp_path / "run")
        assert str(ckpt) in str(info.value)
    ckpt.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))  # a bare pickle
    with pytest.raises(InputFileError, match="not a PyTorch checkpoint"):
        load_medgen_checkpoint(ckpt)
