"""GraphVAEModule through `medgen train`, checkpoints, `medgen sample` and the scripting API."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from medgen.molecules.api import MoleculeVAE
from medgen.molecules.module import GraphVAEModule
from medgen.molecules.sample import sample_from_config
from medgen.tasks.train import train

from .conftest import MOLECULES


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny graph VAE trained with `medgen train model=graph_vae data=smiles debug=fast`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from tests.conftest import CONFIG_DIR

    tmp = tmp_path_factory.mktemp("graph_vae")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: runs before the per-test thread fixture
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDGEN_CACHE_DIR", str(tmp / "cache"))
    GlobalHydra.instance().clear()
    overrides = [
        "model=graph_vae",
        "data=smiles",
        "debug=fast",
        "model.hidden_dim=64",
        "model.latent_dim=16",
        "model.n_val_samples=32",
        "data.limit=48",
        "data.batch_size=16",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp)
        cfg.paths.data_dir = str(tmp / "data")
        cfg.paths.log_dir = str(tmp / "outputs")
        cfg.paths.output_dir = str(tmp / "run")
        del cfg["hydra"]  # resolved already; train() writes the resolved config
    metrics = train(cfg)
    GlobalHydra.instance().clear()
    torch.set_num_threads(threads)
    yield tmp / "run", metrics
    mp.undo()


def test_train_logs_losses_and_sample_metrics(trained_run):
    run, metrics = trained_run
    for key in ("train/loss", "train/recon", "train/kl", "val/loss", "val/recon", "val/kl"):
        assert key in metrics, key
    assert metrics["val/validity"] == 1.0
    assert 0 < metrics["val/uniqueness"] <= 1 and 0 <= metrics["val/novelty"] <= 1
    assert (run / "molecules" / "epoch_001.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "rejects.csv").is_file()


def test_checkpoint_loads_with_weights_only_and_rebuilds_the_model(trained_run):
    run, _ = trained_run
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["kind"] == "graph_vae" and hp["vocabulary"][0] == "C" and hp["max_atoms"] > 10
    model = GraphVAEModule.load_medgen_checkpoint(run)
    assert model.vocab.tokens == hp["vocabulary"] and not model.training


def test_sample_task_writes_csv_and_sdf_with_provenance(trained_run, tmp_path):
    run, _ = trained_run
    cfg = OmegaConf.create(
        {"n": 20, "seed": 3, "temperature": 1.0, "batch_size": 4, "out": str(tmp_path / "m.csv")}
    )
    summary = sample_from_config(cfg, run / "checkpoints" / "last.ckpt")
    assert summary["validity"] == 1.0
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0] == "index,seed,smiles,valid" and len(lines) == 21
    side = json.loads((tmp_path / "m.csv.json").read_text())
    assert side["seed"] == 3 and len(side["checkpoint_sha256"]) == 64 and side["provenance"]
    # same seed and checkpoint: rerun is allowed and identical; another seed is refused
    sample_from_config(cfg, run / "checkpoints" / "last.ckpt")
    assert (tmp_path / "m.csv").read_text().splitlines() == lines
    cfg.seed = 4
    with pytest.raises(FileExistsError, match="overwrite=true"):
        sample_from_config(cfg, run / "checkpoints" / "last.ckpt")
    cfg.out = str(tmp_path / "m.sdf")
    sample_from_config(cfg, run / "checkpoints" / "last.ckpt")
    assert (tmp_path / "m.sdf").read_text().count("$$$$") == 20


def test_api_encode_decode_interpolate_and_optimize(trained_run):
    run, _ = trained_run
    neutral = [s for s in MOLECULES if "+" not in s]  # MOSES (and so the vocabulary) has no charges
    vae = MoleculeVAE.from_checkpoint(run)
    z = vae.encode(MOLECULES[:3])
    assert z.shape == (3, 16)
    assert torch.equal(z, vae.encode(MOLECULES[:3]))
    assert vae.decode(z) == vae.decode(z)  # greedy decoding is deterministic
    assert len(vae.decode(z, temperature=1.0, seed=1)) == 3
    path = vae.interpolate(MOLECULES[0], MOLECULES[1], steps=5)
    assert len(path) == 5 and all(path)
    assert 0.0 <= vae.reconstruction_accuracy(neutral) <= 1.0
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vae.encode(["C[Si](C)(C)C"])
    report = vae.fit_property("qed", neutral * 2, epochs=20)
    assert "r2_train" in report
    best = vae.optimize("qed", n=3, n_starts=4, steps=4, decode_every=2)
    assert list(best.columns[:3]) == ["smiles", "score", "predicted"]
    assert best["score"].is_monotonic_decreasing
