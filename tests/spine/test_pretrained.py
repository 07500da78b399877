"""Shipped models (``ckpt=pretrained:<name>``): the registry and its files agree, names resolve,
sha256 is checked on load, slimmed checkpoints load ``weights_only`` and sample as the EMA weights
of the training checkpoint they came from, and every shipped model's samples are sound."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from medgen import pretrained
from medgen.cli import main, task_help
from medgen.errors import ConfigError, InputFileError, UserError
from medgen.generation import generate, load_generator
from medgen.pretrained import available, entry, read_registry, resolve
from medgen.pretrained.slim import KEY, ema_copies, make_pretrained, parse_metrics
from medgen.pretrained.slim import main as slim_main
from medgen.records import SampleSettings
from medgen.utils.checkpoint import resolve_checkpoint
from medgen.utils.provenance import file_sha256

SHIPPED_DIR = Path(pretrained.__file__).resolve().parent
REPO = Path(__file__).resolve().parents[2]
SHIPPED = available()  # the models in this checkout's registry (none until trained ones land)
SETTINGS = SampleSettings(seed=3, steps=4)


# ---------------------------------------------------------------------------- shipped models


def test_the_shipped_registry_and_its_files_agree(monkeypatch):
    """Every entry has its file with the recorded sha256 and size, and every file an entry: with
    no model shipped yet both sets are empty, and the sampling test below has no cases."""
    monkeypatch.delenv(pretrained.DIR_ENV, raising=False)
    entries = read_registry()
    assert json.loads((SHIPPED_DIR / "registry.json").read_text())["format"] == 1
    assert {e.file for e in entries.values()} == {p.name for p in SHIPPED_DIR.glob("*.ckpt")}
    assert [e.name for e in SHIPPED] == sorted(entries)
    for name, found in entries.items():
        path = SHIPPED_DIR / found.file
        assert found.file == f"{name}.ckpt" and pretrained.NAME.match(name)
        assert path.stat().st_size == found.size_bytes <= 10_000_000
        assert file_sha256(path) == found.sha256
        assert (REPO / found.experiment).is_dir(), found.experiment
        assert found.output in ("volumes", "molecules") and found.metrics


def test_each_shipped_model_draws_sound_samples(monkeypatch):
    """Every model the registry lists (the agreement test above checks the list against the
    files) loads weights_only and draws valid molecules / volumes in range."""
    monkeypatch.delenv(pretrained.DIR_ENV, raising=False)
    for found in SHIPPED:
        raw = torch.load(resolve(found.name), map_location="cpu", weights_only=True)
        assert KEY in raw and "optimizer_states" not in raw
        # diffusion models take a step count; molecule models refuse one
        settings = SampleSettings(seed=0, steps=10 if found.output == "volumes" else None)
        items = generate(f"pretrained:{found.name}", 4, settings).items
        if found.output == "volumes":
            assert items.ndim == 5 and len(items) == 4 and torch.isfinite(items).all()
            assert items.min() >= -1.0 and items.max() <= 1.0 and items.std() > 0.05
        else:
            from medgen.chem.mol import parse_smiles

            assert len(items) == 4 and all(s and parse_smiles(s) is not None for s in items)


# ------------------------------------------------------------------- tiny models made here


@pytest.fixture(scope="module")
def scan_run(tmp_path_factory) -> Path:
    """A Lightning checkpoint (optimizer, loops, EMA) of a tiny DiffusionModule after 2 steps."""
    from medgen.imaging.data import PhantomDataModule
    from medgen.imaging.diffusion import DiffusionModule
    from tests.sampling.helpers import TINY

    run = tmp_path_factory.mktemp("scan_run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        trainer = pl.Trainer(
            max_steps=2,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=run,
        )
        dm = PhantomDataModule(size=16, num_train=2, num_val=1, batch_size=2)
        kwargs: dict[str, Any] = dict(TINY)
        trainer.fit(DiffusionModule(**kwargs), datamodule=dm)
        trainer.save_checkpoint(run / "checkpoints" / "last.ckpt")
    finally:
        torch.set_num_threads(threads)
    (run / "provenance.json").write_text(json.dumps({"git_commit": "abc123"}))
    return run


@pytest.fixture(scope="module")
def molecule_ckpt(tmp_path_factory) -> Path:
    """A tiny graph VAE in Lightning's layout, with an Adam state as training leaves it."""
    from medgen.molecules.module import GraphVAEModule

    torch.manual_seed(0)
    module = GraphVAEModule(
        vocabulary=["C", "N", "O"],
        max_atoms=12,
        network={"latent_dim": 8, "hidden_dim": 16, "pair_dim": 8},
    )
    opt = torch.optim.Adam(module.parameters())
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    path = tmp_path_factory.mktemp("vae") / "last.ckpt"
    torch.save(
        {
            "epoch": 0,
            "global_step": 1,
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "optimizer_states": [opt.state_dict()],
            "loops": {"fit_loop": {}},
        },
        path,
    )
    return path


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """A temporary registry folder (``$MEDGEN_PRETRAINED_DIR``) and an experiment folder."""
    folder = tmp_path / "models"
    monkeypatch.setenv(pretrained.DIR_ENV, str(folder))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments" / "tiny").mkdir(parents=True)
    return folder


