"""Sampling with the real ``DiffusionModule`` (tiny UNet, 10 timesteps) and the sample config."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from medgen.generation import load_generator, sample_to
from medgen.imaging.api import generate_volumes
from medgen.imaging.data import NiftiDataModule, PhantomDataModule
from medgen.imaging.diffusion import DiffusionModule
from medgen.imaging.samplers import resolve_sampler
from medgen.records import DataMeta
from medgen.utils.provenance import file_sha256

from .helpers import TINY, settings, tiny


def trained_run(tmp_path_factory, name: str, **kw):
    """A run dir with checkpoints/last.ckpt after one training step on 16^3 phantoms."""
    run = tmp_path_factory.mktemp(name)
    torch.manual_seed(0)
    module = DiffusionModule(**TINY, **kw)
    dm = PhantomDataModule(size=16, num_train=2, num_val=1, batch_size=2)
    trainer = pl.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=run,
    )
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(run / "checkpoints" / "last.ckpt")
    (run / "provenance.json").write_text(json.dumps({"config_hash": f"hash-of-{name}"}))
    return run


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return trained_run(tmp_path_factory, "ddpm")
    finally:
        torch.set_num_threads(before)


def _sample(run, out, s, **kw):
    """What ``medgen sample`` does with a checkpoint: the generic loader and driver."""
    generator, ckpt = load_generator(run)
    return sample_to(generator, generator.resolve_settings(s), out=out, checkpoint=ckpt, **kw)


@pytest.mark.parametrize("objective,sampler", [("ddpm", "ddpm"), ("ddpm", "ddim"), ("rflow", None)])
def test_sample_i_is_the_same_alone_or_in_a_batch_of_eight(objective, sampler):
    module = tiny(objective)
    s = settings(sampler=sampler, steps=5, seed=9)
    alone = generate_volumes(module, 8, s, batch_size=1)
    batched = generate_volumes(module, 8, s, batch_size=8)
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=0)
    rerun = generate_volumes(module, 3, s, batch_size=2)
    torch.testing.assert_close(rerun, alone[:3], atol=1e-5, rtol=0)
    assert alone.shape == (8, 1, 8, 8, 8) and alone.abs().max() <= 1.0
    assert not torch.allclose(alone[0], alone[1])


def test_ddim_eta_adds_per_sample_noise():
    module = tiny("ddpm")
    s = settings(sampler="ddim", steps=5, seed=2, eta=0.5)
    x = generate_volumes(module, 3, s, batch_size=3)
    torch.testing.assert_close(generate_volumes(module, 3, s, batch_size=1), x, atol=1e-5, rtol=0)
    assert not torch.allclose(x, generate_volumes(module, 3, s.replace(eta=0.0), batch_size=3))


def test_sampler_and_condition_errors_name_the_value():
    with pytest.raises(ValueError, match="sampler='rflow' does not fit .* 'ddpm' objective"):
        generate_volumes(tiny("ddpm"), 1, settings(sampler="rflow"))
    with pytest.raises(ValueError, match="condition=1: this checkpoint was trained without"):
        generate_volumes(tiny("ddpm"), 1, settings(condition=1))
    with pytest.raises(ValueError, match="steps=20: this model was trained with 10 timesteps"):
        generate_volumes(tiny("ddpm"), 1, settings(sampler="ddim", steps=20))
    with pytest.raises(ValueError, match=r"guidance_scale=2\.0 .*class condition"):
        tiny("ddpm").resolve_settings(settings(guidance_scale=2.0))


def test_every_sampler_is_checked_before_any_output():
    """RFlow's steps are checked up front like the others (resolve_settings, before any folder)."""
    for objective, sampler in (("rflow", "rflow"), ("ddpm", "ddpm"), ("ddpm", "ddim")):
        with pytest.raises(ValueError, match="steps=20: this model was trained with 10 timesteps"):
            tiny(objective).resolve_settings(settings(sampler=sampler, steps=20))
    assert resolve_sampler("rflow", None, None, 10) == ("rflow", 10)
    assert resolve_sampler("ddpm", None, None, 1000) == ("ddim", 50)
    assert resolve_sampler("ddpm", "ddpm", None, 1000) == ("ddpm", 1000)
    with pytest.raises(ValueError, match="steps=0"):
        resolve_sampler("rflow", None, 0, 10)


