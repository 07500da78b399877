"""The memorization gate: a planted copy of a training volume stops finalization."""

from __future__ import annotations

import json

import pytest
import torch

from medgen.errors import UserError
from tests.release.volume_helpers import cohort, smooth_volumes, write, write_training_folder


@pytest.fixture
def training(tmp_path):
    volumes = smooth_volumes(6, seed=5)
    return volumes, write_training_folder(tmp_path / "train", volumes)


def _samples(train_volumes: torch.Tensor) -> torch.Tensor:
    fresh = -smooth_volumes(2, seed=9)  # anti-correlated with the training pattern: far from all
    planted = train_volumes[3:4].clone()  # an exact training volume
    return torch.cat([fresh[:1], planted, fresh[1:]])


def test_a_planted_training_copy_stops_finalization(tmp_path, training):
    volumes, folder = training
    out = tmp_path / "synth"
    c = cohort(out, audit=True, audit_train=str(folder))
    write(c, _samples(volumes))
    with pytest.raises(UserError, match=r"1 of 3 samples .*sample_00001 \(NN distance ratio 0\.0"):
        c.finalize(3, preview=False)
    assert not (out / "dataset.json").exists() and not (out / "manifest.csv").exists()
    assert not (out / "CARD.md").exists()
    audit = json.loads((out / "audit.json").read_text())
    assert [n["sample"] for n in audit["flagged"]] == ["sample_00001"]
    assert audit["flagged"][0]["train"] == "train_03.nii.gz"  # relative to the folder
    side = json.loads((out / "images" / "sample_00001.json").read_text())
    assert side["memorization"]["flagged"] is True
    assert (
        json.loads((out / "images" / "sample_00000.json").read_text())["memorization"]["flagged"]
        is False
    )


def test_allow_memorized_finalizes_and_the_card_says_so(tmp_path, training):
    volumes, folder = training
    out = tmp_path / "synth"
    c = cohort(out, audit=True, allow_memorized=True, audit_train=str(folder))
    write(c, _samples(volumes))
    summary = c.finalize(3, preview=False)
    assert summary["audit"]["flagged"][0]["sample"] == "sample_00001"
    card = json.loads((out / "card.json").read_text())["sections"]["Memorization audit"]
    assert card["flagged samples"] == ["sample_00001"]
    assert card["finalized despite flags (allow_memorized)"] is True


def test_fresh_samples_pass_the_audit(tmp_path, training):
    volumes, folder = training
    c = cohort(tmp_path / "synth", audit=True, audit_train=str(folder))
    write(c, -smooth_volumes(3, seed=9))
    summary = c.finalize(3, preview=False)
    assert summary["audit"]["run"] is True and summary["audit"]["flagged"] == []
    assert "CARD.md" in summary["card"]


def test_audit_without_training_data_names_the_key(tmp_path):
    with pytest.raises(UserError, match="audit=true needs the training data.*audit_train="):
        cohort(tmp_path / "synth", audit=True, source=str(tmp_path / "gone")).check(2)
    with pytest.raises(UserError, match="audit_train="):
        cohort(tmp_path / "synth", audit=True, audit_train=str(tmp_path / "nowhere")).check(2)


def test_export_volumes_runs_the_same_gate(tmp_path, training):
    """``export_volumes(..., audit=True)``: the gate of ``medgen sample audit=true``."""
    from medgen.errors import ConfigError
    from medgen.imaging.api import export_volumes
    from tests.sampling.helpers import data_meta

    volumes, folder = training
    kw = dict(meta=data_meta(8), preview=False, checkpoint_sha256="0" * 64)
    out = tmp_path / "api"
    with pytest.raises(UserError, match=r"1 of 3 samples .*sample_00001"):
        export_volumes(_samples(volumes), out, audit=True, audit_train=str(folder), **kw)
    assert not (out / "dataset.json").exists() and (out / "audit.json").is_file()
    export_volumes(_samples(volumes), out, audit=True, allow_memorized=True,
                   audit_train=str(folder), **kw)  # fmt: skip
    card = json.loads((out / "card.json").read_text())["sections"]["Memorization audit"]
    assert card["flagged samples"] == ["sample_00001"]
    # the settings checks of medgen sample, before anything is written
    for bad, match in (
        (dict(allow_memorized=True), "allow_memorized=True is not allowed"),
        (dict(audit=True), "audit=true needs the training data"),
        (dict(audit=True, audit_train=str(tmp_path / "nowhere")), "audit_train="),
        (dict(evaluation=str(tmp_path / "e.json")), "evaluation=.*e.json"),
        (dict(checkpoint=str(tmp_path / "gone.ckpt")), "checkpoint=.*gone.ckpt"),
        (dict(share="yes"), "share='yes'"),
    ):
        with pytest.raises(UserError, match=match):
            export_volumes(_samples(volumes), tmp_path / "never", **kw, **bad)
        assert not (tmp_path / "never").exists()
    assert issubclass(ConfigError, UserError)
