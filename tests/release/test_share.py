"""Privacy of provenance: no training-data path or host name in exported files; share=true."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
from pathlib import Path
from typing import Any

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


# --- share=true through the CLI entry point: every file the run leaves beside `out` ----------


def _checkpoint(module, path: Path) -> Path:
    """A Lightning-layout checkpoint of ``module`` (plain hyperparameters, state dict)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def _leaks(text: str, where: Path) -> list[str]:
    """What in ``text`` names ``where`` (the test's folder), the home folder or this host."""
    found = [s for s in (str(where), str(Path.home())) if s in text]
    host = socket.gethostname().split(".")[0]
    if re.search(rf"(?<![a-z0-9]){re.escape(host)}(?![a-z0-9])", text, re.I):
        found.append(f"host {host!r}")
    return found


def _written_texts(out_files: list[Path]) -> dict[Path, str]:
    """The text of every file: NIfTI headers (descrip, intent name, extensions), PNG text
    chunks, the rest as UTF-8."""
    import nibabel as nib
    from PIL import Image

    texts = {}
    for path in out_files:
        if path.name.endswith((".nii", ".nii.gz")):
            header: Any = nib.load(path).header
            parts = [bytes(header[k].item()).decode("latin-1") for k in ("descrip", "intent_name")]
            parts += [e.get_content().decode("utf-8", "replace") for e in header.extensions]
            texts[path] = "\n".join(parts)
        elif path.suffix == ".png":
            with Image.open(path) as image:
                texts[path] = json.dumps({str(k): str(v) for k, v in image.info.items()})
        else:
            texts[path] = path.read_text()
    return texts


@pytest.mark.parametrize("out_name", ["mols.csv", "mols.sdf", "cohort"])
def test_medgen_sample_share_true_writes_no_path_or_host(tmp_path, monkeypatch, out_name):
    from medgen.cli import main

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MEDGEN_ROOT", str(work))
    if out_name == "cohort":
        from tests.sampling.helpers import tiny

        ckpt = _checkpoint(tiny(), tmp_path / "site" / "scan" / "checkpoints" / "last.ckpt")
        extra = ["n=2", "steps=2"]
    else:
        from medgen.molecules.module import GraphVAEModule

        network = {"latent_dim": 4, "hidden_dim": 8, "pair_dim": 4}
        vae = GraphVAEModule(vocabulary=["C", "N", "O"], max_atoms=12, network=network)
        ckpt = _checkpoint(vae, tmp_path / "site" / "mol" / "checkpoints" / "last.ckpt")
        extra = ["n=6"]
    out = work / out_name
    assert main(["sample", f"ckpt={ckpt}", f"out={out}", "share=true", *extra]) == 0
    # what the run left outside its (local) log folder under outputs/
    files = [p for p in work.rglob("*") if p.is_file() and "outputs" not in p.parts]
    names = {str(p.relative_to(work)) for p in files}
    if out_name == "cohort":
        expect = {"run.json", "dataset.json", "manifest.csv", "CARD.md", "card.json"}
        expect |= {"images/sample_00000.json", "images/sample_00000.nii.gz", "preview.png"}
        assert {f"cohort/{n}" for n in expect} <= names
    else:
        stem = out_name.split(".")[0]
        expect = {out_name, f"{out_name}.json", f"{stem}.CARD.md", f"{stem}.card.json"}
        assert expect | {f"{out_name}.png"} == names
    for path, text in _written_texts(files).items():
        assert _leaks(text, tmp_path) == [], path
        if path.suffix == ".json":
            assert marking.check_shareable(json.loads(text)) == [], path
    mark = marking.read_mark(out / "images" / "sample_00001.nii.gz" if out.is_dir() else out)
    assert mark is not None and mark["synthetic"] is True and marking.check_shareable(mark) == []
    # the run's own log folder is local (the command line names the checkpoint's path)
    assert str(ckpt) in (next(work.glob("outputs/sample/*/.hydra/overrides.yaml"))).read_text()


def test_export_volumes_share_true_is_the_cli_share(tmp_path, data_folder):
    """``export_volumes(..., share=True)`` writes the shared cohort ``medgen sample share=true``
    writes: no local block, no path (the checkpoint named by its sha256 only)."""
    from medgen.imaging.api import export_volumes
    from medgen.utils.provenance import file_sha256
    from tests.sampling.helpers import data_meta

    ckpt = tmp_path / "runs" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    meta = dataclasses.replace(data_meta(8), source=str(data_folder))
    kw = dict(meta=meta, preview=False, checkpoint=ckpt, generator="tests.Fake")
    export_volumes(smooth_volumes(2, seed=4), tmp_path / "shared", share=True, **kw)
    export_volumes(smooth_volumes(2, seed=4), tmp_path / "local", **kw)
    shared, local = (
        json.loads((tmp_path / n / "run.json").read_text()) for n in ("shared", "local")
    )
    assert shared["share"] is True and "local" not in shared
    assert shared["checkpoint_sha256"] == file_sha256(ckpt) == local["checkpoint_sha256"]
    assert local["local"]["checkpoint"] == str(ckpt.resolve())  # without share: kept on site
    assert shareability_problems(tmp_path / "shared") == []
    assert shareability_problems(tmp_path / "local") != []
    record = marking.read_mark(tmp_path / "shared" / "images" / "sample_00000.nii.gz")
    assert record["generator"] == "tests.Fake" and record["checkpoint_sha256"] == file_sha256(ckpt)
