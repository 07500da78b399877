"""GraphVAEModule through `medgen train`, checkpoints, `medgen sample` and the scripting API."""

from __future__ import annotations

import json

import pytest
import torch

from medgen.generation import sample_to
from medgen.molecules.api import MoleculeVAE
from medgen.molecules.module import GraphVAEModule
from medgen.records import SampleSettings
from medgen.tasks.train import train

from .conftest import MOLECULES

NET = {"latent_dim": 16, "hidden_dim": 64, "pair_dim": 32}  # over the GraphVAE defaults


def sample_from(ckpt, *, out, n, seed=0, temperature=1.0, batch_size=4, overwrite=False):
    """What `medgen sample` does for a molecule checkpoint (load, resolve, shard, write)."""
    module = GraphVAEModule.from_checkpoint(ckpt)
    settings = SampleSettings(seed=seed, temperature=temperature)
    file = ckpt if str(ckpt).endswith(".ckpt") else ckpt / "checkpoints" / "last.ckpt"
    return sample_to(
        module, settings, out=out, checkpoint=file, n=n, batch_size=batch_size,
        overwrite=overwrite, preview=False,
    )  # fmt: skip


def train_tiny(tmp, overrides: list[str]):
    """`medgen train model=graph_vae data=smiles debug=fast <overrides>` with outputs in ``tmp``."""
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import compose_at

    overrides = ["model=graph_vae", "data=smiles", "debug=fast", *overrides]
    cfg = compose_at(tmp, "train", overrides, job=True)
    try:
        return train(cfg)
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny graph VAE trained with `medgen train model=graph_vae data=smiles debug=fast`."""
    tmp = tmp_path_factory.mktemp("graph_vae")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: runs before the per-test thread fixture
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDGEN_CACHE_DIR", str(tmp / "cache"))
    overrides = [
        "model.network.hidden_dim=64",
        "model.network.latent_dim=16",
        "callbacks.molecule_sampling.n_samples=32",
        "data.limit=48",
        "data.test_fraction=0.0",  # the split (and so the model) these assertions were set on
        "data.batch_size=16",
        # the API assertions below (optimize finds 5 distinct molecules along latent walks of a
        # model trained for 8 steps) were set on the sequence decoder; the graph decoder is
        # trained through `medgen train` in test_test_true_... and tests/conformance
        "model.network.decoder=sequence",
    ]
    metrics = train_tiny(tmp, overrides)
    torch.set_num_threads(threads)
    yield tmp / "run", metrics
    mp.undo()


def test_test_true_tests_on_the_held_out_test_split(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(tmp_path / "cache"))
    overrides = ["model.network.hidden_dim=16", "model.network.latent_dim=4",
                 "model.network.pair_dim=8", "callbacks.molecule_sampling.n_samples=4",
                 "callbacks.molecule_sampling.n_recon=4", "data.limit=20",
                 "data.test_fraction=0.25", "trainer.max_epochs=1", "test=true"]  # fmt: skip
    metrics = train_tiny(tmp_path, overrides)
    assert "test/loss" in metrics and metrics["test/loss"] > 0
    assert "val/validity" in metrics  # the callback ran with the test split in place
    assert (tmp_path / "run" / "molecules" / "epoch_000.png").is_file()


def test_train_logs_losses_and_sample_metrics(trained_run):
    run, metrics = trained_run
    for key in ("train/loss", "train/recon", "train/kl", "val/loss", "val/recon", "val/kl"):
        assert key in metrics, key
    # held-out reconstruction (greedy decodes of the val split); barely trained, so only a range
    assert 0.0 <= metrics["val/recon_exact"] <= 1.0
    assert metrics["val/validity"] == 1.0
    assert 0.0 <= metrics["val/filters"] <= 1.0  # share of samples passing the MOSES filters
    assert 0 < metrics["val/uniqueness"] <= 1 and 0 <= metrics["val/novelty"] <= 1
    assert (run / "molecules" / "epoch_001.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "rejects.csv").is_file()


def test_checkpoint_loads_with_weights_only_and_rebuilds_the_model(trained_run):
    run, _ = trained_run
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["kind"] == "graph_vae" and hp["vocabulary"][0] == "C" and hp["max_atoms"] > 10
    assert hp["module"] == "medgen.molecules.module.GraphVAEModule"
    # network and optimizer are stored as the plain config nodes they were built from
    assert hp["network"]["_target_"] == "medgen.molecules.vae.GraphVAE"
    assert hp["network"]["latent_dim"] == 16 and type(hp["network"]) is dict
    assert hp["optimizer"]["_partial_"] is True and hp["optimizer"]["lr"] == 0.001
    model = GraphVAEModule.from_checkpoint(run)
    assert model.vocab.tokens == hp["vocabulary"] and not model.training
    assert model.vae.latent_dim == 16


def test_sample_task_writes_csv_and_sdf_with_provenance(trained_run, tmp_path):
    run, _ = trained_run
    ckpt = run / "checkpoints" / "last.ckpt"
    out = tmp_path / "m.csv"
    kw = dict(out=out, n=20, seed=3, temperature=1.0, batch_size=4)
    summary = sample_from(ckpt, **kw)
    assert summary["validity"] == 1.0
    lines = [r for r in out.read_text().splitlines() if not r.startswith("# ")]  # the mark
    assert lines[0] == "index,seed,smiles,valid,dualuse_alerts" and len(lines) == 21
    side = json.loads((tmp_path / "m.csv.json").read_text())
    assert side["seed"] == 3 and len(side["checkpoint_sha256"]) == 64 and side["provenance"]
    # same seed and checkpoint: rerun is allowed and identical; another seed is refused
    sample_from(ckpt, **kw)
    assert [r for r in out.read_text().splitlines() if not r.startswith("# ")] == lines
    with pytest.raises(FileExistsError, match="overwrite=true"):
        sample_from(ckpt, **{**kw, "seed": 4})
    # another temperature or count into the same out is refused too, naming what changed
    with pytest.raises(FileExistsError, match="temperature=0.5 \\(was 1.0\\)"):
        sample_from(ckpt, **{**kw, "temperature": 0.5})
    with pytest.raises(FileExistsError, match="n=21 \\(was 20\\)"):
        sample_from(ckpt, **{**kw, "n": 21})
    # a corrupt sidecar is named, not a bare JSONDecodeError
    (tmp_path / "m.csv.json").write_text("{not json")
    with pytest.raises(ValueError, match="m.csv.json is corrupt"):
        sample_from(ckpt, **kw)
    with pytest.raises(ValueError, match="temperature must be .*got 0"):
        sample_from(run, **{**kw, "temperature": 0, "overwrite": True})
    sample_from(ckpt, **{**kw, "out": tmp_path / "m.sdf"})
    assert (tmp_path / "m.sdf").read_text().count("$$$$") == 20
    assert not list(tmp_path.glob(".*parts"))  # the parts are merged and removed


def test_api_encode_decode_interpolate_and_optimize(trained_run):
    from medgen.molecules.api import score_smiles
    from medgen.molecules.featurize import EMBEDDED_SAMPLE
    from medgen.molecules.graph import round_trip

    run, _ = trained_run
    vae = MoleculeVAE.from_checkpoint(run)
    z = vae.encode(MOLECULES[:3])
    assert z.shape == (3, 16)
    assert torch.equal(z, vae.encode(MOLECULES[:3]))
    assert vae.decode(z) == vae.decode(z)  # greedy decoding is deterministic
    assert len(vae.decode(z, temperature=1.0, seed=1)) == 3
    path = vae.interpolate(MOLECULES[0], MOLECULES[1], steps=5)
    assert len(path) == 5 and all(path)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vae.encode(["C[Si](C)(C)C"])
    rows = EMBEDDED_SAMPLE.read_text().split()
    fitted = [s for s in rows[1:200] if "+" not in s and "-" not in s][:60]
    report = vae.fit_property("qed", fitted, epochs=30)
    assert "r2_train" in report and "r2_heldout" in report
    held_in = vae._fitted["qed"][0]  # shuffled (seeded) before the last 10% are held out
    assert sorted(held_in) == sorted(fitted) and held_in != fitted
    best = vae.optimize("qed", n=5, n_starts=8, steps=10, decode_every=2)
    assert list(best.columns[:3]) == ["smiles", "score", "predicted"]
    assert len(best) == 5 and best["score"].is_monotonic_decreasing
    # nothing returned is a fitted molecule written another way (both sides canonical)
    assert not set(best["smiles"]) & {round_trip(s) for s in fitted}
    # the search beats what sampling the prior gives on average, with the same model
    prior = [q for q in score_smiles("qed", vae.sample(64, seed=0)) if q == q]
    baseline = sum(prior) / len(prior)
    assert best["score"].iloc[0] > baseline, (best["score"].iloc[0], baseline)


def test_overfit_model_reconstructs_its_molecules_and_logs_it(tmp_path):
    from medgen.molecules.graph import collate_graphs, encode_tokens, smiles_to_tokens
    from medgen.molecules.sampling import reconstruction_accuracy

    neutral = [s for s in MOLECULES if "+" not in s]
    tokens = [smiles_to_tokens(s) for s in neutral]
    vocab = sorted({t for toks, _ in tokens for t in toks})
    torch.manual_seed(0)
    module = GraphVAEModule(vocabulary=vocab, max_atoms=30, network=NET)
    batch = collate_graphs([encode_tokens(t, b, module.vocab) for t, b in tokens])
    opt = torch.optim.Adam(module.vae.parameters(), lr=3e-3)
    for _ in range(250):
        out = module.vae(batch)
        loss = out["recon"] + 0.01 * out["kl"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert reconstruction_accuracy(module.vae, module.vocab, batch) == 1.0
    assert MoleculeVAE(module).reconstruction_accuracy(neutral) == 1.0
    # an untrained model of the same size does not reconstruct them
    untrained = GraphVAEModule(vocabulary=vocab, max_atoms=30, network=NET)
    assert MoleculeVAE(untrained).reconstruction_accuracy(neutral) < 0.5


def test_last_ckpt_is_the_latest_state_not_the_best_one(tmp_path, monkeypatch):
    """What a resume reads is the last step: with a monitored metric that never improves after
    the first validation (validity is 1.0 every time), the best checkpoint stays at epoch 0 and
    ``last.ckpt`` (LatestCheckpoint) still moves on (Lightning's own ``save_last`` would leave it
    at the best)."""
    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(tmp_path / "cache"))
    metrics = train_tiny(tmp_path, ["data.limit=32", "data.batch_size=16", "trainer.max_epochs=3",
                                    "callbacks.molecule_sampling.n_samples=4",
                                    "callbacks.model_checkpoint.monitor=val/validity",
                                    "callbacks.model_checkpoint.mode=max"])  # fmt: skip
    folder = tmp_path / "run" / "checkpoints"
    (best,) = folder.glob("epoch_*.ckpt")
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    first = torch.load(best, map_location="cpu", weights_only=True)
    assert best.name.startswith("epoch_000") and metrics["val/validity"] == 1.0
    assert last["global_step"] == metrics["global_step"] > first["global_step"]
    assert last["epoch"] == 2
