"""Export: NIfTI geometry and units, sidecars, manifest, datalist, atomic resume, refusal."""

from __future__ import annotations

import csv
import gzip
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen.imaging import cohort as ex
from medgen.imaging.api import export_volumes
from medgen.imaging.intensity import IntensityMapping
from medgen.marking import STAMP_BITS, read_voxel_mark
from medgen.records import DataMeta, Sampler, SampleSettings
from medgen.utils.provenance import file_sha256

from .helpers import AFFINE, data_meta, temporaries

CT = IntensityMapping("ct_window", -1000.0, 1000.0)


def _volumes(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, size, size, size), generator=g) * 2.2 - 1.1  # spills past [-1, 1]


def _export(vols, out, *, affine=AFFINE, intensity=CT, modality="CT", seed=7, **kw):
    """export_volumes with the test's geometry and settings (keyword changes as arguments)."""
    meta = DataMeta.from_dict(
        {**data_meta(vols.shape[-1]).to_dict(), "affine": np.asarray(affine).tolist(),
         "intensity": dict(intensity if isinstance(intensity, dict) else intensity.to_dict()),
         "modality": modality}
    )  # fmt: skip
    sampled = SampleSettings(seed=seed, sampler=Sampler.DDIM, steps=10)
    kw.setdefault("checkpoint_sha256", "ab" * 32)
    kw.setdefault("config_hash", "cafe")
    return export_volumes(vols, out, meta=meta, settings=sampled, **kw)


def test_ct_nifti_geometry_dtype_and_hu(tmp_path):
    vols = _volumes(3)
    paths = _export(vols, tmp_path / "out")
    assert [p.name for p in paths] == [f"sample_0000{i}.nii.gz" for i in range(3)]
    for i, p in enumerate(paths):
        img = nib.load(p)
        np.testing.assert_allclose(img.affine, AFFINE)
        np.testing.assert_allclose(img.header.get_zooms(), (1.5, 1.0, 2.0))
        assert img.get_data_dtype() == np.int16
        data = np.asarray(img.dataobj)
        assert data.dtype == np.int16 and data.shape == (8, 8, 8)
        assert data.min() >= -1000 and data.max() <= 1000
        expected = np.rint(vols[i, 0].clamp(-1, 1).double().numpy() * 1000.0).astype(np.int16)
        # exact HU except the synthetic stamp: the lowest bit of the first 64 voxels (C order
        # of the written array), each moved by at most 1 HU, which decodes back to the mark
        diff = (data.astype(np.int32) - expected).reshape(-1)
        np.testing.assert_array_equal(diff[STAMP_BITS:], 0)
        assert np.abs(diff[:STAMP_BITS]).max() <= 1
        assert read_voxel_mark(data) is not None
        assert img.header.get_xyzt_units()[0] == "mm"
        assert int(img.header["sform_code"]) == 1


def test_mr_is_float32_in_source_scale(tmp_path):
    mr = IntensityMapping("percentile", 1.0, 99.0, ref_lo=10.0, ref_hi=500.0)
    (path,) = _export(_volumes(1), tmp_path / "mr", intensity=mr.to_dict(), modality="MR")
    data = np.asarray(nib.load(path).dataobj)
    assert data.dtype == np.float32
    assert 10.0 <= data.min() and data.max() <= 500.0


def test_units_follow_the_intensity_mapping_not_the_modality(tmp_path):
    """A 0..255 (minmax) model is never written as int16 "HU", even if labelled CT."""
    minmax = IntensityMapping("minmax", 0.0, 255.0)
    assert minmax.units == "source" and CT.units == "HU"
    (path,) = _export(_volumes(1), tmp_path / "mm", intensity=minmax.to_dict(), modality="CT")
    data = np.asarray(nib.load(path).dataobj)
    assert data.dtype == np.float32 and 0.0 <= data.min() and data.max() <= 255.0
    sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["units"] == "source"
    (path,) = _export(_volumes(1), tmp_path / "ct", modality="CT")
    hu = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    assert hu["units"] == "HU"


def test_manifest_sidecars_and_datalist_agree_with_files(tmp_path):
    out = tmp_path / "out"
    labels = torch.randint(0, 5, (4, 1, 8, 8, 8), generator=torch.Generator().manual_seed(1))
    _export(_volumes(4), out, labels=labels, label_names={0: "background", 1: "lung"})
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["index"] for r in rows] == ["0", "1", "2", "3"]
    for r in rows:
        assert file_sha256(out / r["file"]) == r["sha256"]
        assert file_sha256(out / r["label"]) == r["label_sha256"]
        assert (r["seed"], r["shape"], r["spacing"]) == ("7", "8x8x8", "1.5x1x2")
        side = json.loads((out / r["file"].replace(".nii.gz", ".json")).read_text())
        assert side["sha256"] == r["sha256"] and side["index"] == int(r["index"])
        assert (side["seed"], side["sampler"], side["steps"]) == (7, "ddim", 10)
        assert side["checkpoint_sha256"] == "ab" * 32 and side["training_config_hash"] == "cafe"
        assert side["medgen_version"] and side["time"]
        lab = np.asarray(nib.load(out / r["label"]).dataobj)
        np.testing.assert_array_equal(lab, labels[int(r["index"]), 0].numpy())
    datalist = json.loads((out / "dataset.json").read_text())
    assert datalist["numTraining"] == 4 and datalist["modality"] == {"0": "CT"}
    assert datalist["training"][2] == {
        "image": "images/sample_00002.nii.gz",
        "label": "labels/sample_00002.nii.gz",
    }
    assert datalist["labels"] == {"0": "background", "1": "lung"}
    assert (out / "preview.png").stat().st_size > 0
    assert json.loads((out / "run.json").read_text())["seed"] == 7


