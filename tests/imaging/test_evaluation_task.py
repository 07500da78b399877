"""``medgen evaluate`` for volumes: every source form reads back, the task runs through the CLI
entry point and writes its table, JSON and PNG, and every mistake is one line with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medgen.cli import main
from medgen.errors import InputFileError, MissingFileError
from medgen.imaging.evaluation.loading import SourceKind, load_volumes, source_kind
from medgen.imaging.intensity import IntensityMapping
from tests.imaging.evaluation_helpers import phantom_set


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, object]:
    """A medgen cohort folder of 5 labelled 16^3 phantoms (validation seeds), and the set."""
    from medgen.imaging.api import export_volumes
    from medgen.imaging.data import PhantomDataModule
    from medgen.imaging.phantom import LABEL_NAMES

    meta = PhantomDataModule(size=16).data_meta
    vs = phantom_set(range(1_000_000, 1_000_005))
    out = tmp_path_factory.mktemp("inputs") / "cohort"
    export_volumes(
        vs.images, out, meta=meta, labels=vs.labels, label_names=LABEL_NAMES, preview=False
    )
    return out, vs


def test_a_cohort_folder_and_its_datalist_read_back(cohort):
    folder, vs = cohort
    assert source_kind(folder) == SourceKind.FOLDER
    a = load_volumes(folder, name="samples", intensity=IntensityMapping(), progress=False)
    assert a.ids[0] == "images/sample_00000.nii.gz" and len(a) == 5 and a.units == "HU"
    # int16 HU on disk (0.5 HU rounding) and the synthetic stamp (1 HU in the first 64 voxels)
    assert torch.allclose(a.images, vs.images, atol=2.1e-3)
    assert torch.equal(a.labels, vs.labels) and a.label_names[8] == "liver"
    assert a.spacing == pytest.approx(vs.spacing)
    b = load_volumes(
        folder / "dataset.json", name="samples", intensity=IntensityMapping(), progress=False
    )
    assert torch.equal(a.images, b.images) and a.keys == b.keys and torch.equal(a.labels, b.labels)
    # another mapping gives other cache keys (features depend on the mapping)
    c = load_volumes(folder, name="samples", intensity=IntensityMapping(lo=-500.0), progress=False)
    assert set(c.keys).isdisjoint(a.keys)


def test_a_data_config_follows_the_samples_geometry(cohort):
    folder, _ = cohort
    samples = load_volumes(folder, name="samples", intensity=IntensityMapping(), progress=False)
    ref = load_volumes("phantom", name="reference", intensity=IntensityMapping(), like=samples)
    assert ref.shape == (16, 16, 16) and len(ref) == 5  # as many as the samples
    assert ref.spacing == pytest.approx(samples.spacing) and ref.ids[0] == "phantom:2000000"
    train = load_volumes(
        "phantom", name="train", intensity=IntensityMapping(), like=samples,
        data_args={"num_train": 3},
    )  # fmt: skip
    assert train.ids == ["phantom:0", "phantom:1", "phantom:2"] and train.labels is not None


def test_sets_of_another_shape_or_nothing_are_named(tmp_path, cohort):
    import nibabel as nib
    import numpy as np

    folder, _ = cohort
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name, size in (("a.nii.gz", 16), ("b.nii.gz", 12)):
        nib.save(nib.Nifti1Image(np.zeros((size,) * 3, np.int16), np.eye(4)), mixed / name)
    with pytest.raises(InputFileError, match="b.nii.gz"):
        load_volumes(mixed, name="samples", intensity=IntensityMapping(), progress=False)
    with pytest.raises(MissingFileError, match="reference=nowhere"):
        load_volumes("nowhere", name="reference", intensity=IntensityMapping())


def test_medgen_evaluate_volumes_writes_table_json_and_png(cohort, tmp_path, monkeypatch, capfd):
    folder, _ = cohort
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDGEN_ROOT", str(tmp_path))
    monkeypatch.setenv("MEDGEN_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "evaluation"
    args = [
        "evaluate", f"samples={folder}", "reference=phantom", "train=phantom",
        "data_args={num_train:6}", "encoder_steps=3", "tstr=true", "tstr_steps=2",
        f"out={out}", "progress=false",
    ]  # fmt: skip
    assert main(args) == 0, capfd.readouterr().err
    record = json.loads((out / "evaluation.json").read_text())
    assert record["sets"]["samples"]["n"] == 5 and record["sets"]["train"]["n"] == 6
    assert record["metrics"]["fidelity/frechet"] >= 0.0
    assert record["details"]["tstr"]["dice_synthetic"] is not None
    assert record["provenance"]["medgen_version"] and record["config"]["extractor"] == "encoder"
    assert record["samples_run"]["checkpoint_sha256"] is None  # exported, not sampled
    assert (out / "evaluation.png").stat().st_size > 10_000
    assert any((tmp_path / "data" / "cache" / "evaluation").glob("features-encoder-*.pt"))
    logged = capfd.readouterr()
    assert "fidelity/frechet" in logged.out + logged.err  # the table is logged


# (overrides after samples={cohort}, a word the one-line message must hold)
CASES = [
    ("", "reference='moses'"),
    ("reference=phantom encoder_steps=0", "encoder_steps=0"),
    ("reference=phantom extractor=bogus", "extractor='bogus'"),
    ("reference=phantom extractor=resnet3d", "weights"),
    ("reference=phantom extractor=resnet3d weights={tmp}/nope.pth", "nope.pth"),
    ("reference=phantom resnet_depth=12", "resnet_depth=12"),
    ("reference=phantom extractor=slices2d weights={cohort}/run.json resnet_depth=10", "slices2d"),
    ("reference={tmp}/nowhere", "nowhere"),
    ("reference={tmp}/missing.json", "missing.json"),
    ("reference=phantom train=phantom data_args={{size:7}}", "data_args.size"),
    ("reference=phantom data_args={{bogus:1}}", "bogus"),
    ("reference=phantom data_args=abc", "data_args='abc'"),
    ("reference=phantom memorization_percentile=0", "memorization_percentile=0"),
    ("reference=phantom tstr=maybe", "tstr='maybe'"),
    ("reference=phantom max_pairs=0", "max_pairs=0"),
    ("reference=phantom intensity_lo=10 intensity_hi=0", "intensity_hi"),
    ("reference=phantom intensity=hu", "intensity='hu'"),
    ("reference=phantom out={cohort}", "samples folder"),
    ("reference=phantom out={tmp}/e.json", "out="),
    ("reference=phantom train=moses", "train='moses'"),
    ("reference=phantom volume_batch_size=-1", "volume_batch_size=-1"),
    ("reference=smiles", "not a source of scans"),
]


@pytest.mark.parametrize("case,needle", CASES, ids=[c or "default-reference" for c, _ in CASES])
def test_volume_mistake_is_one_line_exit_2_nothing_written(
    case, needle, cohort, tmp_path, monkeypatch, capfd
):
    folder, _ = cohort
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MEDGEN_ROOT", str(work))
    monkeypatch.setenv("MEDGEN_DATA_DIR", str(work / "data"))
    names = {"tmp": str(work), "cohort": str(folder)}
    args = ["evaluate", f"samples={folder}", *case.format(**names).split()]
    before = sorted(p.name for p in folder.rglob("*"))
    code = main(args)
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("medgen evaluate: error: "), err
    assert needle.format(**names) in err[0], err
    assert list(work.iterdir()) == [], list(work.rglob("*"))
    assert sorted(p.name for p in folder.rglob("*")) == before
