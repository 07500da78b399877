"""Reruns of ``medgen sample`` into a folder that already holds a cohort: a smaller ``n`` is
refused (the cohort files would list more samples than asked for) unless ``overwrite``."""

from __future__ import annotations

import csv
import json

import pytest

from medgen.errors import ConfigError, UserError
from medgen.generation import sample_to
from medgen.imaging.api import export_volumes, generate_volumes

from .helpers import CKPT_SHA, StandIn, cohort_for, settings, temporaries


def _manifest_indices(out) -> list[int]:
    with open(out / "manifest.csv", newline="") as fh:
        return [int(r["index"]) for r in csv.DictReader(fh)]


def _sample(module, out, s, **kw):
    return sample_to(module, s, out=out, checkpoint=out.parent / "ckpt", **kw)


def test_smaller_n_is_refused_unless_overwrite(tmp_path):
    module, out = StandIn(), tmp_path / "synth"
    s = settings(seed=3, steps=2)
    assert _sample(module, out, s, n=6, batch_size=3)["count"] == 6
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=r"holds 6 sample\(s\) .*n=4: pass n>=6 .*overwrite=true"):
        _sample(module, out, s, n=4, batch_size=3)
    # refused before any work: nothing in the folder changed
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # the same or a larger n still resumes / extends
    assert _sample(module, out, s, n=6, batch_size=3)["written"] == 0
    assert _sample(module, out, s, n=8, batch_size=3)["written"] == 2
    assert _manifest_indices(out) == list(range(8))
    # overwrite=true: the folder then holds exactly the n asked for, listed everywhere
    summary = _sample(module, out, s, n=4, batch_size=3, overwrite=True)
    assert summary["written"] == 4 and summary["count"] == 4
    assert _manifest_indices(out) == [0, 1, 2, 3]
    datalist = json.loads((out / "dataset.json").read_text())
    assert datalist["numTraining"] == 4 and len(datalist["training"]) == 4
    assert len(list((out / "images").glob("sample_*.nii.gz"))) == 4


def test_samples_beyond_n_from_a_killed_larger_run_are_counted(tmp_path):
    """A killed run (n=8) that left samples 0, 1 and 6 (two ranks) and a temporary: a rerun with
    n=4 is refused naming the highest index; with n=8 it completes and cleans the temporary."""
    module, out = StandIn(), tmp_path / "synth"
    s = module.resolve_settings(settings(seed=0, steps=2))
    volumes = generate_volumes(module, 3, s, batch_size=3)
    export_volumes(
        volumes, out, meta=module.meta, settings=s, indices=[0, 1, 6],
        checkpoint_sha256=CKPT_SHA, preview=False,
    )  # fmt: skip
    (out / "images" / ".sample_00007.tmp-dead.nii.gz").write_bytes(b"half")
    with pytest.raises(UserError, match=r"holds 3 sample\(s\) \(sample_00000 \.\. sample_00006\)"):
        _sample(module, out, s, n=4)
    summary = _sample(module, out, s, n=8, batch_size=4, preview=False)
    assert summary["written"] == 5 and summary["count"] == 8
    assert temporaries(out) == []


def test_export_logs_what_the_folder_holds(tmp_path, caplog):
    module, out = StandIn(), tmp_path / "synth"
    s = module.resolve_settings(settings(seed=0, steps=2))
    volumes = generate_volumes(module, 3, s, batch_size=3)
    kw = dict(meta=module.meta, settings=s, preview=False)
    export_volumes(volumes, out, **kw)
    caplog.set_level("INFO", logger="medgen.imaging.api")
    export_volumes(volumes[:1], out, **kw)
    assert f"{out} holds 3 samples; 1 given, 0 written (1 already there)" in caplog.text


def test_check_refuses_a_file_name_and_writes_nothing(tmp_path):
    """The cohort's check is read only, before any work: a .csv is no folder for volumes."""
    cohort = cohort_for(StandIn(), tmp_path / "mols.csv")
    with pytest.raises(ConfigError, match=r"^out=.*a folder for the NIfTI volumes"):
        cohort.check(3)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="out="):
        cohort_for(StandIn(), tmp_path / "afile").check(3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
