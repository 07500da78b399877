"""`test=true` reads a real held-out split: disjoint from train and val for every datamodule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medgen.errors import UserError
from medgen.imaging.data import MedMNIST3DDataModule, NiftiDataModule, PhantomDataModule

from .test_data import write_medmnist, write_scan


def _sources(ds) -> set[str]:
    return {ds[i]["source"] for i in range(len(ds))}


def _disjoint(dm) -> tuple[set[str], set[str], set[str]]:
    dm.setup()
    train, val, test = (_sources(d) for d in (dm.train_set, dm.val_set, dm.test_set))
    assert test and not test & train and not test & val and not train & val
    loader = dm.test_dataloader()
    assert loader.dataset is dm.test_set and loader.dataset is not dm.val_set
    return train, val, test


def test_phantom_test_subjects_are_a_third_seed_range():
    dm = PhantomDataModule(size=16, num_train=4, num_val=2, num_test=3, seed=5, cache=False)
    train, val, test = _disjoint(dm)
    assert test == {f"phantom:{5 + 2_000_000 + i}" for i in range(3)}
    assert val == {f"phantom:{5 + 1_000_000 + i}" for i in range(2)}
    assert len(train) == 4


def test_phantom_without_test_subjects_refuses_test():
    dm = PhantomDataModule(size=16, num_train=2, num_val=1, num_test=0)
    with pytest.raises(UserError, match="no test items .*data.num_test"):
        dm.test_dataloader()


def _scans(folder, n):
    for i in range(n):
        write_scan(folder, f"s{i}", label=False)


def test_nifti_folder_is_split_three_ways_by_seed(tmp_path):
    _scans(tmp_path / "scans", 10)
    kw = dict(path=str(tmp_path / "scans"), spatial_size=8, spacing=4.0, val_fraction=0.2)
    train, val, test = _disjoint(NiftiDataModule(**kw, test_fraction=0.2, seed=1))
    assert (len(train), len(val), len(test)) == (6, 2, 2)
    # the seed decides, reproducibly; the validation items do not depend on the test share
    again = _disjoint(NiftiDataModule(**kw, test_fraction=0.2, seed=1))
    assert again == (train, val, test)
    no_test = NiftiDataModule(**kw, test_fraction=0.0, seed=1)
    no_test.setup()
    assert _sources(no_test.val_set) == val and no_test.test_set is None
    with pytest.raises(UserError, match="no test items .*test_fraction"):
        no_test.test_dataloader()


def test_nifti_datalist_test_list_is_used_as_given(tmp_path):
    _scans(tmp_path / "imagesTr", 5)
    doc = {
        "training": [f"imagesTr/s{i}.nii.gz" for i in range(3)],
        "validation": ["imagesTr/s3.nii.gz"],
        "test": ["imagesTr/s4.nii.gz"],  # Decathlon style: image paths only
    }
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    dm = NiftiDataModule(path=str(tmp_path / "dataset.json"), spatial_size=8, spacing=4.0)
    train, val, test = _disjoint(dm)
    assert test == {str((tmp_path / "imagesTr" / "s4.nii.gz").resolve())}
    assert len(train) == 3 and len(val) == 1  # nothing split off a datalist that has both lists


def test_nifti_datalist_without_test_list_splits_one_off_training(tmp_path):
    _scans(tmp_path / "imagesTr", 5)
    doc = {"training": [f"imagesTr/s{i}.nii.gz" for i in range(4)],
           "validation": ["imagesTr/s4.nii.gz"], "test": []}  # fmt: skip
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    dm = NiftiDataModule(path=str(tmp_path / "dataset.json"), spatial_size=8, spacing=4.0)
    train, val, test = _disjoint(dm)
    assert (len(train), len(val), len(test)) == (3, 1, 1)


def test_medmnist_uses_its_own_test_split(tmp_path):
    arrays = write_medmnist(tmp_path / "m.npz")
    dm = MedMNIST3DDataModule(path=str(tmp_path / "m.npz"))
    train, val, test = _disjoint(dm)
    assert all(":test:" in s for s in test) and len(test) == len(arrays["test_images"])
    inner = dm.test_set[1]["image"][0, 2:30, 2:30, 2:30].numpy()
    np.testing.assert_allclose(inner, arrays["test_images"][1] / 127.5 - 1.0, atol=1e-6)
