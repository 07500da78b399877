"""Every user mistake through the real CLI entry point: exit 2, one line naming the key, value or
file, and nothing written (no run folder, no output) — over every task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medgen.cli import main
from medgen.molecules.vae import GraphVAE

MOLECULES = "CCO\nc1ccccc1\nCC(=O)Oc1ccccc1C(=O)O\n"


class NoStereoVAE(GraphVAE):
    """A user's network that takes the default keys but no ``stereo`` argument."""

    def __init__(self, *, capacity, max_atoms, latent_dim=56, hidden_dim=256, encoder_layers=3,
                 pair_dim=64, decoder="graph", masks=None):  # fmt: skip
        super().__init__(capacity=capacity, max_atoms=max_atoms, latent_dim=latent_dim,
                         hidden_dim=hidden_dim, encoder_layers=encoder_layers, pair_dim=pair_dim,
                         decoder=decoder, masks=masks)  # fmt: skip


def _save(module, path: Path) -> Path:
    """A checkpoint in Lightning's layout: plain hyperparameters and a state dict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from medgen.molecules.module import GraphVAEModule
    from tests.sampling.helpers import tiny

    root = tmp_path_factory.mktemp("inputs")
    smi = root / "mols.smi"
    smi.write_text(MOLECULES)
    network = {"latent_dim": 4, "hidden_dim": 8, "pair_dim": 4}
    vae = GraphVAEModule(vocabulary=["C", "N", "O"], max_atoms=12, network=network)
    return {
        "smi": smi,
        "scan": _save(tiny(), root / "scan" / "checkpoints" / "last.ckpt"),
        "mol": _save(vae, root / "mol.ckpt"),
        "text": _write(root / "notes.ckpt", "not a checkpoint\n"),
        "gz": _corrupt_gzip(root / "broken.csv.gz"),
        "dir": root,
    }


def _corrupt_gzip(path: Path) -> Path:
    """A gzipped CSV whose deflate data is damaged (reading it raises ``zlib.error``)."""
    import gzip

    data = bytearray(gzip.compress(b"# medgen-synthetic {}\nsmiles\n" + b"CCO\n" * 1000, mtime=0))
    data[30:60] = bytes(b ^ 0xFF for b in data[30:60])
    path.write_bytes(bytes(data))
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# (task and overrides, a word the one-line message must hold); {scan}, {mol}, {smi}, {text},
# {gz} name the fixture files, {dir} their folder, {tmp} this test's empty folder
CASES: list[tuple[str, str]] = [
    # medgen sample
    ("sample out={tmp}/o", "ckpt is required"),
    ("sample ckpt={scan}", "out is required"),
    ("sample ckpt={scan} out={tmp}/o n=-3", "n=-3"),
    ("sample ckpt={scan} out={tmp}/o n=0", "n=0"),
    ("sample ckpt={scan} out={tmp}/o n=2.7", "n=2.7"),
    ("sample ckpt={scan} out={tmp}/o n=abc", "n='abc'"),
    ("sample ckpt={scan} out={tmp}/o seed=-1", "seed=-1"),
    ("sample ckpt={scan} out={tmp}/o seed=1.5", "seed=1.5"),
    ("sample ckpt={scan} out={tmp}/o batch_size=0", "batch_size=0"),
    ("sample ckpt={scan} out={tmp}/o use_ema=maybe", "use_ema='maybe'"),
    ("sample ckpt={scan} out={tmp}/o overwrite=yes", "overwrite='yes'"),
    ("sample ckpt={scan} out={tmp}/o preview=1", "preview=1"),
    ("sample ckpt={scan} out={tmp}/o preview_labels=both", "preview_labels='both'"),
    ("sample ckpt={scan} out={tmp}/o sampler=foo", "sampler='foo'"),
    ("sample ckpt={scan} out={tmp}/o steps=0", "steps=0"),
    ("sample ckpt={scan} out={tmp}/o steps=2.5", "steps=2.5"),
    ("sample ckpt={scan} out={tmp}/o steps=1000", "steps=1000"),
    ("sample ckpt={scan} out={tmp}/o sampler=rflow", "sampler='rflow'"),
    ("sample ckpt={scan} out={tmp}/o guidance_scale=-1", "guidance_scale=-1"),
    ("sample ckpt={scan} out={tmp}/o guidance_scale=abc", "guidance_scale='abc'"),
    ("sample ckpt={scan} out={tmp}/o guidance_scale=2.0", "guidance_scale=2.0"),
    ("sample ckpt={scan} out={tmp}/o condition=3", "condition=3"),
    ("sample ckpt={scan} out={tmp}/o temperature=0.5", "temperature=0.5"),
    ("sample ckpt={scan} out={tmp}/mols.csv", "out="),
    ("sample ckpt={mol} out={tmp}/o", "out="),
    ("sample ckpt={mol} out={tmp}/m.csv sampler=ddim", "sampler='ddim'"),
    ("sample ckpt={mol} out={tmp}/m.csv temperature=-0.5", "temperature=-0.5"),
    ("sample ckpt={mol} out={tmp}/m.csv latent_prior=gmm", "latent_prior"),
    ("sample ckpt={mol} out={tmp}/m.csv latent_prior=fitted", "holds no latent prior"),
    ("sample ckpt={scan} out={tmp}/o latent_prior=normal", "auto for a scan model"),
    ("sample ckpt={mol} out={tmp}/m.csv shift=3.0", "shift=3.0"),
    ("sample ckpt={scan} out={tmp}/o shift=0", "shift=0"),
    ("sample ckpt={mol} out={tmp}/missing/m.csv", "missing"),
    ("sample ckpt={tmp}/nope.ckpt out={tmp}/o", "nope.ckpt"),
    ("sample ckpt={text} out={tmp}/o", "notes.ckpt"),
    ("sample ckpt={scan} out={tmp}/o bogus=1", "bogus"),
    # medgen sample: the release keys (docs/release.md)
    ("sample ckpt={scan} out={tmp}/o share=maybe", "share='maybe'"),
    ("sample ckpt={scan} out={tmp}/o audit=maybe", "audit='maybe'"),
    ("sample ckpt={scan} out={tmp}/o audit=true", "audit_train=<"),  # no training data here
    ("sample ckpt={scan} out={tmp}/o audit=true audit_train={tmp}/nope", "audit_train="),
    ("sample ckpt={scan} out={tmp}/o allow_memorized=true", "allow_memorized=True"),
    ("sample ckpt={scan} out={tmp}/o evaluation={tmp}/nope.json", "nope.json"),
    ("sample ckpt={mol} out={tmp}/m.csv audit=true", "audit=True"),
    ("sample ckpt={mol} out={tmp}/m.csv preview_labels=rows", "preview_labels='rows'"),
    ("train callbacks.scan_preview.labels=both", "callbacks.scan_preview.labels='both'"),
    ("train model=graph_vae data=smiles callbacks.molecule_sampling.n_fcd=1", "n_fcd=1"),
    ("sample ckpt={mol} out={tmp}/m.csv novel_only=maybe", "novel_only='maybe'"),
    ("sample ckpt={mol} out={tmp}/m.csv novel_only=true", "train_smiles="),  # no training set
    ("sample ckpt={scan} out={tmp}/o novel_only=true", "novel_only=True"),
    ("sample ckpt={mol} out={tmp}/m.csv dualuse=sometimes", "dualuse='sometimes'"),
    ("sample ckpt={scan} out={tmp}/o dualuse=false", "dualuse=False"),
    ("sample ckpt={mol} out={tmp}/m.csv train_smiles={tmp}/nope.smi", "nope.smi"),
    ("sample ckpt={scan} out={tmp}/o layout=bogus", "layout='bogus'"),
    ("sample ckpt={scan} out={tmp}/o layout=nnunet", "layout='nnunet'"),  # no label maps
    ("sample ckpt={mol} out={tmp}/m.csv layout=nnunet", "layout='nnunet'"),
    # medgen screen
    ("screen out={tmp}/o.csv", "input is required"),
    ("screen input={smi}", "out is required"),
    ("screen input={tmp}/nope.smi out={tmp}/o.csv", "nope.smi"),
    ("screen input={smi} out={tmp}/o.csv limit=-1", "limit=-1"),
    ("screen input={smi} out={tmp}/o.csv limit=0", "limit=0"),
    ("screen input={smi} out={tmp}/o.csv dedup=no", "dedup='no'"),
    ("screen input={smi} out={tmp}/o.csv top_k=-1", "top_k=-1"),
    ("screen input={smi} out={tmp}/o.csv chunk_size=-5", "chunk_size=-5"),
    ("screen input={smi} out={tmp}/o.csv chunk_size=0", "chunk_size=0"),
    ("screen input={smi} out={tmp}/o.csv properties=[bogus]", "bogus"),
    ("screen input={smi} out={tmp}/o.csv rules=[lipinsky]", "lipinsky"),
    ("screen input={smi} out={tmp}/o.csv ranges=[qed]", "qed"),
    ("screen input={smi} out={tmp}/o.csv n_jobs=0", "n_jobs=0"),
    ("screen input={smi} out={tmp}/o.csv descending=maybe", "descending='maybe'"),
    ("screen input={smi} out={tmp}/o.csv progress=2", "progress=2"),
    ("screen input={smi} out={tmp}/missing/o.csv", "missing"),
    ("screen input={smi} out={tmp}", "out="),
    ("screen input={smi} out={tmp}/o.csv keep_run=maybe", "keep_run='maybe'"),
    ("screen input={smi} out={tmp}/o.csv dualuse=maybe", "dualuse='maybe'"),
    # medgen evaluate
    ("evaluate", "samples is required"),
    ("evaluate samples={tmp}/nope.smi", "nope.smi"),
    ("evaluate samples={smi} limit=0", "limit=0"),
    ("evaluate samples={smi} k=[0]", "k[0]=0"),
    ("evaluate samples={smi} k=abc", "k='abc'"),
    ("evaluate samples={smi} n_jobs=-1", "n_jobs=-1"),
    ("evaluate samples={smi} batch_size=0", "batch_size=0"),
    ("evaluate samples={smi} guacamol=maybe", "guacamol='maybe'"),
    ("evaluate samples={smi} kl_size=0", "kl_size=0"),
    ("evaluate samples={smi} reference={tmp}/nope.smi", "nope.smi"),
    ("evaluate samples={smi} train={tmp}/nope.smi", "nope.smi"),
    ("evaluate samples={smi} out={smi}", "overwrite"),
    ("evaluate samples={smi} keep_run=2", "keep_run=2"),
    # medgen inspect
    ("inspect", "path is required"),
    ("inspect {tmp}/nope.csv", "nope.csv"),
    ("inspect {dir}", "a folder, not a file"),
    ("inspect {text}", "notes.ckpt"),  # not a kind of file medgen marks
    ("inspect {gz}", "broken.csv.gz: corrupt gzip data"),  # unreadable
    ("inspect path={smi} json=maybe", "json='maybe'"),
    # medgen data
    ("data", "dataset is required"),
    ("data zinc", "dataset='zinc'"),
    # medgen train: its own keys, the trainer's, the model's and the data's
    ("train seed=abc", "seed='abc'"),
    ("train seed=-1", "seed=-1"),
    ("train train=maybe", "train='maybe'"),
    ("train test=1", "test=1"),
    ("train train=false", "ckpt_path"),
    ("train ckpt_path={tmp}/nope.ckpt", "nope.ckpt"),
    ("train ckpt_path={mol}", "graph_vae"),
    ("train trainer.max_epochs=-5", "trainer.max_epochs=-5"),
    ("train trainer.max_steps=-2", "trainer.max_steps=-2"),
    ("train trainer.devices=abc", "trainer.devices='abc'"),
    ("train trainer.accelerator=quantum", "trainer.accelerator='quantum'"),
    ("train trainer.precision=8", "trainer.precision=8"),
    ("train trainer.limit_train_batches=1.5", "trainer.limit_train_batches=1.5"),
    ("train trainer.limit_val_batches=-1", "trainer.limit_val_batches=-1"),
    ("train trainer.log_every_n_steps=0", "trainer.log_every_n_steps=0"),
    ("train trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0"),
    ("train trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1"),
    ("train trainer=tpu_pod", "tpu_pod"),
    ("train model.optimizer.lr=abc", "model.optimizer.lr='abc'"),
    ("train model.optimizer.lr=0", "model.optimizer.lr=0"),
    ("train model.network.channels=[16,30]", "model.network.channels"),
    ("train model.scheduler.num_train_timesteps=0", "model.scheduler.num_train_timesteps=0"),
    ("train model.ema_decay=1.0", "model.ema_decay=1.0"),
    ("train model.cond_drop_prob=1.5", "model.cond_drop_prob=1.5"),
    ("train model.scheduler.schedule=bogus", "model.scheduler.schedule='bogus'"),
    ("train model/scheduler=bogus", "bogus"),
    ("train model.network.use_flash_attention=maybe", "model.network.use_flash_attention='maybe'"),
    ("train callbacks.scan_preview.steps=0", "callbacks.scan_preview.steps=0"),
    ("train model=graph_vae data=smiles callbacks.molecule_sampling.n_samples=-1", "n_samples=-1"),
    ("train +model.foo=1", "foo"),
    ("train model=graph_vae data=smiles model.network.latent_dim=0", "model.network.latent_dim=0"),
    ("train model=graph_vae data=smiles model.free_bits=-1", "model.free_bits=-1"),
    ("train model=graph_vae data=smiles data.val_fraction=1.5", "val_fraction"),
    ("train model=graph_vae data=phantom", "trains on molecules"),
    ("train model=ddpm3d data=smiles", "trains on scans"),
    ("train model=autoencoder3d data=smiles", "trains on scans"),
    (
        "train model=graph_vae data=smiles data.stereo=true "
        "model.network._target_=tests.spine.test_bad_settings.NoStereoVAE",
        "no 'stereo'",
    ),
    ("train model=graph_vae data=smiles data.stereo=false model.stereo=true", "data.stereo=True"),
    ("train data.size=7", "data.size"),
    ("train data.num_train=0", "data.num_train"),
    ("train data.batch_size=0", "data.batch_size=0"),
]


@pytest.mark.parametrize("case,needle", CASES, ids=[c for c, _ in CASES])
def test_user_mistake_is_one_line_exit_2_nothing_written(
    case, needle, files, tmp_path, monkeypatch, capfd
):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MEDGEN_ROOT", str(work))
    monkeypatch.setenv("MEDGEN_DATA_DIR", str(work / "data"))
    names = {k: str(v) for k, v in files.items()} | {"tmp": str(work)}
    args = case.format(**names).split()
    before = sorted(p.name for p in files["dir"].rglob("*"))

    code = main(args)

    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith(f"medgen {args[0]}: error: "), err
    assert needle.format(**names) in err[0], err
    assert list(work.iterdir()) == [], list(work.rglob("*"))  # no run folder, no output
    assert sorted(p.name for p in files["dir"].rglob("*")) == before  # inputs untouched


def test_bool_words_hydra_reads_as_bools_are_accepted(tmp_path, monkeypatch):
    """``true``/``false`` (any case Hydra parses) are booleans; only words like maybe are not."""
    from medgen.tasks.checks import SampleJob
    from medgen.utils.validate import read_record

    job = read_record(SampleJob, {"ckpt": "c", "out": "o", "use_ema": False, "overwrite": True})
    assert job.use_ema is False and job.overwrite is True and job.n == 16


def test_verbose_true_shows_the_traceback_too(files, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDGEN_ROOT", str(tmp_path))
    code = main(["sample", f"ckpt={files['scan']}", f"out={tmp_path}/o", "n=-3", "verbose=true"])
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" in err and err.strip().endswith("an integer >= 1")


def test_error_found_inside_the_job_removes_the_run_folder(files, tmp_path, monkeypatch, capfd):
    """A mistake only the running task can see (here: a corrupt sidecar next to ``out``) still
    leaves no run folder: Hydra's own files are removed with it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDGEN_ROOT", str(tmp_path))
    out = tmp_path / "m.csv"
    out.write_text("index,seed,smiles\n")
    (tmp_path / "m.csv.json").write_text("{not json")
    code = main(["sample", f"ckpt={files['mol']}", f"out={out}", "n=2"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and "corrupt" in err[-1] and "m.csv.json" in err[-1]
    assert not (tmp_path / "outputs").exists()
    assert out.read_text() == "index,seed,smiles\n"