def test_medgen_sample_writes_a_cohort_that_reads_back(ddpm_run, tmp_path):
    out = tmp_path / "synth"
    summary = _sample(ddpm_run, out, settings(), n=3, batch_size=2)
    assert summary["count"] == 3 and summary["written"] == 3
    run = json.loads((out / "run.json").read_text())
    assert (run["sampler"], run["steps"], run["seed"], run["eta"]) == ("ddim", 10, 0, 0.0)
    ckpt = torch.load(ddpm_run / "checkpoints" / "last.ckpt", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["module"] == "medgen.imaging.diffusion.DiffusionModule"
    meta = DataMeta.from_dict(hp["data_meta"])
    assert (meta.channels, meta.channel_names, meta.units) == (1, ("ct",), "HU")
    for i in range(3):
        img = nib.load(out / "images" / f"sample_{i:05d}.nii.gz")
        np.testing.assert_allclose(img.affine, meta.affine, atol=1e-5)
        np.testing.assert_allclose(img.header.get_zooms(), meta.spacing, rtol=1e-5)
        data = np.asarray(img.dataobj)
        assert data.dtype == np.int16 and data.shape == (16, 16, 16)
        lo, hi = meta.intensity["lo"], meta.intensity["hi"]
        assert lo <= data.min() and data.max() <= hi
        side = json.loads((out / "images" / f"sample_{i:05d}.json").read_text())
        assert side["checkpoint_sha256"] == file_sha256(ddpm_run / "checkpoints" / "last.ckpt")
        assert side["training_config_hash"] == "hash-of-ddpm"
    assert (out / "preview.png").is_file()
    # the same volumes as the Python API (float rounding: at most 1 HU)
    x = generate_volumes(ddpm_run, 3, settings(seed=0), batch_size=3)
    for i in range(3):
        data = np.asarray(nib.load(out / "images" / f"sample_{i:05d}.nii.gz").dataobj)
        assert np.abs(data - np.rint(x[i, 0].numpy() * (hi - lo) / 2 + (hi + lo) / 2)).max() <= 1
    dm = NiftiDataModule(
        path=str(out / "dataset.json"), spatial_size=16, spacing=meta.spacing, val_fraction=0.34
    )
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 3
    assert dm.train_set[0]["image"].shape == (1, 16, 16, 16)
    # a different seed into the same folder is refused
    with pytest.raises(FileExistsError, match="seed: 0 there, 1 now"):
        _sample(ddpm_run, out, settings(seed=1), n=3)


def test_class_conditional_export_records_the_class(tmp_path_factory, tmp_path):
    run = trained_run(tmp_path_factory, "cond", class_conditional=True)
    out = tmp_path / "synth"
    s = settings(sampler="ddim", steps=3, condition="large", guidance_scale=2.0)
    _sample(run, out, s, n=2, preview=False)
    side = json.loads((out / "images" / "sample_00001.json").read_text())
    assert (side["condition"], side["condition_name"], side["guidance_scale"]) == (2, "large", 2.0)
    datalist = json.loads((out / "dataset.json").read_text())
    assert [e["class_label"] for e in datalist["training"]] == [2, 2]


@pytest.mark.slow
def test_medgen_sample_cli_on_two_ranks(ddpm_run, tmp_path, repo_root):
    """The console script with trainer=ddp (Gloo, 2 CPU ranks): n distinct samples, once each."""
    from tests.conftest import run_medgen

    out, n = tmp_path / "synth", 5
    args = ["sample", f"ckpt={ddpm_run}", f"n={n}", "sampler=ddpm", "steps=4", f"out={out}"]
    args += ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "batch_size=2"]
    proc = run_medgen(args, cwd=tmp_path, timeout=300, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sidecars = [json.loads(p.read_text()) for p in (out / "images").glob("sample_*.json")]
    assert sorted(s["index"] for s in sidecars) == list(range(n))
    assert sorted(s["rank"] for s in sidecars) == [0, 0, 0, 1, 1]
    assert len({s["sha256"] for s in sidecars}) == n
    datalist = json.loads((out / "dataset.json").read_text())
    assert datalist["numTraining"] == n
    # rerun of the same command: nothing drawn again, still n files
    proc = run_medgen(args, cwd=tmp_path, timeout=300, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((out / "images").glob("sample_*.nii.gz"))) == n
    assert "drawing 0" in proc.stdout + proc.stderr
