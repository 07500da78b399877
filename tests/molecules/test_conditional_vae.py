"""The conditional graph VAE: the decoder reads ``z + W c`` (``W`` zero at the start), conditions
are drawn from training rows that meet the targets, fine-tuning starts from a checkpoint, and
conditioned samples meet their targets above chance."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch

from medgen.errors import UserError
from medgen.molecules.api import MoleculeVAE, score_smiles
from medgen.molecules.conditioning import condition_rows
from medgen.molecules.sampling import draw_noise
from medgen.molecules.vae import GraphVAE

from .test_module import train_tiny

NAMES = ["logp", "qed"]
STATS = {"names": NAMES, "mean": [2.0, 0.7], "std": [1.0, 0.1],
         "table": [[1.0, 0.9], [3.5, 0.6], [4.2, 0.85], [2.5, 0.95]]}  # fmt: skip


def _vae(p: int = 2) -> GraphVAE:
    table = torch.tensor([[-1.0, 2.0], [1.5, -1.0], [2.2, 1.5], [0.5, 2.5]])
    return GraphVAE(capacity=torch.tensor([4, 3, 2]), max_atoms=6, latent_dim=4, hidden_dim=16,
                    pair_dim=8, condition_dim=p, condition_table=table)  # fmt: skip


def test_the_condition_layer_starts_at_zero_so_a_fine_tune_starts_as_the_base():
    torch.manual_seed(0)
    vae = _vae().eval()
    z = torch.randn(3, 4)
    c = torch.randn(3, 2)
    assert torch.equal(vae.decoder_latent(z, c), z)
    assert torch.equal(vae.decoder_latent(torch.cat([z, c], 1)), z)
    with torch.no_grad():
        vae.condition.weight.fill_(1.0)
    assert torch.allclose(vae.decoder_latent(torch.cat([z, c], 1)), z + c.sum(1, keepdim=True))


def test_draw_noise_appends_a_condition_row_from_the_allowed_rows_only():
    vae = _vae()
    table = vae.condition_table
    z, _ = draw_noise(vae, range(40), 0)
    assert z.shape == (40, 4 + 2)
    rows = {tuple(r) for r in z[:, 4:].tolist()}
    assert rows <= {tuple(r) for r in table.tolist()} and len(rows) > 1
    allowed = torch.tensor([1, 3])
    zr, _ = draw_noise(vae, range(40), 0, rows=allowed)
    assert {tuple(r) for r in zr[:, 4:].tolist()} <= {tuple(table[i].tolist()) for i in (1, 3)}
    assert torch.equal(zr[:, :4], z[:, :4])  # the latent of molecule i does not move
    again, _ = draw_noise(vae, [7, 3], 0, rows=allowed)  # per molecule, any batch
    assert torch.equal(again, zr[[7, 3]])


def test_condition_rows_known_answer():
    assert condition_rows(STATS, {"logp": ">=3"}).tolist() == [1, 2]
    assert condition_rows(STATS, {"logp": ">=3", "qed": ">=0.8"}).tolist() == [2]
    assert condition_rows(STATS, {"qed": "0.8..0.92"}).tolist() == [0, 2]
    assert condition_rows(STATS, {"logp": ">9"}).tolist() == []


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory):
    """A tiny unconditional graph VAE, then a conditional one fine-tuned from it on logP and QED
    (600 embedded molecules, 15 epochs)."""
    tmp = tmp_path_factory.mktemp("cvae")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDGEN_CACHE_DIR", str(tmp / "cache"))
    sizes = ["model.network.hidden_dim=64", "model.network.latent_dim=8",
             "model.network.pair_dim=16", "callbacks.molecule_sampling.n_samples=8",
             "callbacks.molecule_sampling.n_recon=2", "data.limit=600", "data.batch_size=32",
             "data.test_fraction=0.0"]  # fmt: skip
    base = tmp / "base"
    train_tiny(base, [*sizes, "trainer.max_epochs=1"])
    cond = tmp / "cond"
    names = "[logp,qed]"
    metrics = train_tiny(cond, [*sizes, f"model.conditions={names}",
                                f"data.condition_properties={names}",
                                f"model.init_from={base / 'run'}", "model.kl_warmup_steps=0",
                                "trainer.max_epochs=15", "trainer.limit_train_batches=1.0",
                                "model.optimizer.lr=0.005"])  # fmt: skip
    torch.set_num_threads(threads)
    yield base / "run", cond / "run", metrics
    mp.undo()


def test_the_checkpoint_carries_the_conditions_and_loads_weights_only(cvae_run):
    _, run, _ = cvae_run
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["conditions"] == ["logp", "qed"] and hp["init_from"].endswith("run")
    stats = hp["condition_stats"]
    assert stats["names"] == ["logp", "qed"] and len(stats["table"]) <= 5000
    assert all(s > 0 for s in stats["std"])
    table = np.asarray(stats["table"])
    assert np.allclose(table.mean(0), stats["mean"], atol=3 * np.asarray(stats["std"]))
    vae = MoleculeVAE.from_checkpoint(run)
    assert vae.vae.condition_dim == 2 and vae.condition_stats is not None
    assert vae.vae.condition_table.shape == (len(table), 2)


def test_conditioned_samples_meet_the_target_and_beat_chance(cvae_run):
    _, run, _ = cvae_run
    vae = MoleculeVAE.from_checkpoint(run)
    prior = np.array(score_smiles("logp", vae.sample(400, seed=3)))
    q = round(float(np.nanquantile(prior, 0.75)), 2)
    frame = vae.sample_conditioned(150, {"logp": f">={q}"}, seed=1)
    assert len(frame) == 150
    assert all(v >= q for v in score_smiles("logp", frame["smiles"].tolist()))
    rep = frame.attrs
    # conditions drawn from training molecules with logP >= q move the decoder's output there
    # (measured: 0.35-0.38 vs 0.22-0.23 at 1 and 2 threads)
    assert rep["guidance_helped"] is True, rep  # above chance by two standard errors
    assert rep["guided"]["success_rate"] > rep["unguided"]["success_rate"] + 0.05, rep


def test_property_heads_and_optimize_work_on_a_conditional_model(cvae_run):
    # the head reads [z, c] (the latent and the properties the decoder is asked for), the walk
    # moves both, and a start decodes from its own condition (it used to crash in steerability)
    from medgen.molecules.featurize import EMBEDDED_SAMPLE

    _, run, _ = cvae_run
    vae = MoleculeVAE.from_checkpoint(run)
    rows = EMBEDDED_SAMPLE.read_text().split()
    fitted = [s for s in rows[1:300] if "+" not in s and "-" not in s][:120]
    report = vae.fit_property("logp", fitted, epochs=60)
    assert vae.heads["logp"].net[0].in_features == vae.latent_dim + 2
    assert np.isfinite(report["steer_r"])
    # logP is one of the conditions, so [z, c] predicts it well (c is the value, standardized)
    assert report["r2_heldout"] > 0.5, report
    best = vae.optimize("logp", n=3, n_starts=8, steps=10, decode_every=2)
    assert best.attrs["n_found"] == len(best) and len(best) > 0
    from medgen.molecules.conditioning import fit_heads

    record = fit_heads(vae, fitted, properties=["logp"], n=60, epochs=10)  # heads in a checkpoint
    assert record["heads"]["logp"]["latent_dim"] == vae.latent_dim + 2
    assert best.attrs["best_training_score"] == pytest.approx(max(score_smiles("logp", fitted)))
    assert isinstance(best.attrs["beats_best_training"], bool)
    assert best["property"].tolist() == pytest.approx(score_smiles("logp", best["smiles"].tolist()))


def test_conditions_the_model_lacks_or_no_molecule_meets_are_refused(cvae_run):
    _, run, _ = cvae_run
    vae = MoleculeVAE.from_checkpoint(run)
    with pytest.raises(UserError, match=r"conditioned on \['logp', 'qed'\]"):
        vae.sample_conditioned(5, {"sa": "<=3"})
    with pytest.raises(UserError, match="no training molecule"):
        vae.sample_conditioned(5, {"logp": ">=40"})


def test_init_from_refuses_a_model_of_another_kind(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="init_from"):
        train_tiny(tmp_path, ["model.init_from=pretrained:phantom32", "data.limit=20",
                              "trainer.max_epochs=1"])  # fmt: skip


SMALL = ["model.network.hidden_dim=64", "model.network.latent_dim=8", "model.network.pair_dim=16",
         "callbacks.molecule_sampling.n_samples=8", "callbacks.molecule_sampling.n_recon=2",
         "data.batch_size=32", "data.test_fraction=0.0"]  # fmt: skip
CONDS = ["model.conditions=[logp,qed]", "data.condition_properties=[logp,qed]"]


def _hparams(run):
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["hyper_parameters"], ckpt["global_step"]


def test_a_conditional_model_fine_tunes_a_conditional_one_in_its_units(cvae_run, tmp_path):
    _, cond, _ = cvae_run
    with pytest.raises(UserError, match=r"conditioned on \['logp', 'qed'\]; set model.conditions"):
        train_tiny(tmp_path / "a", [*SMALL, "data.limit=300", f"model.init_from={cond}",
                                    "trainer.max_epochs=1"])  # fmt: skip
    train_tiny(tmp_path / "b", [*SMALL, *CONDS, "data.limit=300", f"model.init_from={cond}",
                                "trainer.max_epochs=1"])  # fmt: skip
    old, _ = _hparams(cond)
    new, _ = _hparams(tmp_path / "b" / "run")
    # the condition layer was learned against the first model's standardization: it is kept,
    # while the conditions are drawn from the new data's rows
    assert new["condition_stats"]["mean"] == old["condition_stats"]["mean"]
    assert new["condition_stats"]["std"] == old["condition_stats"]["std"]
    assert len(new["condition_stats"]["table"]) != len(old["condition_stats"]["table"])
    assert new["masks"] == old["masks"] and new["network"] == old["network"]


def test_a_resumed_run_continues_the_checkpoint_model_not_one_built_from_new_data(
    cvae_run, tmp_path
):
    import shutil

    _, cond, _ = cvae_run
    run = tmp_path / "run"
    shutil.copytree(cond, run)
    old, step = _hparams(run)
    # other data than the run's: masks and statistics learned again would differ, and a model
    # built from them would not fit the checkpoint's weights
    train_tiny(tmp_path / "resume", [*SMALL, *CONDS, "data.limit=300", "trainer.max_epochs=16",
                                     "trainer.limit_train_batches=1.0",
                                     f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])  # fmt: skip
    new, new_step = _hparams(tmp_path / "resume" / "run")
    assert new_step > step
    assert new["masks"] == old["masks"] and new["condition_stats"] == old["condition_stats"]
    assert MoleculeVAE.from_checkpoint(run).sample(4, seed=0)
    with pytest.raises(UserError, match="resume it with model.conditions"):
        train_tiny(tmp_path / "r2", [*SMALL, "data.limit=300", "trainer.max_epochs=17",
                                     f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])  # fmt: skip


def test_a_fitted_latent_prior_lands_in_a_new_checkpoint_and_sampling_draws_from_it(
    cvae_run, tmp_path
):
    from medgen.generation import sample_to
    from medgen.molecules import prior as prior_cli
    from medgen.molecules.module import GraphVAEModule
    from medgen.pretrained.slim import slim
    from medgen.records import SampleSettings

    _, run, _ = cvae_run
    out = tmp_path / "prior.ckpt"
    assert prior_cli.main([str(run), "--out", str(out), "--n", "400", "--components", "2"]) == 0
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    record = ckpt["latent_prior"]
    assert (record["latent_dim"], record["condition_dim"]) == (8, 2)
    assert record["fitted_on"]["molecules"] >= 300 and record["fitted_on"]["components"] == 2
    assert "latent_prior" in slim(ckpt, name="t")  # a shipped model keeps it
    fitted, plain = MoleculeVAE.from_checkpoint(out), MoleculeVAE.from_checkpoint(run)
    assert fitted.vae.latent_prior is not None and plain.vae.latent_prior is None
    drawn = fitted.sample(60, seed=2)
    assert fitted.sample(60, seed=2, latent_prior="normal") == plain.sample(60, seed=2)
    assert drawn != plain.sample(60, seed=2) and all(s is not None for s in drawn)
    # medgen sample: the record says which prior was used; fitted without one is refused
    module = GraphVAEModule.from_checkpoint(out)
    assert module.resolve_settings(SampleSettings()).extra["latent_prior"] == "fitted"
    sample_to(module, SampleSettings(seed=2), out=tmp_path / "m.csv", checkpoint=out, n=60,
              batch_size=32, preview=False)  # fmt: skip
    text = "\n".join(r for r in (tmp_path / "m.csv").read_text().splitlines()
                     if not r.startswith("# "))  # the mark  # fmt: skip
    written = pd.read_csv(io.StringIO(text)).sort_values("index")["smiles"]
    assert written.tolist() == drawn
    # the same out with the other prior is refused, not mixed or reused
    with pytest.raises(FileExistsError, match="overwrite=true"):
        sample_to(GraphVAEModule.from_checkpoint(out),
                  SampleSettings(seed=2, extra={"latent_prior": "normal"}),
                  out=tmp_path / "m.csv", checkpoint=out, n=60, batch_size=32,
                  preview=False)  # fmt: skip
    with pytest.raises(UserError, match="latent_prior"):
        GraphVAEModule.from_checkpoint(run).resolve_settings(
            SampleSettings(extra={"latent_prior": "fitted"})
        )
    assert prior_cli.main([str(run), "--out", str(out)]) == 2  # exists: --overwrite
    assert prior_cli.main([str(out), "--out", str(out), "--overwrite"]) == 2  # an input


def test_the_aggregate_posterior_prior_lands_in_a_new_checkpoint_and_draws_near_its_condition(
    cvae_run, tmp_path
):
    from medgen.molecules import prior as prior_cli

    _, run, _ = cvae_run
    out = tmp_path / "aggregate.ckpt"
    assert prior_cli.main([str(run), "--out", str(out), "--aggregate", "--bandwidth", "0"]) == 2
    assert not out.exists()  # refused before anything is written
    assert prior_cli.main([str(run), "--out", str(out), "--n", "400", "--aggregate"]) == 0
    record = torch.load(out, map_location="cpu", weights_only=True)["latent_prior"]
    report = record["fitted_on"]
    assert report["kind"] == "aggregate" and report["bandwidth"] == 0.1
    k = report["components"]
    assert k == report["n_fit"] >= 270 and record["covariances"].shape == (k, 8 + 2)
    model = MoleculeVAE.from_checkpoint(out)
    prior = model.vae.latent_prior
    assert prior is not None and prior.diagonal
    drawn = model.sample(40, seed=3)
    assert all(s is not None for s in drawn) and drawn != model.sample(
        40, seed=3, latent_prior="normal"
    )
    # each draw's latent is the posterior of a molecule whose properties match its condition
    # row within a few bandwidths
    from medgen.molecules.sampling import _raw_noise, draw_noise

    z, _ = draw_noise(model.vae, range(40), 3)
    raw, _, pick = _raw_noise(model.vae, range(40), 3, None)
    cond = raw[:, 8:]
    shift, _ = prior.affine(pick, cond)
    comp = (shift[:, None, :].float() - prior.means[None, :, :8].float()).abs().sum(-1).argmin(1)
    assert (prior.means[comp, 8:].float() - cond).abs().max() < 0.5
    assert torch.equal(z[:, 8:], cond)


def test_reconstruction_decodes_a_conditional_model_with_each_molecules_own_properties():
    # a conditional model whose latent carries nothing (a heavy KL weight) names each molecule
    # by its logP alone: decoded with the mean condition it cannot reconstruct them, with their
    # own properties (what the decoder read in training) it does
    from medgen.molecules.graph import collate_graphs, encode_tokens, round_trip, smiles_to_tokens
    from medgen.molecules.module import GraphVAEModule
    from medgen.molecules.sampling import reconstruction_accuracy

    from .test_module import NET

    mols = ["CCO", "c1ccccc1", "CCCCCCCC", "O=C(O)c1ccccc1", "ClC(Cl)(Cl)Cl"]
    logp = score_smiles("logp", mols)
    assert len({round(v, 1) for v in logp}) == len(mols)
    tokens = [smiles_to_tokens(s) for s in mols]
    vocab = sorted({t for toks, _ in tokens for t in toks})
    stats = {"names": ["logp"], "mean": [float(np.mean(logp))], "std": [float(np.std(logp))],
             "table": [[v] for v in logp]}  # fmt: skip
    torch.manual_seed(0)
    module = GraphVAEModule(vocabulary=vocab, max_atoms=12, network=NET, conditions=["logp"],
                            condition_stats=stats)  # fmt: skip
    vae = module.vae
    batch = collate_graphs([encode_tokens(t, b, module.vocab) for t, b in tokens])
    cond = vae.standardize(torch.tensor(logp).unsqueeze(-1))
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    for _ in range(500):  # to ~0.005 nats of reconstruction loss
        out = vae(batch, cond=cond)
        loss = out["recon"] + 5.0 * out["kl"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    api = MoleculeVAE(module)
    assert api.reconstruction_accuracy(mols) == 1.0
    assert reconstruction_accuracy(vae, module.vocab, batch, cond=cond) == 1.0
    with pytest.raises(ValueError, match="conditional model's reconstruction needs"):
        reconstruction_accuracy(vae, module.vocab, batch)
    # the mean condition (the latent alone) asks every molecule to be of average logP
    plain = api.decode(api.encode(mols))
    assert sum(d == round_trip(s) for d, s in zip(plain, mols, strict=True)) <= 2, plain
    z = api.encode(mols, with_condition=True)
    assert z.shape == (len(mols), vae.latent_dim + 1)
    assert torch.allclose(z[:, -1], cond[:, 0])
    path = api.interpolate(mols[0], mols[2], steps=4)  # latent and properties move together
    assert (path[0], path[-1]) == (round_trip(mols[0]), round_trip(mols[2]))
    with pytest.raises(UserError, match=f"latents of width {vae.latent_dim} or"):
        api.decode(torch.zeros(2, vae.latent_dim + 3))
