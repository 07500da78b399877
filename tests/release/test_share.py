"""Privacy of provenance: no training-data path or host name in exported files; share=true."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from medgen import marking
from medgen.imaging.release import describe_source, shareability_problems
from tests.release.volume_helpers import cohort, smooth_volumes, write, write_training_folder


def _texts(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): p.read_text()
        for p in out.rglob("*")
        if p.is_file() and p.suffix in (".json", ".md", ".csv")
    }


@pytest.fixture
def data_folder(tmp_path):
    return write_training_folder(tmp_path / "hospital" / "ct", smooth_volumes(3, seed=2))


def test_a_shared_cohort_names_no_path_and_no_host(tmp_path, data_folder):
    out = tmp_path / "share"
    ckpt = tmp_path / "runs" / "last.ckpt"
    c = cohort(out, source=str(data_folder), share=True, checkpoint=str(ckpt))
    write(c, smooth_volumes(2, seed=4))
    c.finalize(2, preview=False)
    texts = _texts(out)
    assert {"run.json", "dataset.json", "CARD.md", "card.json", "images/sample_00000.json"} <= set(
        texts
    )
    host = socket.gethostname()
    for name, text in texts.items():
        assert str(tmp_path) not in text, name
        assert str(Path.home()) not in text, name
        assert f'"{host}"' not in text and f"@{host}" not in text, name
    assert shareability_problems(out) == []
    run = json.loads(texts["run.json"])
    assert "local" not in run and "host" not in run["provenance"] and run["share"] is True
    assert run["source"] == "nifti folder (3 files)"
    assert run["source_sha256"] == describe_source(str(data_folder))["source_sha256"]
    assert json.loads(texts["dataset.json"])["name"] == f"medgen-nifti-{run['source_sha256'][:8]}"


def test_without_share_only_run_json_keeps_the_local_facts(tmp_path, data_folder):
    out = tmp_path / "local"
    c = cohort(out, source=str(data_folder))
    write(c, smooth_volumes(2, seed=4))
    c.finalize(2, preview=False)
    run = json.loads((out / "run.json").read_text())
    assert run["local"]["source"] == str(data_folder) and run["local"]["host"]
    side = json.loads((out / "images" / "sample_00001.json").read_text())
    assert side["source"] == "nifti folder (3 files)" and "host" not in side
    assert str(tmp_path) not in (out / "dataset.json").read_text()


def test_the_source_hash_follows_the_file_list_not_the_folder(tmp_path, data_folder):
    moved = tmp_path / "moved"
    data_folder.rename(moved)
    assert (
        describe_source(str(moved))["source_sha256"] != describe_source("phantom")["source_sha256"]
    )
    write_training_folder(tmp_path / "other", smooth_volumes(3, seed=2))
    assert describe_source(str(moved)) == describe_source(str(tmp_path / "other"))
    (moved / "train_09.nii.gz").write_bytes(b"")
    assert describe_source(str(moved))["description"] == "nifti folder (4 files)"


def test_a_leak_in_a_shared_cohort_fails_loudly(tmp_path):
    out = tmp_path / "share"
    c = cohort(out, share=True)
    write(c, smooth_volumes(2, seed=4))
    (out / "images" / "extra.json").write_text(json.dumps({"where": str(tmp_path)}))
    with pytest.raises(RuntimeError, match="would leak: images/extra.json"):
        c.finalize(2, preview=False)
    with pytest.raises(ValueError, match="not shareable"):
        marking.assert_shareable({"checkpoint": str(tmp_path / "x.ckpt")}, "run record")