def test_killed_export_resumes_without_gaps_duplicates_or_temporaries(tmp_path, monkeypatch):
    out, vols, n, k = tmp_path / "out", _volumes(6), 6, 3
    real_save = nib.save
    calls = []

    def dying_save(img, path):
        calls.append(path)
        if len(calls) > k:  # the (k+1)-th file: write half of it, then die
            real_save(img, path)
            path.write_bytes(path.read_bytes()[:50])
            raise KeyboardInterrupt("simulated kill")
        real_save(img, path)

    monkeypatch.setattr(nib, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _export(vols, out)
    monkeypatch.setattr(nib, "save", real_save)
    assert len(list((out / "images").glob("sample_*.nii.gz"))) == k
    # a hard kill leaves its temporary behind, and may leave an image without its sidecar
    (out / "images" / ".sample_00004.tmp-dead.nii.gz").write_bytes(b"half")
    (out / "images" / "sample_00005.nii.gz").write_bytes(b"not a sidecar-backed file")
    before = {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("sample_*.nii.gz")}

    calls.clear()
    monkeypatch.setattr(nib, "save", lambda img, path: (calls.append(path), real_save(img, path)))
    _export(vols, out)
    assert len(calls) == n - k  # the k intact samples were skipped
    images = sorted(p.name for p in (out / "images").iterdir() if p.name.endswith(".nii.gz"))
    assert images == [f"sample_{i:05d}.nii.gz" for i in range(n)]
    assert temporaries(out) == []
    for name, mtime in before.items():
        if name < f"sample_{k:05d}":
            assert (out / "images" / name).stat().st_mtime_ns == mtime
    assert ex.intact_indices(out) == set(range(n))
    with open(out / "manifest.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == n


def test_tampered_file_is_rewritten(tmp_path):
    out, vols = tmp_path / "out", _volumes(2)
    _export(vols, out)
    good = (out / "images" / "sample_00001.nii.gz").read_bytes()
    (out / "images" / "sample_00001.nii.gz").write_bytes(good[:-10])
    assert ex.intact_indices(out) == {0}
    _export(vols, out)
    # the same sample again (its mark records a new creation time, so compare contents)
    redone, first = (
        nib.load(out / "images" / "sample_00001.nii.gz"),
        nib.Nifti1Image.from_bytes(gzip.decompress(good)),
    )
    np.testing.assert_array_equal(np.asarray(redone.dataobj), np.asarray(first.dataobj))
    np.testing.assert_array_equal(redone.affine, first.affine)


def test_different_seed_or_checkpoint_is_refused_unless_overwrite(tmp_path):
    out, vols = tmp_path / "out", _volumes(2)
    _export(vols, out)
    with pytest.raises(FileExistsError, match=r"seed: 7 there, 8 now.*overwrite=true"):
        _export(vols, out, seed=8)
    with pytest.raises(FileExistsError, match="checkpoint_sha256"):
        _export(vols, out, checkpoint_sha256="cd" * 32)
    _export(vols[:1], out, seed=8, overwrite=True)
    assert json.loads((out / "run.json").read_text())["seed"] == 8
    assert sorted(p.name for p in (out / "images").glob("*.nii.gz")) == ["sample_00000.nii.gz"]


def test_foreign_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no run.json"):
        _export(_volumes(1), tmp_path)
    _export(_volumes(1), tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only medgen's own files are replaced


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        _export(torch.full((1, 1, 4, 4, 4), float("nan")), tmp_path / "a")
    with pytest.raises(ValueError, match="one channel"):
        _export(torch.zeros((1, 2, 4, 4, 4)), tmp_path / "b")
    with pytest.raises(ValueError, match="data_meta.affine.*4x4"):
        _export(_volumes(1), tmp_path / "c", affine=np.eye(3))
    with pytest.raises(ValueError, match="distinct"):
        _export(_volumes(2), tmp_path / "d", indices=[3, 3])


def test_one_write_preview_name_per_purpose():
    """Training previews (viz.write_preview) and cohort previews have different names."""
    from medgen.imaging import viz

    assert callable(ex.write_cohort_preview) and not hasattr(ex, "write_preview")
    assert callable(viz.write_preview)


def test_one_import_path_per_name():
    """The re-export shims are gone: each name has one home."""
    import importlib

    for gone in ("export", "sample", "predict"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(f"medgen.imaging.{gone}")
