"""The aggregate-posterior prior (``--aggregate``): one diagonal component per encoded molecule.
Known answers for its draws and density, its condition kernel, the record, and the tool."""

from __future__ import annotations

import math

import pytest
import torch

from medgen.errors import ConfigError, InputFileError, UserError
from medgen.molecules.prior import LatentPrior, aggregate_prior


def _posteriors():
    mu = torch.tensor([[0.0, 0.0], [4.0, -4.0], [-3.0, 5.0]], dtype=torch.float64)
    logvar = torch.log(torch.tensor([[0.25, 1.0], [0.04, 0.09], [1.0, 4.0]], dtype=torch.float64))
    cond = torch.tensor([[-2.0], [0.0], [2.0]], dtype=torch.float64)
    return mu, logvar, cond


def test_a_draw_is_the_picked_molecules_posterior_known_answer():
    mu, logvar, cond = _posteriors()
    prior, report = aggregate_prior(mu, logvar, cond, bandwidth=0.1, heldout_fraction=0.0)
    assert prior.diagonal and prior.latent_dim == 2 and prior.condition_dim == 1
    assert report["components"] == 3 and report["kind"] == "aggregate"
    eps = torch.tensor([[1.0, -1.0], [0.5, 2.0], [0.0, 0.0]])
    # the condition row selects the molecule whose properties lie within the bandwidth
    z = prior.draw(eps, torch.tensor([0.5, 0.99, 0.01]), torch.tensor([[0.02], [-1.97], [2.05]]))
    sd = torch.exp(0.5 * logvar)
    expect = torch.stack([mu[1] + sd[1] * eps[0].double(), mu[0] + sd[0] * eps[1].double(),
                          mu[2] + sd[2] * eps[2].double()])  # fmt: skip
    assert torch.allclose(z.double(), expect, atol=1e-2)  # half-precision storage
    # halfway between two molecules' properties both are drawn, about half the time each
    resp = prior.responsibilities(torch.tensor([[-1.0]]))
    assert math.isclose(float(resp[0, 0]), 0.5, abs_tol=1e-6) and float(resp[0, 2]) < 1e-30
    # without conditions (an unconditional model, or --marginal) the pick alone decides
    flat, _ = aggregate_prior(mu, logvar, None, heldout_fraction=0.0)
    z = flat.draw(torch.zeros(3, 2), torch.tensor([0.1, 0.5, 0.9]))
    assert torch.equal(z.double(), mu.half().double())


def test_the_density_is_the_mean_of_the_posteriors():
    mu, logvar, cond = _posteriors()
    prior, _ = aggregate_prior(mu, logvar, None, heldout_fraction=0.0)
    x = torch.tensor([[0.3, -0.2], [3.9, -3.5], [10.0, 10.0]], dtype=torch.float64)
    # stored in half precision: the known answer of the rounded means and variances
    m16, sd16 = mu.half().double(), torch.exp(logvar).half().double().sqrt()
    dens = torch.distributions.Normal(m16[None], sd16[None]).log_prob(x[:, None]).sum(-1)
    expect = torch.logsumexp(dens, 1) - math.log(3)
    assert torch.allclose(prior.log_likelihood(x), expect, atol=1e-8)
    assert torch.allclose(prior.means, mu, rtol=1e-3)
    # draws of the sampled molecules score the prior above N(0, I) when the posteriors are
    # far from it; the held-out molecules are left out of the components
    gen = torch.Generator().manual_seed(0)
    many = torch.randn(400, 2, generator=gen, dtype=torch.float64) * 0.1 + 3.0
    prior, report = aggregate_prior(many, torch.full_like(many, math.log(0.01)), seed=1)
    assert report["n_heldout"] == 40 and report["n_fit"] == 360 == len(prior.weights)
    assert report["heldout_ll_z"] > report["normal_ll_z"] + 5


def test_the_record_round_trips_and_bad_inputs_are_named(tmp_path):
    mu, logvar, cond = _posteriors()
    prior, _ = aggregate_prior(mu, logvar, cond, heldout_fraction=0.0)
    path = tmp_path / "p.pt"
    torch.save({"latent_prior": prior.record()}, path)
    record = torch.load(path, weights_only=True)["latent_prior"]
    again = LatentPrior.from_record(record, latent_dim=2, condition_dim=1)
    eps, pick, c = torch.randn(5, 2), torch.rand(5), torch.randn(5, 1)
    assert again.diagonal and torch.equal(again.draw(eps, pick, c), prior.draw(eps, pick, c))
    with pytest.raises(InputFileError, match="variances must be > 0"):
        LatentPrior.from_record({**record, "covariances": -record["covariances"]},
                                latent_dim=2, condition_dim=1)  # fmt: skip
    with pytest.raises(ConfigError, match="--bandwidth"):
        aggregate_prior(mu, logvar, cond, bandwidth=0.0)
    bad = logvar.clone()
    bad[1, 0] = float("inf")
    with pytest.raises(UserError, match="not all finite"):
        aggregate_prior(mu, bad, cond)


