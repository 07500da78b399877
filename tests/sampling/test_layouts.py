"""Cohort layouts other tools train on: the Decathlon datalist (default) and nnU-Net v2's raw
dataset layout, for a model that generates each image with its label map."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medgen.errors import ConfigError, OutputExistsError, UserError
from medgen.generation import sample_to
from medgen.imaging.cohort import VolumeCohort
from medgen.imaging.labels import LabelCodec, joint_meta
from medgen.tasks.checks import SampleJob
from medgen.utils.validate import read_record

from .helpers import CKPT_SHA, StandIn, data_meta, settings

NAMES = ("background", "liver", "spleen")
NNUNET = {"layout": "nnunet"}


class JointStandIn(StandIn):
    """The stand-in generator of a CT + label-map model (1 + 3 onehot channels)."""

    def __init__(self) -> None:
        codec = LabelCodec(NAMES)
        super().__init__(size=8, channels=1 + codec.channels)
        self.meta = joint_meta(data_meta(8), codec)


def _sample(module, out, **kw):
    s = settings(seed=1, steps=2, extra=kw.pop("extra", {}))
    return sample_to(module, s, out=out, checkpoint=out.parent / "ckpt", preview=False, **kw)


def test_nnunet_layout_is_what_nnunet_v2_reads(tmp_path):
    out = tmp_path / "Dataset501_Synth"
    summary = _sample(JointStandIn(), out, n=3, batch_size=2, extra=NNUNET)
    assert summary["count"] == 3
    images = sorted(p.name for p in (out / "imagesTr").glob("*.nii.gz"))
    labels = sorted(p.name for p in (out / "labelsTr").glob("*.nii.gz"))
    assert images == [f"sample_0000{i}_0000.nii.gz" for i in range(3)]
    assert labels == [f"sample_0000{i}.nii.gz" for i in range(3)]
    assert not (out / "images").exists() and not (out / "labels").exists()
    doc = json.loads((out / "dataset.json").read_text())
    assert doc["channel_names"] == {"0": "CT"} and doc["file_ending"] == ".nii.gz"
    assert doc["labels"] == {"background": 0, "liver": 1, "spleen": 2}
    assert doc["numTraining"] == 3
    # nnU-Net's case identifiers: image names less "_0000<ending>" match the label names
    cases = {name[: -len("_0000.nii.gz")] for name in images}
    assert cases == {name[: -len(".nii.gz")] for name in labels}
    for case in cases:
        image = nib.load(out / "imagesTr" / f"{case}_0000.nii.gz")
        label = nib.load(out / "labelsTr" / f"{case}.nii.gz")
        assert image.shape == label.shape == (8, 8, 8)
        assert np.array_equal(image.affine, label.affine)
        assert label.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1, 2}
    assert json.loads((out / "run.json").read_text())["layout"] == "nnunet"


def test_nnunet_and_decathlon_cohorts_hold_the_same_samples(tmp_path):
    _sample(JointStandIn(), tmp_path / "nn", n=2, extra=NNUNET)
    _sample(JointStandIn(), tmp_path / "msd", n=2)
    for i in range(2):
        a = nib.load(tmp_path / "nn" / "labelsTr" / f"sample_0000{i}.nii.gz")
        b = nib.load(tmp_path / "msd" / "labels" / f"sample_0000{i}.nii.gz")
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    msd = json.loads((tmp_path / "msd" / "dataset.json").read_text())
    assert msd["labels"] == {"0": "background", "1": "liver", "2": "spleen"}
    assert msd["training"][0] == {
        "image": "images/sample_00000.nii.gz", "label": "labels/sample_00000.nii.gz"
    }  # fmt: skip


def test_a_rerun_resumes_and_another_layout_is_refused(tmp_path):
    out = tmp_path / "nn"
    _sample(JointStandIn(), out, n=2, extra=NNUNET)
    assert _sample(JointStandIn(), out, n=3, extra=NNUNET)["written"] == 1
    with pytest.raises(OutputExistsError, match=r"layout: 'nnunet' there, 'decathlon' now"):
        _sample(JointStandIn(), out, n=3)


def test_nnunet_is_refused_for_a_model_without_label_maps(tmp_path):
    s = StandIn().resolve_settings(settings(extra=NNUNET))
    with pytest.raises(ConfigError) as err:
        VolumeCohort(tmp_path / "x", data_meta(8), s, checkpoint_sha256=CKPT_SHA)
    msg = str(err.value)
    assert msg.startswith("layout='nnunet' is not allowed: decathlon") and "\n" not in msg
    assert "data.labels=true" in msg and not (tmp_path / "x").exists()


def test_the_sample_setting_reaches_the_cohort():
    base = {"ckpt": "c", "out": "o"}
    assert read_record(SampleJob, {**base, "layout": "nnunet"}).settings().extra == NNUNET
    assert read_record(SampleJob, base).settings().extra == {}
    with pytest.raises(UserError, match="layout"):
        read_record(SampleJob, {**base, "layout": "monai"})


def test_data_nifti_reads_an_nnunet_cohort_with_its_label_table(tmp_path):
    from medgen.imaging.data import NiftiDataModule

    out = tmp_path / "nn"
    _sample(JointStandIn(), out, n=3, extra=NNUNET)
    dm = NiftiDataModule(
        path=str(out / "dataset.json"), labels=True, spatial_size=8, spacing=(1.5, 1.0, 2.0)
    )
    dm.setup()
    assert dm.data_meta.label_names == NAMES and dm.data_meta.channels == 4
