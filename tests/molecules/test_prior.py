"""The fitted latent prior: conditional Gaussian-mixture draws (known answers), the fit, the
checkpoint record, and how :func:`draw_noise` uses it (per molecule, N(0, I) when asked)."""

from __future__ import annotations

import math

import pytest
import torch

from medgen.errors import ConfigError, InputFileError, UserError
from medgen.molecules.prior import LatentPrior, fit_prior, standard_normal_ll
from medgen.molecules.sampling import draw_noise, latent_prior_choice
from medgen.molecules.vae import GraphVAE


def _one_component() -> tuple[LatentPrior, torch.Tensor, torch.Tensor]:
    # D = 3: z (2 dims) and c (1 dim), correlated
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    a = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.5, -0.3, 0.7]], dtype=torch.float64)
    cov = a @ a.T
    return LatentPrior(torch.ones(1), mean[None], cov[None], latent_dim=2), mean, cov


def test_a_draw_is_the_gaussian_conditional_known_answer():
    prior, mean, cov = _one_component()
    eps = torch.tensor([[0.3, -1.2], [0.0, 0.0]], dtype=torch.float32)
    c = torch.tensor([[1.5], [-0.5]])
    z = prior.draw(eps, torch.tensor([0.2, 0.9]), c).double()
    s_zz, s_zc, s_cc = cov[:2, :2], cov[:2, 2:], cov[2:, 2:]
    gain = s_zc @ torch.linalg.inv(s_cc)
    chol = torch.linalg.cholesky(s_zz - gain @ s_zc.T)
    expect = mean[:2] + (c.double() - mean[2:]) @ gain.T + eps.double() @ chol.T
    assert torch.allclose(z, expect, atol=1e-5)


def test_draws_have_the_conditional_moments():
    prior, mean, cov = _one_component()
    n = 40_000
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(n, 2, generator=gen)
    c = torch.full((n, 1), 2.0)
    z = prior.draw(eps, torch.rand(n, generator=gen), c).double()
    s_zc, s_cc = cov[:2, 2:], cov[2:, 2:]
    cond_mean = mean[:2] + (s_zc / s_cc).squeeze(1) * (2.0 - mean[2])
    cond_cov = cov[:2, :2] - s_zc @ s_zc.T / s_cc
    assert torch.allclose(z.mean(0), cond_mean, atol=0.03)
    assert torch.allclose(torch.cov(z.T), cond_cov, atol=0.03)


def test_the_component_follows_the_condition():
    # two components far apart in c: a row's condition picks its component
    means = torch.tensor([[0.0, 0.0, -5.0], [10.0, 10.0, 5.0]])
    covs = torch.eye(3).expand(2, 3, 3).clone()
    prior = LatentPrior(torch.tensor([0.9, 0.1]), means, covs, latent_dim=2)
    c = torch.tensor([[-5.0], [5.0]])
    resp = prior.responsibilities(c)
    assert resp[0, 0] > 0.999 and resp[1, 1] > 0.999  # despite weights 0.9 / 0.1
    z = prior.draw(torch.zeros(2, 2), torch.tensor([0.99, 0.01]), c)
    assert torch.allclose(z, torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    # without a condition part the weights decide, through the uniform
    flat = LatentPrior(torch.tensor([0.25, 0.75]), means[:, :2], covs[:, :2, :2], latent_dim=2)
    z = flat.draw(torch.zeros(3, 2), torch.tensor([0.1, 0.3, 0.999999]))
    assert z[:, 0].tolist() == [0.0, 10.0, 10.0]
    # a pick of exactly 0 never takes a component of probability 0
    empty_first = LatentPrior(torch.tensor([0.0, 1.0]), means[:, :2], covs[:, :2, :2], 2)
    assert empty_first.draw(torch.zeros(1, 2), torch.zeros(1))[0, 0] == 10.0
    with pytest.raises(ValueError, match="positive sum"):
        LatentPrior(torch.zeros(2), means[:, :2], covs[:, :2, :2], 2)


def test_the_fit_recovers_a_known_gaussian_and_beats_the_standard_normal():
    gen = torch.Generator().manual_seed(1)
    a = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.4, 0.0], [0.0, 0.5, 0.5]])
    x = torch.randn(20_000, 3, generator=gen) @ a.T + torch.tensor([0.5, -0.5, 0.0])
    prior, report = fit_prior(x[:, :2], x[:, 2:], components=1, seed=0)
    assert prior.latent_dim == 2 and prior.condition_dim == 1
    assert torch.allclose(prior.means[0].float(), torch.tensor([0.5, -0.5, 0.0]), atol=0.05)
    assert torch.allclose(prior.covariances[0].float(), a @ a.T, atol=0.05)
    assert report["n_heldout"] == 2000 and report["n_fit"] == 18_000 and report["converged"]
    # the held-out latents are correlated: the fit is more likely than N(0, I)
    assert report["heldout_ll_z"] > report["normal_ll_z"] + 0.3
    ll = standard_normal_ll(torch.zeros(1, 4))
    assert math.isclose(float(ll[0]), -2 * math.log(2 * math.pi), rel_tol=1e-12)