def test_the_pick_is_the_inverse_cdf_of_the_responsibilities_over_many_rows():
    """The fast pick (unnormalized cumulative sums, in chunks of rows) chooses what the
    normalized responsibilities choose, for an aggregate posterior with many components and a
    batch that spans several chunks, and counts over many draws follow the probabilities."""
    gen = torch.Generator().manual_seed(3)
    k = 700
    mu = torch.randn(k, 4, generator=gen, dtype=torch.float64)
    logvar = torch.randn(k, 4, generator=gen, dtype=torch.float64) * 0.3 - 1.0
    cond = torch.randn(k, 2, generator=gen, dtype=torch.float64)
    prior, _ = aggregate_prior(mu, logvar, cond, bandwidth=0.5, heldout_fraction=0.0)
    rows = torch.randn(1000, 2, generator=gen, dtype=torch.float64)
    pick = torch.rand(1000, generator=gen, dtype=torch.float64)
    cum = torch.cumsum(prior.responsibilities(rows), 1)
    expect = torch.searchsorted(cum, pick[:, None], right=True).squeeze(1).clamp(max=k - 1)
    assert torch.equal(prior.components(pick, rows), expect)
    # far from every molecule one component takes nearly all the probability: the extreme
    # picks choose as the normalized inverse CDF does (components below round-off never)
    far = torch.tensor([[50.0, 50.0]], dtype=torch.float64).expand(3, -1)
    edge_pick = torch.tensor([0.0, 0.5, 1 - 1e-12], dtype=torch.float64)
    cum_far = torch.cumsum(prior.responsibilities(far), 1)
    want = torch.searchsorted(cum_far, edge_pick[:, None], right=True).squeeze(1).clamp(max=k - 1)
    assert torch.equal(prior.components(edge_pick, far), want)
    assert float(prior.responsibilities(far)[0, want[1]]) > 0.5
    # the draws of one condition row: each component about as often as its probability
    one = rows[:1].expand(20000, -1)
    counts = torch.bincount(prior.components(torch.rand(20000, generator=gen), one), minlength=k)
    p = prior.responsibilities(rows[:1])[0]
    assert float((counts / 20000 - p).abs().max()) < 0.02
    # the draw's latent is the picked component's mean plus its sd times the normals
    eps = torch.randn(1000, 4, generator=gen)
    z = prior.draw(eps, pick, rows)
    want = prior.means[expect, :4] + prior.covariances[expect, :4].sqrt() * eps.double()
    assert torch.allclose(z.double(), want, atol=1e-6)
    with pytest.raises(ValueError, match=r"needs conditions \(B, 2\)"):
        prior.components(pick, None)


def test_the_pick_of_a_diagonal_prior_with_its_own_variances_and_weights_known_answer():
    """A diagonal prior in general (each component its own condition variances, unequal
    weights, some 0): responsibilities and picks against the densities computed directly."""
    gen = torch.Generator().manual_seed(5)
    k, lat, p = 300, 3, 2
    means = torch.randn(k, lat + p, generator=gen, dtype=torch.float64)
    var = torch.exp(torch.randn(k, lat + p, generator=gen, dtype=torch.float64))
    w = torch.rand(k, generator=gen, dtype=torch.float64)
    w[::7] = 0
    prior = LatentPrior(w, means, var, lat)
    rows = torch.randn(600, p, generator=gen, dtype=torch.float64)
    pick = torch.rand(600, generator=gen, dtype=torch.float64)
    m, sd = prior.means[:, lat:], prior.covariances[:, lat:].sqrt()
    log_n = torch.distributions.Normal(m[None], sd[None]).log_prob(rows[:, None]).sum(-1)
    resp = torch.softmax(torch.log(prior.weights) + log_n, 1)
    assert torch.allclose(prior.responsibilities(rows), resp, atol=1e-12)
    want = torch.searchsorted(resp.cumsum(1), pick[:, None], right=True).squeeze(1)
    comp = prior.components(pick, rows)
    assert torch.equal(comp, want.clamp(max=k - 1))
    assert not bool((prior.weights[comp] == 0).any())  # a weight of 0 is never drawn
    with pytest.raises(ValueError, match="a condition row per pick"):
        prior.components(pick[:256], rows[:300])