def ship(source: Path, name: str, **kw) -> pretrained.Entry:
    args: dict[str, Any] = dict(experiment="experiments/tiny", description="tiny test model",
                                hardware="test CPU", data_licence="synthetic")  # fmt: skip
    return make_pretrained(source, name, **{**args, "metrics": {"val/loss": 0.5}, **kw})


def test_a_slimmed_scan_model_is_smaller_and_samples_as_its_ema_weights(scan_run, store):
    source = scan_run / "checkpoints" / "last.ckpt"
    found = ship(scan_run, "tiny")
    path = store / "tiny.ckpt"
    assert resolve("tiny") == path == resolve_checkpoint("pretrained:tiny")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict", "hyper_parameters", KEY}  # no optimizer, loops, callbacks
    assert not [k for k in raw["state_dict"] if k.startswith("ema.module.")]
    assert raw[KEY]["copies"] == {"ema.module.": "unet."}
    assert found.size_bytes == path.stat().st_size < source.stat().st_size / 2
    assert read_registry(store)["tiny"].sha256 == found.sha256 == file_sha256(path)
    assert found.source_sha256 == file_sha256(source) and found.commit == "abc123"
    assert found.kind == "diffusion3d" and found.output == "volumes" and found.global_step == 2

    original, _ = load_generator(scan_run)
    shipped, file = load_generator("pretrained:tiny")
    assert file == path and found.parameters == sum(
        v.numel() for v in original.unet.state_dict().values()
    )
    ema = original.ema.module.state_dict()
    for key, value in shipped.unet.state_dict().items():  # the EMA weights became the network's
        assert torch.equal(value, ema[key]), key
    assert any(not torch.equal(v, ema[k]) for k, v in original.unet.state_dict().items())
    expected = generate(original, 2, SETTINGS).items  # use_ema=True: what sampling uses
    torch.testing.assert_close(generate("pretrained:tiny", 2, SETTINGS).items, expected,
                               atol=0, rtol=0)  # fmt: skip
    raw_ema = generate(original, 2, SETTINGS.replace(use_ema=False)).items
    assert not torch.allclose(raw_ema, expected, atol=1e-7, rtol=0)


def test_float16_storage_halves_the_file_and_loads_float32(scan_run, store):
    full = ship(scan_run, "tiny")
    half = ship(scan_run, "tiny16", float16=True)
    assert half.storage_dtype == "float16" and half.size_bytes < 0.6 * full.size_bytes
    assert sorted(read_registry(store)) == ["tiny", "tiny16"]
    a, _ = load_generator("pretrained:tiny")
    b, _ = load_generator("pretrained:tiny16")
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert y.dtype == x.dtype
        if x.is_floating_point():
            torch.testing.assert_close(y, x, atol=1e-3, rtol=1e-3, msg=key)
    torch.testing.assert_close(
        generate(b, 2, SETTINGS).items, generate(a, 2, SETTINGS).items, atol=0.02, rtol=0
    )