def test_the_fit_refuses_too_few_molecules_and_non_finite_latents():
    with pytest.raises(UserError, match="at least 80 molecules"):
        fit_prior(torch.randn(50, 2), components=8)
    bad = torch.randn(200, 2)
    bad[3, 1] = float("nan")
    with pytest.raises(UserError, match="not all finite"):
        fit_prior(bad, components=1)


def test_the_record_round_trips_through_a_weights_only_load(tmp_path):
    prior, _, _ = _one_component()
    path = tmp_path / "p.pt"
    torch.save({"latent_prior": prior.record(fitted_on={"molecules": 3})}, path)
    record = torch.load(path, weights_only=True)["latent_prior"]
    again = LatentPrior.from_record(record, latent_dim=2, condition_dim=1)
    eps, pick, c = torch.randn(5, 2), torch.rand(5), torch.randn(5, 1)
    assert torch.equal(again.draw(eps, pick, c), prior.draw(eps, pick, c))  # float32 both ways
    with pytest.raises(InputFileError, match="latent_dim=2, condition_dim=1; the model has 4, 1"):
        LatentPrior.from_record(record, latent_dim=4, condition_dim=1)
    with pytest.raises(InputFileError, match="condition_dim=1; the model has 2, 3"):
        LatentPrior.from_record(record, latent_dim=2, condition_dim=3)
    z_only = LatentPrior(prior.weights, prior.means[:, :2], prior.covariances[:, :2, :2], 2)
    for model_p in (0, 3):  # a prior over z alone fits a conditional model too (--marginal)
        assert LatentPrior.from_record(z_only.record(), latent_dim=2, condition_dim=model_p)
    with pytest.raises(InputFileError, match="not format 1"):
        LatentPrior.from_record({**record, "format": 7}, latent_dim=2, condition_dim=1)
    broken = {**record, "covariances": -record["covariances"]}
    with pytest.raises(InputFileError, match="not positive definite"):
        LatentPrior.from_record(broken, latent_dim=2, condition_dim=1)


def _vae(p: int) -> GraphVAE:
    table = torch.tensor([[-1.0, 2.0], [1.5, -1.0], [2.2, 1.5], [0.5, 2.5]])[:, :p]
    return GraphVAE(capacity=torch.tensor([4, 3, 2]), max_atoms=6, latent_dim=4, hidden_dim=16,
                    pair_dim=8, condition_dim=p,
                    condition_table=table if p else None)  # fmt: skip


@pytest.mark.parametrize("p,joint", [(0, False), (2, True), (2, False)])
def test_draw_noise_with_a_prior_is_per_molecule_and_normal_draws_as_before(p, joint):
    vae = _vae(p)
    z0, u0 = draw_noise(vae, range(30), 4)
    gen = torch.Generator().manual_seed(2)
    fitted, _ = fit_prior(torch.randn(500, 4, generator=gen) * 0.3 + 3.0,
                          torch.randn(500, p, generator=gen) if joint else None,
                          components=2)  # fmt: skip
    assert fitted.condition_dim == (p if joint else 0)
    vae.latent_prior = fitted
    z1, u1 = draw_noise(vae, range(30), 4)
    assert torch.equal(u1, u0)  # the decoder's noise and the condition rows do not move
    assert torch.equal(z1[:, 4:], z0[:, 4:])
    assert z1[:, :4].mean() > 2.0 and z0[:, :4].abs().mean() < 1.5  # drawn from the fit
    again, _ = draw_noise(vae, [9, 2], 4)
    assert torch.equal(again, z1[[9, 2]])  # per molecule, whatever the batch
    with latent_prior_choice(vae, "normal"):
        z2, _ = draw_noise(vae, range(30), 4)
    assert torch.equal(z2, z0) and vae.latent_prior is fitted
    with latent_prior_choice(vae, "fitted"):
        assert torch.equal(draw_noise(vae, range(30), 4)[0], z1)
    vae.latent_prior = None
    with pytest.raises(ConfigError, match="latent_prior.*holds no latent prior"):
        with latent_prior_choice(vae, "fitted"):
            pass
    with pytest.raises(ConfigError, match="latent_prior"):
        with latent_prior_choice(vae, "gmm"):
            pass
