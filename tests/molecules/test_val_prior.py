"""Validation samples from a fitted prior (``callbacks.molecule_sampling.latent_prior=fitted``):
a model whose posterior is far from ``N(0, I)`` is judged by draws from where its latents are,
as ``medgen sample`` draws once a prior is fitted."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from medgen.errors import ConfigError
from medgen.molecules.callbacks import MoleculeSampling
from medgen.molecules.graph import Vocabulary, encode_tokens, smiles_to_tokens
from medgen.molecules.prior import fit_prior
from medgen.molecules.sampling import sample_smiles
from medgen.molecules.vae import GraphVAE

from .conftest import MOLECULES

SHIFT = 3.0  # the far posterior: every posterior mean moved by +3 in each dimension


def _model_and_data(n: int = 30) -> tuple[GraphVAE, Vocabulary, SimpleNamespace]:
    tokens = [smiles_to_tokens(s) for s in MOLECULES]
    vocab = Vocabulary.build(t for t, _ in tokens)
    graphs = [encode_tokens(t, b, vocab) for t, b in tokens]
    torch.manual_seed(0)
    vae = GraphVAE(capacity=vocab.capacity, max_atoms=max(len(t) for t, _ in tokens),
                   latent_dim=4, hidden_dim=16, pair_dim=8)  # fmt: skip
    vae.eval()
    encode = vae.encode

    def far(batch, stereo=None):
        mu, logvar = encode(batch, stereo)
        return mu + SHIFT, logvar.clamp(max=-2.0)  # a tight posterior around the shifted mean

    vae.encode = far  # type: ignore[method-assign]
    train = [graphs[i % len(graphs)] for i in range(n)]
    return vae, vocab, SimpleNamespace(train_set=train, train_smiles=lambda: list(MOLECULES))


class _Module:
    """The parts of a GraphVAEModule the callback uses; records what it logs."""

    def __init__(self, vae, vocab):
        self.vae, self.vocab, self.logged = vae, vocab, {}
        self.device = torch.device("cpu")

    def built(self):
        return self.vae, self.vocab

    def log(self, key, value):
        self.logged[key] = value


def _validate(cb: MoleculeSampling, module: _Module, dm, root: Path) -> list[str]:
    trainer = SimpleNamespace(sanity_checking=False, datamodule=dm, is_global_zero=True,
                              default_root_dir=str(root), current_epoch=0, loggers=[])  # fmt: skip
    cb.on_validation_epoch_end(trainer, module)  # type: ignore[arg-type]
    return (root / "molecules" / "epoch_000.smi").read_text().split()


def test_the_fitted_prior_follows_a_far_posterior_and_reports_its_gain():
    vae, _, dm = _model_and_data()
    cb = MoleculeSampling(latent_prior="fitted", n_prior=30, prior_components=1)
    prior, gain = cb._fit_prior(vae, dm)
    # the posterior draws of the 30 molecules, seeded per molecule as the callback draws them
    from medgen.molecules.graph import collate_graphs
    from medgen.molecules.sampling import posterior_draws

    with torch.no_grad():
        z = posterior_draws(*vae.encode(collate_graphs(dm.train_set)), 0)
    want, report = fit_prior(z.detach(), components=1, seed=0)
    assert torch.allclose(prior.means, want.means)
    assert torch.allclose(prior.covariances, want.covariances)
    assert gain == pytest.approx(report["heldout_ll_z"] - report["normal_ll_z"])
    assert (prior.means[0] - z.mean(0).double()).abs().max() < 0.5
    assert (prior.means[0] > SHIFT - 1.5).all()  # centred where the latents are, not at 0
    assert gain > 5.0  # nats per molecule: the standard normal misses this posterior


def test_validation_samples_are_what_sampling_under_the_fitted_prior_draws(tmp_path):
    vae, vocab, dm = _model_and_data()
    module = _Module(vae, vocab)
    cb = MoleculeSampling(n_samples=12, n_recon=0, grid_size=0, latent_prior="fitted",
                          n_prior=30, prior_components=1)  # fmt: skip
    got = _validate(cb, module, dm, tmp_path / "fitted")
    prior, gain = cb._fit_prior(vae, dm)
    assert vae.latent_prior is None  # the module's own prior is put back
    vae.latent_prior = prior
    want = [s for s in sample_smiles(vae, vocab, 12, seed=0) if s]
    vae.latent_prior = None
    normal = [s for s in sample_smiles(vae, vocab, 12, seed=0) if s]
    assert got == want and got != normal
    assert module.logged["val/prior_gain"] == pytest.approx(gain)


def test_normal_draws_ignore_a_prior_the_model_carries(tmp_path):
    vae, vocab, dm = _model_and_data()
    normal = [s for s in sample_smiles(vae, vocab, 12, seed=0) if s]
    carried, _ = fit_prior(torch.randn(300, 4) * 0.2 + 5.0, components=1)
    vae.latent_prior = carried
    module = _Module(vae, vocab)
    cb = MoleculeSampling(n_samples=12, n_recon=0, grid_size=0)  # latent_prior=normal
    assert _validate(cb, module, dm, tmp_path) == normal
    assert vae.latent_prior is carried and "val/prior_gain" not in module.logged


def test_too_small_a_training_split_draws_from_the_standard_normal_and_says_so_once(
    tmp_path, caplog
):
    vae, vocab, dm = _model_and_data(n=10)
    normal = [s for s in sample_smiles(vae, vocab, 12, seed=0) if s]
    module = _Module(vae, vocab)
    cb = MoleculeSampling(n_samples=12, n_recon=0, grid_size=0, latent_prior="fitted",
                          n_prior=40, prior_components=2)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="medgen"):
        assert _validate(cb, module, dm, tmp_path / "a") == normal
        assert _validate(cb, module, dm, tmp_path / "b") == normal
    warned = [r for r in caplog.records if "latent_prior=fitted" in r.getMessage()]
    assert len(warned) == 1 and "holds 10 molecule(s)" in warned[0].getMessage()
    assert "val/prior_gain" not in module.logged


def test_val_prior_settings_are_checked():
    with pytest.raises(ConfigError, match=r"callbacks\.molecule_sampling\.latent_prior"):
        MoleculeSampling(latent_prior="fited")
    with pytest.raises(ConfigError, match=r"callbacks\.molecule_sampling\.n_prior"):
        MoleculeSampling(latent_prior="fitted", n_prior=30, prior_components=2)
    with pytest.raises(ConfigError, match=r"callbacks\.molecule_sampling\.prior_components"):
        MoleculeSampling(latent_prior="fitted", prior_components=0)
    MoleculeSampling(n_prior=0)  # unused under N(0, I)