def test_a_slimmed_molecule_model_loads_everywhere_a_checkpoint_does(molecule_ckpt, store):
    from medgen.molecules.api import MoleculeVAE
    from medgen.molecules.module import GraphVAEModule

    found = ship(molecule_ckpt, "mol", data_licence="MIT (MOSES)")
    assert found.output == "molecules" and found.kind == "graph_vae"
    raw = torch.load(store / "mol.ckpt", map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict", "hyper_parameters", KEY} and raw[KEY]["copies"] == {}
    assert found.size_bytes < molecule_ckpt.stat().st_size / 2  # Adam's two moments are gone
    settings = SampleSettings(seed=1)
    expected = generate(molecule_ckpt, 6, settings).items
    assert generate("pretrained:mol", 6, settings).items == expected
    vae = MoleculeVAE.from_checkpoint("pretrained:mol")
    assert vae.sample(6, seed=1) == MoleculeVAE.from_checkpoint(molecule_ckpt).sample(6, seed=1)
    assert isinstance(load_generator("pretrained:mol")[0], GraphVAEModule)


def test_a_tampered_copy_is_refused_with_both_hashes(scan_run, store, monkeypatch, capfd):
    found = ship(scan_run, "tiny")
    path = store / "tiny.ckpt"
    raw = torch.load(path, map_location="cpu", weights_only=True)
    first = next(k for k, v in raw["state_dict"].items() if v.is_floating_point())
    raw["state_dict"][first] += 1.0  # still a loadable checkpoint, other weights
    torch.save(raw, path)
    digest = file_sha256(path)
    for load in (resolve, lambda n: load_generator(f"pretrained:{n}")):
        with pytest.raises(InputFileError) as err:
            load("tiny")
        text = str(err.value)
        assert str(path) in text and digest in text and found.sha256 in text

    monkeypatch.setenv("MEDGEN_ROOT", str(store.parent))
    assert main(["sample", "ckpt=pretrained:tiny", "out=synth", "n=2"]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and found.sha256 in lines[0], lines
    assert not (store.parent / "outputs").exists() and not (store.parent / "synth").exists()


def test_an_unknown_name_lists_the_available_ones_and_exits_2_before_a_run_folder(
    scan_run, store, monkeypatch, capfd
):
    with pytest.raises(ConfigError, match="none: this medgen ships no trained models"):
        entry("phantom32")
    ship(scan_run, "tiny")
    with pytest.raises(ConfigError, match=r"pretrained='phantom32'.*\(tiny\)"):
        resolve_checkpoint("pretrained:phantom32")
    monkeypatch.setenv("MEDGEN_ROOT", str(store.parent))
    assert main(["sample", "ckpt=pretrained:phantom32", "out=synth"]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert lines == ["medgen sample: error: pretrained='phantom32' is not allowed: a shipped "
                     "model name (tiny)"]  # fmt: skip
    assert sorted(p.name for p in store.parent.iterdir()) == ["experiments", "models"]


def test_a_shipped_model_cannot_resume_training(scan_run, store, compose_cfg):
    from medgen.tasks.checks import check_train

    ship(scan_run, "tiny")
    cfg = compose_cfg("train", ["debug=fast", "data.size=16", "ckpt_path=pretrained:tiny"])
    with pytest.raises(UserError, match="shipped model: weights only"):
        check_train(cfg)


def test_sample_help_lists_the_shipped_models_with_their_metrics(scan_run, store):
    assert "none ship with this version" in task_help("sample", [])
    ship(scan_run, "tiny", metrics={"val/loss_ema": 0.03125, "steps": 2.0})
    text = task_help("sample", [])
    line = next(ln for ln in text.splitlines() if ln.startswith("  tiny "))
    assert "tiny test model" in line and "val/loss_ema=0.03125" in line and "MB" in line


def test_size_limit_and_bad_arguments_are_refused_before_anything_is_written(scan_run, store):
    with pytest.raises(UserError, match="over --max-mb 0.001; --float16 halves it"):
        ship(scan_run, "tiny", max_mb=0.001)
    with pytest.raises(ConfigError, match="name='Tiny-1'"):
        ship(scan_run, "Tiny-1")
    with pytest.raises(ConfigError, match="experiment="):
        ship(scan_run, "tiny", experiment="/abs/elsewhere")
    with pytest.raises(UserError, match="experiments/missing"):
        ship(scan_run, "tiny", experiment="experiments/missing")
    assert not store.exists() or not list(store.iterdir())
    with pytest.raises(ConfigError, match="name=number"):
        parse_metrics(["FCD"])
    assert parse_metrics(["FCD=1.5", " validity = 1"]) == {"FCD": 1.5, "validity": 1.0}


def test_the_script_slims_registers_and_reports(scan_run, store, capsys):
    args = [str(scan_run), "tiny", "--experiment", "experiments/tiny", "--description", "t",
            "--hardware", "h", "--data-licence", "l", "--metric", "val/loss=0.25"]  # fmt: skip
    assert slim_main(args) == 0
    out = capsys.readouterr().out
    found = read_registry(store)["tiny"]
    assert found.sha256 in out and "MB" in out and found.metrics == {"val/loss": 0.25}
    assert slim_main([*args[:2], *args[2:], "--max-mb", "0.001"]) == 2
    assert "over --max-mb" in capsys.readouterr().err
    assert read_registry(store)["tiny"] == found  # the refused run changed nothing


def test_ema_copies_are_found_by_layout():
    w = torch.zeros(2, 3)
    state = {"unet.a.weight": w, "unet.b": w[0], "ema.module.a.weight": w, "ema.module.b": w[0],
             "ema.num_updates": torch.tensor(1), "ema.last_step": torch.tensor(1)}  # fmt: skip
    assert ema_copies(state) == {"ema.module.": "unet."}
    assert ema_copies({k: v for k, v in state.items() if k != "unet.b"}) == {}  # no full match
    twin = {**state, "other.a.weight": w, "other.b": w[0]}
    with pytest.raises(UserError, match="fits several networks"):
        ema_copies(twin)


def test_a_broken_registry_is_named(store):
    store.mkdir()
    (store / "registry.json").write_text('{"models": []}')
    with pytest.raises(InputFileError, match="registry.json is not a format-1 registry"):
        available()
