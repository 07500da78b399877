"""A latent prior fitted to the aggregate posterior of a trained graph VAE.

A VAE is trained to decode draws of ``q(z|x)``; sampling draws ``z ~ N(0, I)`` and hopes the
two agree. They do not quite: the aggregate posterior ``q(z) = E_x q(z|x)`` of
``pretrained:moses`` is correlated across dimensions (a full Gaussian fitted to it beats
``N(0, I)`` by ~4 nats per molecule on held-out molecules), so prior draws land where the
decoder saw few latents. Ex-post density estimation (Ghosh et al., "From variational to
deterministic autoencoders", ICLR 2020) fits a density to encoded training molecules after
training and samples from it instead. The network is not touched.

Here the density is a Gaussian mixture (scikit-learn's EM, full covariances) over draws of
``q(z|x)`` of training molecules (``z = mu + sigma * eps``), joined for a conditional VAE with
the molecule's standardized properties ``c`` (the encoder does not see ``c``, so ``z`` carries
property information). Sampling keeps the condition-table draw of
:func:`medgen.molecules.sampling.draw_noise` and draws ``z`` from the mixture conditioned on
that row: component ``k`` with probability ``∝ pi_k N(c; m_k^c, S_k^cc)``, then
``z = m_k^z + S_k^zc (S_k^cc)^-1 (c - m_k^c) + chol(S_k^{z|c}) eps`` with the molecule's own
``eps ~ N(0, I)``. Property-targeted draws (rows meeting a target) thus get latents typical of
molecules with those properties.

``python -m medgen.molecules.prior <ckpt> --out <new ckpt>`` fits the mixture on ``--n``
(50,000) training molecules and writes a copy of the checkpoint with a ``latent_prior`` record
(plain tensors and numbers: it loads with ``torch.load(weights_only=True)``; the slim tool keeps
it), and reports the held-out log-likelihood per molecule of the mixture and of ``N(0, I)``.
``medgen sample latent_prior=auto`` (the default) then draws from it; ``latent_prior=normal``
draws as before.

``--aggregate`` stores the aggregate posterior itself instead of a fit to it: one diagonal
component per encoded molecule, ``q(z|x_i) = N(mu_i, diag sigma_i^2)``, joined with the
molecule's conditions smoothed by ``--bandwidth`` (standardized units). That is the prior the
ELBO is best with (Hoffman & Johnson, "ELBO surgery", 2016; VampPrior, Tomczak & Welling 2018,
with the training molecules as pseudo-inputs): a draw picks a training molecule (for a
conditional VAE, one whose properties lie near the drawn condition row) and samples its
posterior, so the decoder only sees latents of the kind it was trained on. The record grows
with ``--n`` (``(L + P) * 2`` floats per molecule).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medgen.errors import (
    ConfigError,
    InputFileError,
    UserError,
)
from medgen.utils.logging import get_logger

log = get_logger(__name__)

#: the checkpoint's top-level key holding the prior
KEY = "latent_prior"
FORMAT = 1
DEFAULT_N = 50_000
DEFAULT_COMPONENTS = 8
HELDOUT_FRACTION = 0.1
DEFAULT_BANDWIDTH = 0.1  # --aggregate: the conditions' smoothing, in standard deviations
REG_COVAR = 1e-4  # added to each covariance's diagonal (scikit-learn's regularization)
CHOICES = ("auto", "fitted", "normal")
PICK_ROWS = 256  # rows per (rows, K) buffer when picking components


class LatentPrior:
    """A Gaussian mixture over ``[z, c]`` (``(L + P)`` dims; ``P = 0`` for an unconditional
    VAE): ``weights (K,)``, ``means (K, L + P)``, ``covariances (K, L + P, L + P)``, or
    ``(K, L + P)`` diagonal variances (the aggregate posterior, :func:`aggregate_prior`)."""

    def __init__(
        self,
        weights: torch.Tensor,
        means: torch.Tensor,
        covariances: torch.Tensor,
        latent_dim: int,
    ):
        # on the CPU, where draw_noise draws; float32 values (what the record stores), so a
        # prior fitted in memory draws what it draws after saving and loading
        weights, means, covariances = (
            torch.as_tensor(t).detach().to("cpu", torch.float32).to(torch.float64)
            for t in (weights, means, covariances)
        )
        k, d = means.shape if means.ndim == 2 else (0, 0)
        self.diagonal = covariances.ndim == 2
        if self.diagonal:  # stored as float16 (one component per molecule): draw what loads
            means, covariances = (
                t.to(torch.float16).to(torch.float64) for t in (means, covariances)
            )
        if (k == 0 or weights.shape != (k,)
                or covariances.shape != ((k, d) if self.diagonal else (k, d, d))
                or not 0 < latent_dim <= d):  # fmt: skip
            raise ValueError(
                f"a latent prior needs weights (K,), means (K, D), covariances (K, D, D) with "
                f"0 < latent_dim <= D; got {tuple(weights.shape)}, {tuple(means.shape)}, "
                f"{tuple(covariances.shape)}, latent_dim={latent_dim}"
            )
        if not (torch.isfinite(weights).all() and torch.isfinite(means).all()
                and torch.isfinite(covariances).all()):  # fmt: skip
            raise ValueError("a latent prior's weights, means and covariances must be finite")
        if (weights < 0).any() or not weights.sum() > 0:
            raise ValueError("a latent prior's weights must be >= 0 with a positive sum")
        self.weights = weights / weights.sum()
        self.means = means
        self.latent_dim = int(latent_dim)
        self.condition_dim = d - self.latent_dim
        self._cum_weights = torch.cumsum(self.weights, 0)  # (K,): the picks without conditions
        if self.diagonal:
            if not bool((covariances > 0).all()):
                raise ValueError("a latent prior's diagonal variances must be > 0")
            self.covariances = covariances
            self._sd = covariances.sqrt()  # (K, D): z and c independent within a component
            self._condition_logits_diag()
            return
        self.covariances = (covariances + covariances.transpose(1, 2)) / 2
        lat = slice(0, self.latent_dim)
        con = slice(self.latent_dim, d)
        s_zz = self.covariances[:, lat, lat]
        if self.condition_dim:
            s_cc = self.covariances[:, con, con]
            s_zc = self.covariances[:, lat, con]
            self._chol_cc = _cholesky(s_cc)
            # A_k = S_zc S_cc^-1, from the Cholesky factor: (S_cc^-1 S_cz)^T
            self._gain = torch.cholesky_solve(s_zc.transpose(1, 2), self._chol_cc).transpose(1, 2)
            s_zz = s_zz - self._gain @ s_zc.transpose(1, 2)
        self._chol_z = _cholesky(s_zz)  # (K, L, L): of S_zz, or of S_{z|c}

    def _condition_logits_diag(self) -> None:
        """For a diagonal prior, the condition part of each component's log-probability as one
        product: ``[c, c^2] @ _cond_w + _cond_b`` is ``log w_k + log N(c; m_k, diag s_k^2)`` up
        to a constant per row (which the pick does not see). An aggregate posterior has a
        component per molecule, so this is the cost of drawing from it."""
        con = slice(self.latent_dim, None)
        means, prec = self.means[:, con], self._sd[:, con].pow(-2)  # (K, P)
        self._cond_w = torch.cat([means * prec, -0.5 * prec], 1).t().contiguous()  # (2P, K)
        log_det = torch.log(self._sd[:, con]).sum(1)
        self._cond_b = torch.log(self.weights) - 0.5 * (means * means * prec).sum(1) - log_det

    # ------------------------------------------------------------------------------ sampling
    def _check_cond(self, cond: torch.Tensor | None) -> torch.Tensor:
        if cond is None or cond.ndim != 2 or cond.shape[-1] != self.condition_dim:
            shape = None if cond is None else tuple(cond.shape)
            raise ValueError(f"this prior needs conditions (B, {self.condition_dim}), got {shape}")
        return torch.as_tensor(cond, dtype=torch.float64)

    def _logits(self, cond: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` log-probabilities of the components given the rows' conditions, each row
        up to its own constant."""
        if self.diagonal:
            return torch.addmm(self._cond_b, torch.cat([cond, cond * cond], 1), self._cond_w)
        con = slice(self.latent_dim, None)
        return torch.log(self.weights) + _log_normal(cond, self.means[:, con], self._chol_cc)

    def responsibilities(self, cond: torch.Tensor | None) -> torch.Tensor:
        """``(B, K)`` component probabilities of each row ``cond (B, P)``; the weights when the
        prior has no condition part (``cond`` then gives the batch size, or None for one row)."""
        if not self.condition_dim:
            b = 1 if cond is None else len(cond)
            return self.weights.expand(b, -1)
        return torch.softmax(self._logits(self._check_cond(cond)), dim=1)

    def components(self, pick: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``(B,)`` the component each uniform ``pick (B,)`` chooses by inverse CDF over the
        responsibilities of its row's condition: component ``k`` where the cumulative
        probability first exceeds the pick.

        Done without normalizing: the cumulative sum of ``exp(logit - row max)`` against the
        pick times the row's total, in chunks of rows (a ``(B, K)`` buffer per chunk)."""
        if pick.ndim != 1:
            raise ValueError(f"components needs pick (B,); got {tuple(pick.shape)}")
        pick = pick.to(torch.float64)
        top = len(self.weights) - 1
        if not self.condition_dim:
            # right=True: a pick of exactly 0 never lands on a component of probability 0
            return torch.searchsorted(self._cum_weights, pick, right=True).clamp(max=top)
        cond = self._check_cond(cond)
        if len(cond) != len(pick):
            raise ValueError(f"components needs a condition row per pick; got {len(cond)} rows "
                             f"for {len(pick)} picks")  # fmt: skip
        out = torch.empty(len(pick), dtype=torch.long)
        for i in range(0, len(pick), PICK_ROWS):
            rows = slice(i, i + PICK_ROWS)
            logits = self._logits(cond[rows])
            logits.sub_(logits.amax(1, keepdim=True)).exp_()
            cum = logits.cumsum_(1)
            target = (pick[rows] * cum[:, -1])[:, None]
            out[rows] = torch.searchsorted(cum, target, right=True).squeeze(1)
        return out.clamp(max=top)  # round-off at the top of the last bin

    def draw(
        self, eps: torch.Tensor, pick: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Latents ``(B, L)`` from standard normals ``eps (B, L)``, uniforms ``pick (B,)`` in
        [0, 1) that choose each row's component, and (a conditional prior) the rows' standardized
        conditions ``cond (B, P)``. Row ``b`` depends on row ``b`` of the inputs only."""
        if eps.ndim != 2 or eps.shape[1] != self.latent_dim or pick.shape != (len(eps),):
            raise ValueError(f"draw needs eps (B, {self.latent_dim}) and pick (B,); got "
                             f"{tuple(eps.shape)} and {tuple(pick.shape)}")  # fmt: skip
        if self.diagonal:  # the scale is a diagonal: no (B, L, L) matrices
            comp = self.components(pick, cond)
            lat = slice(0, self.latent_dim)
            z = self.means[comp, lat] + self._sd[comp, lat] * eps.to(torch.float64)
            return z.to(eps.dtype)
        shift, scale = self.affine(pick, cond)
        z = shift + (scale @ eps.to(torch.float64)[..., None]).squeeze(-1)
        return z.to(eps.dtype)

    def affine(
        self, pick: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's draw as an affine map of its normals, ``z = shift + scale @ eps``:
        ``shift (B, L)`` and ``scale (B, L, L)`` (float64) of the component that ``pick (B,)``
        chooses, given (a conditional prior) the row's condition ``cond (B, P)``. Guidance works
        in ``eps``, where the prior is ``N(0, I)`` whatever the mixture."""
        if pick.ndim != 1:
            raise ValueError(f"affine needs pick (B,); got {tuple(pick.shape)}")
        comp = self.components(pick, cond)
        shift = self.means[comp, : self.latent_dim].clone()
        if self.diagonal:  # z does not depend on c within a component
            return shift, torch.diag_embed(self._sd[comp, : self.latent_dim])
        if self.condition_dim:
            assert cond is not None
            diff = cond.to(torch.float64) - self.means[comp, self.latent_dim :]
            shift += (self._gain[comp] @ diff[..., None]).squeeze(-1)
        return shift, self._chol_z[comp]

    # ------------------------------------------------------------------------ density, record
    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """``(N,)`` log-density of joint rows ``x (N, L + P)``."""
        if self.diagonal:  # in row chunks: K is the number of encoded molecules
            log_w = torch.log(self.weights)
            return torch.cat([
                torch.logsumexp(log_w + _log_normal_diag(x[i : i + 1024], self.means, self._sd), 1)
                for i in range(0, len(x), 1024)
            ])  # fmt: skip
        log_n = _log_normal(x, self.means, _cholesky(self.covariances))
        return torch.logsumexp(torch.log(self.weights) + log_n, dim=1)

    def record(self, **info: Any) -> dict[str, Any]:
        """The checkpoint record: the mixture as float32 tensors (an aggregate posterior's means
        and variances as float16), plus ``info`` (numbers)."""
        return {
            "format": FORMAT,
            "latent_dim": self.latent_dim,
            "condition_dim": self.condition_dim,
            "weights": self.weights.float(),
            # an aggregate posterior holds a component per molecule: half precision halves
            # the record (a mean's rounding, ~1e-3 of it, is far below its posterior's spread)
            "means": self.means.to(torch.float16 if self.diagonal else torch.float32),
            "covariances": self.covariances.to(torch.float16 if self.diagonal else torch.float32),
            **info,
        }

    @classmethod
    def from_record(cls, record: Any, *, latent_dim: int, condition_dim: int) -> LatentPrior:
        """The prior of a checkpoint's record; ``InputFileError`` when it is malformed or does
        not fit a model with ``latent_dim`` and ``condition_dim`` (a prior without condition
        columns fits any ``condition_dim``)."""
        if not isinstance(record, Mapping) or record.get("format") != FORMAT:
            raise InputFileError(f"the checkpoint's {KEY} record is not format {FORMAT}; refit "
                                 "it with python -m medgen.molecules.prior")  # fmt: skip
        # a prior over z alone (condition_dim 0) fits a conditional model too (--marginal)
        if record.get("latent_dim") != latent_dim or record.get("condition_dim") not in (
            0,
            condition_dim,
        ):
            raise InputFileError(
                f"the checkpoint's {KEY} is for latent_dim={record.get('latent_dim')}, "
                f"condition_dim={record.get('condition_dim')}; the model has {latent_dim}, "
                f"{condition_dim}"
            )
        try:
            return cls(record["weights"], record["means"], record["covariances"], latent_dim)
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            raise InputFileError(f"the checkpoint's {KEY} record does not fit: {err}") from err


def _log_normal(x: torch.Tensor, means: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` log N(x_n; means_k, C_k C_k^T) of rows ``x (N, D)``, components ``means (K, D)``
    with Cholesky factors ``chol (K, D, D)``."""
    diff = torch.as_tensor(x, dtype=torch.float64)[:, None, :] - means[None]  # (N, K, D)
    y = torch.linalg.solve_triangular(chol[None], diff[..., None], upper=False).squeeze(-1)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(-1)  # (K,)
    return -0.5 * ((y * y).sum(-1) + logdet + means.shape[1] * math.log(2 * math.pi))


def _log_normal_diag(x: torch.Tensor, means: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` log N(x_n; means_k, diag sd_k^2) of rows ``x (N, D)``; as a sum of three
    products, so no ``(N, K, D)`` tensor is made (the aggregate posterior has K ~ 10^4)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    prec = sd.pow(-2)  # (K, D)
    quad = (x * x) @ prec.t() - 2 * x @ (means * prec).t() + (means * means * prec).sum(1)
    logdet = 2 * torch.log(sd).sum(1)
    return -0.5 * (quad.clamp(min=0) + logdet + means.shape[1] * math.log(2 * math.pi))


def _cholesky(cov: torch.Tensor) -> torch.Tensor:
    chol, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        raise ValueError("a latent prior covariance is not positive definite")
    return chol


def standard_normal_ll(z: torch.Tensor) -> torch.Tensor:
    """``(N,)`` log-density of ``z (N, L)`` under N(0, I)."""
    z = torch.as_tensor(z, dtype=torch.float64)
    return -0.5 * ((z * z).sum(1) + z.shape[1] * math.log(2 * math.pi))


# ------------------------------------------------------------------------------------ fitting


def fit_prior(
    z: torch.Tensor,
    cond: torch.Tensor | None = None,
    *,
    components: int = DEFAULT_COMPONENTS,
    seed: int = 0,
    heldout_fraction: float = HELDOUT_FRACTION,
) -> tuple[LatentPrior, dict[str, Any]]:
    """Fit the mixture to posterior draws ``z (N, L)`` (and standardized conditions
    ``cond (N, P)``); ``heldout_fraction`` of the rows (seeded) are held out to report the
    latent log-likelihood per molecule of the fit and of N(0, I) (``heldout_ll_z``,
    ``normal_ll_z``: the marginal over ``z``, so the two compare). Returns ``(prior, report)``."""
    from sklearn.mixture import GaussianMixture

    z = torch.as_tensor(z, dtype=torch.float64)
    x = z if cond is None else torch.cat([z, torch.as_tensor(cond, dtype=torch.float64)], 1)
    if not torch.isfinite(x).all():
        raise UserError("latent prior: the encoded latents or conditions are not all finite "
                        "(a diverged model?)")  # fmt: skip
    n = len(x)
    held, fit_rows = _split(n, seed, heldout_fraction)
    n_held = len(held)
    if len(fit_rows) < 10 * components:
        raise UserError(f"a {components}-component latent prior needs at least "
                        f"{10 * components} molecules to fit on, got {len(fit_rows)}")  # fmt: skip
    gmm = GaussianMixture(components, covariance_type="full", reg_covar=REG_COVAR,
                          random_state=seed, max_iter=300)  # fmt: skip
    try:
        gmm.fit(x[fit_rows].numpy())
        prior = LatentPrior(torch.from_numpy(gmm.weights_), torch.from_numpy(gmm.means_),
                            torch.from_numpy(gmm.covariances_), z.shape[1])  # fmt: skip
    except ValueError as err:  # an ill-conditioned fit (e.g. too many components for the data)
        raise UserError(f"the {components}-component latent prior did not fit {len(fit_rows)} "
                        f"molecules ({' '.join(str(err).split())}); use fewer --components "
                        "or more --n") from err  # fmt: skip
    report: dict[str, Any] = {
        "components": int(components),
        "molecules": int(n),
        "n_fit": int(len(fit_rows)),
        "n_heldout": int(n_held),
        "converged": bool(gmm.converged_),
        "seed": int(seed),
    }
    if n_held:
        lat = z.shape[1]
        z_only = LatentPrior(prior.weights, prior.means[:, :lat],
                             prior.covariances[:, :lat, :lat], lat)  # fmt: skip
        report.update(_heldout_scores(z_only, z[held]))
    return prior, report


def _split(n: int, seed: int, heldout_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out and kept row indices of ``n`` molecules, a seeded permutation."""
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    n_held = int(round(n * heldout_fraction))
    return order[:n_held], order[n_held:]


def _heldout_scores(z_only: LatentPrior, z_held: torch.Tensor) -> dict[str, float]:
    """Mean log-likelihood per held-out molecule under the prior over ``z`` and N(0, I)."""
    return {"heldout_ll_z": float(z_only.log_likelihood(z_held).mean()),
            "normal_ll_z": float(standard_normal_ll(z_held).mean())}  # fmt: skip


def aggregate_prior(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    cond: torch.Tensor | None = None,
    *,
    bandwidth: float = DEFAULT_BANDWIDTH,
    seed: int = 0,
    heldout_fraction: float = HELDOUT_FRACTION,
) -> tuple[LatentPrior, dict[str, Any]]:
    """The aggregate posterior of encoded molecules as a prior: one diagonal component per
    molecule, ``N(mu_i, diag exp(logvar_i))`` over ``z`` joined with ``N(c_i, bandwidth^2 I)``
    over its standardized conditions ``cond (N, P)``; equal weights. ``heldout_fraction`` of
    the molecules (seeded) are left out of it and their posterior draws score it, as in
    :func:`fit_prior` (``heldout_ll_z``, ``normal_ll_z``). Returns ``(prior, report)``."""
    mu = torch.as_tensor(mu, dtype=torch.float64)
    var = torch.exp(torch.as_tensor(logvar, dtype=torch.float64))
    if not (torch.isfinite(mu).all() and torch.isfinite(var).all() and (var > 0).all()):
        raise UserError("latent prior: the encoded means or variances are not all finite "
                        "(a diverged model?)")  # fmt: skip
    if cond is not None and not bandwidth > 0:
        raise ConfigError("--bandwidth", bandwidth, "a number > 0")
    n = len(mu)
    held, keep = _split(n, seed, heldout_fraction)
    n_held, keep = len(held), keep.sort().values
    if len(keep) < 2:
        raise UserError(f"an aggregate-posterior prior needs at least 2 molecules, got {len(keep)}")
    means, variances = mu[keep], var[keep]
    if cond is not None:
        c = torch.as_tensor(cond, dtype=torch.float64)[keep]
        means = torch.cat([means, c], 1)
        variances = torch.cat([variances, torch.full_like(c, float(bandwidth) ** 2)], 1)
    prior = LatentPrior(torch.ones(len(keep)), means, variances, mu.shape[1])
    report: dict[str, Any] = {
        "kind": "aggregate",
        "components": int(len(keep)),
        "molecules": int(n),
        "n_fit": int(len(keep)),
        "n_heldout": int(n_held),
        "converged": True,
        "seed": int(seed),
        "bandwidth": float(bandwidth) if cond is not None else None,
    }
    if n_held:
        lat = mu.shape[1]
        z_only = LatentPrior(prior.weights, prior.means[:, :lat], prior.covariances[:, :lat], lat)
        gen = torch.Generator().manual_seed(seed)
        z_held = mu[held] + var[held].sqrt() * torch.randn(mu[held].shape, generator=gen,
                                                          dtype=torch.float64)  # fmt: skip
        report.update(_heldout_scores(z_only, z_held))
    return prior, report


def _encoded(vae: Any, smiles: Sequence[str]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The encodable ``smiles`` (what the vocabulary cannot hold is dropped) and their posterior
    means and log-variances ``(M, L)``, 500 at a time."""
    from medgen.molecules.conditioning import encode_many

    kept, _ = encode_many(vae, smiles)
    parts = [vae.posterior(kept[i : i + 500]) for i in range(0, len(kept), 500)]
    empty = torch.zeros(0, vae.latent_dim)
    mu = torch.cat([m for m, _ in parts]) if parts else empty
    logvar = torch.cat([lv for _, lv in parts]) if parts else empty
    return kept, mu, logvar


def _with_conditions(
    vae: Any, kept: Sequence[str], *rows: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """``rows`` (per molecule of ``kept``) and the molecules' standardized conditions ``(M, P)``,
    without the molecules RDKit gives no property value; ``rows`` unchanged and None for an
    unconditional VAE."""
    from medgen.molecules.conditioning import property_table

    stats = vae.condition_stats
    if stats is None:
        return list(rows), None
    table = torch.tensor(property_table(list(kept), stats["names"]), dtype=torch.float32)
    ok = torch.isfinite(table).all(1)
    return [r[ok] for r in rows], vae.vae.standardize(table[ok])


def encode_posteriors(
    vae: Any, smiles: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
    """Posterior means and log-variances ``(M, L)`` of the encodable ``smiles``, their
    standardized conditions ``(M, P)`` (None for an unconditional VAE) and how many were
    skipped. ``vae``: a :class:`~medgen.molecules.api.MoleculeVAE`."""
    kept, mu, logvar = _encoded(vae, smiles)
    (mu, logvar), cond = _with_conditions(vae, kept, mu, logvar)
    return mu, logvar, cond, len(smiles) - len(mu)


def encode_for_prior(
    vae: Any, smiles: Sequence[str], *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Posterior draws ``(M, L)`` of the encodable ``smiles`` (seeded per molecule), their
    standardized conditions ``(M, P)`` (None for an unconditional VAE) and how many were
    skipped. ``vae``: a :class:`~medgen.molecules.api.MoleculeVAE`."""
    from medgen.molecules.sampling import posterior_draws

    kept, mu, logvar = _encoded(vae, smiles)
    # each 500 with its own seed, as MoleculeVAE.encode(chunk, sample=True, seed=seed + i) draws
    z = torch.cat([posterior_draws(mu[i : i + 500], logvar[i : i + 500], seed + i)
                   for i in range(0, len(mu), 500)]) if len(mu) else mu  # fmt: skip
    (z,), cond = _with_conditions(vae, kept, z)
    return z, cond, len(smiles) - len(z)


def add_prior(
    checkpoint: str | Path,
    out: str | Path,
    *,
    data: str | Path | None = None,
    n: int = DEFAULT_N,
    components: int = DEFAULT_COMPONENTS,
    seed: int = 0,
    marginal: bool = False,
    aggregate: bool = False,
    bandwidth: float = DEFAULT_BANDWIDTH,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fit the prior of ``checkpoint`` on ``n`` molecules of ``data`` (None: the run's training
    split) and write the checkpoint with it to ``out`` (atomically; never over an input).
    ``marginal``: a conditional model's prior over ``z`` alone, drawn independently of the
    condition row. ``aggregate``: store the aggregate posterior of the ``n`` molecules instead
    of a mixture fitted to it (:func:`aggregate_prior`, conditions smoothed by ``bandwidth``).
    Returns the record's report (without the tensors)."""
    from medgen.molecules.api import MoleculeVAE
    from medgen.molecules.conditioning import (
        _read_smiles,
        check_new_checkpoint,
        training_smiles,
        write_with_record,
    )
    from medgen.utils.provenance import file_sha256

    file, out = check_new_checkpoint(checkpoint, out, data=data, overwrite=overwrite)
    if n < 100:
        raise ConfigError("--n", n, "an integer >= 100")
    if components < 1:
        raise ConfigError("--components", components, "an integer >= 1")
    if aggregate and not bandwidth > 0:
        raise ConfigError("--bandwidth", bandwidth, "a number > 0")
    vae = MoleculeVAE.from_checkpoint(file)
    if data is None:
        smiles, source = training_smiles(file), "the run's training split"
    else:
        smiles, source = _read_smiles(Path(data).expanduser())
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(smiles), size=min(n, len(smiles)), replace=False))
    log.info("latent prior: encoding %d molecules", len(picks))
    chosen = [smiles[int(k)] for k in picks]
    if aggregate:
        mu, logvar, cond, skipped = encode_posteriors(vae, chosen)
        prior, report = aggregate_prior(mu, logvar, None if marginal else cond,
                                        bandwidth=bandwidth, seed=seed)  # fmt: skip
    else:
        z, cond, skipped = encode_for_prior(vae, chosen, seed=seed)
        prior, report = fit_prior(z, None if marginal else cond, components=components,
                                  seed=seed)  # fmt: skip
    report.update(source=source, skipped=int(skipped), checkpoint_sha256=file_sha256(file),
                  marginal=bool(marginal and cond is not None))  # fmt: skip
    write_with_record(file, out, KEY, prior.record(fitted_on=report))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medgen.molecules.prior",
        description="fit a latent prior (Gaussian mixture over encoded training molecules) and "
        "store it in a new checkpoint",
    )
    parser.add_argument("checkpoint", help="a graph VAE .ckpt, run dir or pretrained:<name>")
    parser.add_argument("--out", required=True, help="the new checkpoint (.ckpt)")
    parser.add_argument("--data", help="SMILES file to fit on (default: the run's training set)")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="molecules to fit on")
    parser.add_argument("--components", type=int, default=DEFAULT_COMPONENTS,
                        help="mixture components")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset, draws and split")
    parser.add_argument("--marginal", action="store_true",
                        help="fit z alone, drawn independently of the conditions")  # fmt: skip
    parser.add_argument("--aggregate", action="store_true",
                        help="store the aggregate posterior of the --n molecules (one component "
                        "per molecule) instead of fitting a mixture to it")  # fmt: skip
    parser.add_argument(
        "--bandwidth",
        type=float,
        default=DEFAULT_BANDWIDTH,
        help="--aggregate: smoothing of the conditions (standardized units)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    from medgen.utils.logging import configure_logging

    configure_logging()
    try:
        report = add_prior(args.checkpoint, args.out, data=args.data, n=args.n,
                           components=args.components, seed=args.seed,
                           marginal=args.marginal, aggregate=args.aggregate,
                           bandwidth=args.bandwidth, overwrite=args.overwrite)  # fmt: skip
    except UserError as err:
        text = " ".join(str(err).split())
        print(f"medgen.molecules.prior: error: {text}", file=sys.stderr)
        return 2
    print(f"latent prior: {report['components']} components on {report['n_fit']} molecules "
          f"({report['skipped']} skipped), converged={report['converged']}")  # fmt: skip
    if "heldout_ll_z" in report:
        gain = report["heldout_ll_z"] - report["normal_ll_z"]
        print(f"held-out log-likelihood of z per molecule ({report['n_heldout']}): fitted "
              f"{report['heldout_ll_z']:.2f}, N(0, I) {report['normal_ll_z']:.2f} "
              f"(gain {gain:+.2f} nats)")  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
