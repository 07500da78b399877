"""The synthetic marking of exported NIfTI files, and what survives nibabel, SimpleITK and MONAI."""

from __future__ import annotations

import json
import socket

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen import marking
from tests.release.volume_helpers import cohort, smooth_volumes, write
from tests.sampling.helpers import AFFINE, CKPT_SHA


@pytest.fixture
def sample_file(tmp_path):
    c = cohort(tmp_path / "synth")
    write(c, smooth_volumes(2, seed=1))
    c.finalize(2, preview=False)
    return tmp_path / "synth" / "images" / "sample_00000.nii.gz"


def test_an_exported_volume_carries_every_mark(sample_file):
    img = nib.load(sample_file)
    assert bytes(img.header["descrip"].item()).decode().startswith(marking.MARK)
    assert bytes(img.header["intent_name"].item()).decode() == marking.INTENT_NAME
    record = marking.read_mark(sample_file)
    assert record["found_in"] == ["extension", "descrip", "intent_name", "sidecar", "voxels"]
    assert record["synthetic"] is True and record["kind"] == "volume"
    assert record["checkpoint_sha256"] == CKPT_SHA
    assert record["generator"] == "tests.release.FakeGenerator"
    assert record["settings"]["seed"] == 3 and record["settings"]["sampler"] == "ddim"
    sidecar = json.loads(sample_file.with_name("sample_00000.json").read_text())
    assert sidecar["marking"]["mark"] == marking.MARK
    datalist = json.loads((sample_file.parents[1] / "dataset.json").read_text())
    assert datalist["synthetic"] is True and datalist["medgen_synthetic"]["mark"] == marking.MARK


def test_the_voxel_stamp_changes_at_most_one_hu_in_64_voxels():
    data = np.full((8, 8, 8), -1000, np.int16)
    record = {"checkpoint_sha256": "ab" * 32}
    stamped = marking.stamp_voxels(data, record)
    diff = np.abs(stamped.astype(int) - data)
    assert diff.max() == 1 and diff.reshape(-1)[64:].sum() == 0
    assert marking.read_voxel_mark(stamped)["checkpoint_sha8"] == "abababab"
    assert marking.read_voxel_mark(data) is None  # a constant (real) volume has no stamp
    noise = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    assert marking.read_voxel_mark(marking.stamp_voxels(noise, record)) is not None
    assert marking.read_voxel_mark(noise) is None


def test_nibabel_round_trip_keeps_the_extension(sample_file, tmp_path):
    copy = tmp_path / "elsewhere" / "copy.nii.gz"  # no sidecar beside it
    copy.parent.mkdir()
    nib.save(nib.load(sample_file), copy)
    record = marking.read_mark(copy)
    assert record["found_in"] == ["extension", "descrip", "intent_name", "voxels"]
    assert record["checkpoint_sha256"] == CKPT_SHA and not record.get("partial")


def test_simpleitk_round_trip_keeps_descrip_and_voxels(sample_file, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    copy = tmp_path / "sitk.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(sample_file)), str(copy))
    record = marking.read_mark(copy)
    # SimpleITK drops NIfTI extensions and intent_name; descrip and the voxels survive
    assert record["found_in"] == ["descrip", "voxels"]
    assert record["partial"] is True
    assert record["checkpoint_sha12"] == CKPT_SHA[:12] and record["checkpoint_sha8"] == CKPT_SHA[:8]


def test_monai_load_save_round_trip_keeps_the_voxel_stamp(sample_file, tmp_path):
    from monai.transforms import LoadImage, SaveImage

    image = LoadImage(image_only=True)(str(sample_file))  # float32 MetaTensor
    SaveImage(output_dir=str(tmp_path / "monai"), output_postfix="copy", separate_folder=False,
              print_log=False)(image[None])  # fmt: skip
    (copy,) = (tmp_path / "monai").glob("*.nii.gz")
    header = nib.load(copy).header
    assert not bytes(header["descrip"].item()).startswith(marking.MARK.encode())  # fresh header
    record = marking.read_mark(copy)
    assert record["found_in"] == ["voxels"] and record["checkpoint_sha8"] == CKPT_SHA[:8]


def test_a_plain_nifti_has_no_mark(tmp_path):
    path = tmp_path / "real.nii.gz"
    hu = np.random.default_rng(1).integers(-1000, 1000, (8, 8, 8)).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, AFFINE), path)
    assert marking.read_mark(path) is None


def test_text_sdf_and_parquet_marks_read_back(tmp_path):
    record = marking.provenance(
        "molecules", checkpoint_sha256="cd" * 32, generator="g.G", settings={"temperature": 0.8}
    )
    csv = tmp_path / "m.csv"
    csv.write_text("\n".join(marking.header_lines(record)) + "\nsmiles\nCCO\n")
    assert marking.read_mark(csv)["settings"] == {"temperature": 0.8}
    sdf = tmp_path / "m.sdf"
    block = "\n  RDKit\n\n  0  0  0  0  0  0  0  0  0  0999 V2000\nM  END\n>  <{}>\n{}\n\n$$$$\n"
    sdf.write_text(
        block.format(marking.SDF_TAG, marking.sdf_value(record, first=False))
        + block.format(marking.SDF_TAG, marking.sdf_value(record, first=True))
    )
    short = marking.read_mark(sdf)  # the first record holding a tag wins
    assert short["partial"] and short["checkpoint_sha12"] == "cd" * 6
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    table = pa.table({"smiles": ["CCO"]}).replace_schema_metadata(marking.parquet_metadata(record))
    pq.write_table(table, tmp_path / "m.parquet")
    assert marking.read_mark(tmp_path / "m.parquet")["checkpoint_sha256"] == "cd" * 32
    (tmp_path / "plain.csv").write_text("smiles\nCCO\n")
    assert marking.read_mark(tmp_path / "plain.csv") is None


def test_check_shareable_names_paths_hosts_and_home(tmp_path):
    host = socket.gethostname()
    leaks = marking.check_shareable(
        {"a": str(tmp_path), "b": [f"data@{host}"], "ok": "nifti folder (3 files)", "u": "mm/s"}
    )
    assert len(leaks) == 2 and leaks[0].startswith("a: absolute path")
    assert leaks[1].startswith("b[0]: host name") or leaks[1].startswith("b[0]: absolute")
    assert marking.check_shareable({"x": "phantom:42", "y": 1.5, "z": "ddim 1/2"}) == []
    with pytest.raises(ValueError, match="not shareable"):
        marking.provenance("volume", checkpoint_sha256="0", generator="g", settings={"p": "/a/b"})


def test_stamp_survives_in_a_multichannel_volume():
    data = torch.randn(8, 8, 8, 2).numpy().astype(np.float32)
    stamped = marking.stamp_voxels(data, {"checkpoint_sha256": "12345678"})
    assert np.array_equal(stamped[..., 1], data[..., 1])
    assert marking.read_voxel_mark(stamped)["checkpoint_sha8"] == "12345678"
