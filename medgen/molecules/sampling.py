"""Decoding molecules from a graph VAE: per-molecule noise, prior samples, reconstructions.

Sampling is reproducible per molecule: molecule ``i`` of seed ``s`` draws its latent and every
decoding choice from its own generator, :func:`medgen.utils.seeding.sample_generator` ``(s, i)``,
so it is the same whatever the batch size, the rank that draws it or how many are drawn with it.
The Lightning module, the scripting API and the validation callback all decode through here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import torch

from medgen.errors import ConfigError
from medgen.molecules.graph import GraphBatch, Vocabulary, batch_to_mols, batch_to_smiles
from medgen.molecules.stereo import StereoBatch, labelled_smiles
from medgen.molecules.vae import GraphVAE, check_temperature
from medgen.utils.seeding import sample_generator, sample_seed

if TYPE_CHECKING:
    from medgen.molecules.prior import LatentPrior


def draw_noise(
    vae: GraphVAE,
    indices: Sequence[int],
    seed: int,
    *,
    device: torch.device | str = "cpu",
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents ``(B, L)`` of the prior (N(0, I) or the fitted one) and decoder uniforms
    ``(B, max_atoms + 1, W)`` in [0, 1) for molecules ``indices`` of ``seed``
    (``W = vae.noise_width()``).

    Row ``k`` comes from ``sample_generator(seed, indices[k])`` alone: first the latent, then the
    uniforms. Drawn on the CPU (the same numbers on every device), then moved to ``device``.

    A conditional VAE (``vae.condition_dim`` P > 0) gets ``(B, L + P)``: after ``z``, a row of its
    ``condition_table`` drawn (by the same generator, after the uniforms) from ``rows`` (indices
    into the table: the training molecules meeting a condition; None: every row).

    A model with a fitted latent prior (``vae.latent_prior``, :mod:`medgen.molecules.prior`)
    turns each row's normals into a draw of the mixture, conditioned on the row's condition:
    its generator draws one more uniform, last, to pick the component. Without one, the rows
    are exactly what they were before priors existed.
    """
    z, u, pick = _raw_noise(vae, indices, seed, rows)
    prior = getattr(vae, "latent_prior", None)
    if prior is not None and len(indices):
        p = int(getattr(vae, "condition_dim", 0))
        cond = z[:, vae.latent_dim :] if p and prior.condition_dim else None
        z[:, : vae.latent_dim] = prior.draw(z[:, : vae.latent_dim].contiguous(), pick, cond)
    return z.to(device), u.to(device)


def draw_whitened(
    vae: GraphVAE, indices: Sequence[int], seed: int, *, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """The draws of :func:`draw_noise` for an unconditional VAE, split as ``eps (B, L)``,
    ``shift (B, L)``, ``scale (B, L, L)`` (float64) and the uniforms, where ``shift + scale @
    eps`` in float64, cast to float32, is the latent :func:`draw_noise` returns; ``shift`` and
    ``scale`` are None without a fitted prior (``z = eps``). In ``eps`` the prior is ``N(0, I)``
    whatever the mixture: guidance moves ``eps``."""
    if int(getattr(vae, "condition_dim", 0)):
        raise ValueError("draw_whitened is for unconditional models")
    eps, u, pick = _raw_noise(vae, indices, seed, None)
    prior = getattr(vae, "latent_prior", None)
    if prior is None or not len(indices):
        return eps.to(device), None, None, u.to(device)
    shift, scale = prior.affine(pick)
    return eps.to(device), shift.to(device), scale.to(device), u.to(device)


def _raw_noise(
    vae: GraphVAE, indices: Sequence[int], seed: int, rows: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row, from its own generator: normals (then its condition-table row), uniforms and
    (a model with a fitted prior) the component pick, on the CPU."""
    dec = vae.decoder
    p = int(getattr(vae, "condition_dim", 0))
    width = vae.noise_width()
    z = torch.empty(len(indices), vae.latent_dim + p)
    u = torch.empty(len(indices), dec.max_atoms + 1, width)
    table = cast(torch.Tensor, vae.condition_table).cpu() if p else None
    if table is not None and rows is not None and len(rows) == 0:
        raise ValueError("no condition-table row to draw from")
    prior = getattr(vae, "latent_prior", None)
    pick = torch.empty(len(indices))
    steps, dim = dec.max_atoms + 1, vae.latent_dim
    pool = 0 if table is None else len(table) if rows is None else len(rows)
    picked: list[int] = []
    gen = torch.Generator()  # reseeded per row: the stream of sample_generator(seed, i)
    for k, i in enumerate(indices):
        gen.manual_seed(sample_seed(seed, int(i)))
        torch.randn(dim, generator=gen, out=z[k, :dim])
        torch.rand(steps, width, generator=gen, out=u[k])
        if table is not None:
            picked.append(int(torch.randint(pool, (1,), generator=gen)))
        if prior is not None:
            pick[k] = float(torch.rand(1, generator=gen))
    if table is not None and len(indices):
        at = torch.tensor(picked)
        z[:, dim:] = table[at if rows is None else rows.cpu()[at]]
    return z, u, pick


def posterior_draws(
    mu: torch.Tensor, logvar: torch.Tensor, seed: int, *, start: int = 0
) -> torch.Tensor:
    """Draws ``mu + sigma * eps`` of ``q(z|x)`` for rows ``(B, L)``, row ``k``'s ``eps`` from
    ``sample_generator(seed, start + k)`` on the CPU: a molecule's draw depends on its index,
    not on its batch or device."""
    eps = torch.empty(mu.shape)
    for k in range(len(mu)):
        eps[k] = torch.randn(mu.shape[1], generator=sample_generator(seed, start + k))
    return mu + eps.to(mu.device) * torch.exp(0.5 * logvar)


@contextmanager
def using_prior(vae: GraphVAE, prior: LatentPrior | None) -> Iterator[None]:
    """Draw with ``prior`` (None: N(0, I)) inside the block; the model's own prior after."""
    kept = getattr(vae, "latent_prior", None)
    vae.latent_prior = prior
    try:
        yield
    finally:
        vae.latent_prior = kept


@contextmanager
def latent_prior_choice(vae: GraphVAE, choice: str = "auto") -> Iterator[None]:
    """Draw with the model's fitted latent prior (``auto``, ``fitted``) or with N(0, I)
    (``normal``) inside the block; ``fitted`` without one is a ``ConfigError``."""
    from medgen.molecules.prior import CHOICES

    if choice not in CHOICES:
        raise ConfigError("latent_prior", choice, " | ".join(CHOICES))
    prior = getattr(vae, "latent_prior", None)
    if choice == "fitted" and prior is None:
        raise ConfigError("latent_prior", choice, "auto or normal: the checkpoint holds no "
                          "latent prior (fit one: python -m medgen.molecules.prior <ckpt> "
                          "--out <new .ckpt>)")  # fmt: skip
    if choice != "normal":
        yield
        return
    with using_prior(vae, None):
        yield


@torch.no_grad()
def decode_indices(
    vae: GraphVAE,
    vocab: Vocabulary,
    indices: Sequence[int],
    *,
    seed: int = 0,
    temperature: float = 1.0,
    rows: torch.Tensor | None = None,
) -> list[str | None]:
    """Molecules ``indices`` of ``seed`` from the prior, in one batch, as canonical SMILES.

    None only where RDKit rejected a decoded graph (the valence masks make that rare).
    ``temperature`` must be finite and > 0 (``UserError`` naming the value otherwise). ``rows``:
    a conditional VAE's allowed condition-table rows (:func:`draw_noise`).
    """
    temperature = check_temperature(temperature)
    if len(indices) == 0:
        return []
    was_training = vae.training
    vae.eval()
    try:
        device = next(vae.parameters()).device
        z, u = draw_noise(vae, indices, seed, device=device, rows=rows)
        return vae.decode_smiles(z, vocab, temperature=temperature, uniforms=u)
    finally:
        vae.train(was_training)


def sample_smiles(
    vae: GraphVAE,
    vocab: Vocabulary,
    n: int,
    *,
    seed: int = 0,
    temperature: float = 1.0,
    batch_size: int = 1000,
    start: int = 0,
) -> list[str | None]:
    """Molecules ``start .. start + n - 1`` of ``seed`` from the prior, ``batch_size`` at a time
    (see :func:`decode_indices`; the batch size never changes the result)."""
    temperature = check_temperature(temperature)
    out: list[str | None] = []
    for lo in range(0, n, max(1, batch_size)):
        indices = range(start + lo, start + min(n, lo + batch_size))
        out.extend(decode_indices(vae, vocab, indices, seed=seed, temperature=temperature))
    return out


@torch.no_grad()
def reconstruction_accuracy(
    vae: GraphVAE,
    vocab: Vocabulary,
    batch: GraphBatch,
    stereo: StereoBatch | None = None,
    cond: torch.Tensor | None = None,
) -> float:
    """Share of the graphs in ``batch`` whose greedy decode of the posterior mean is the same
    molecule (canonical SMILES without stereo of both graphs; isomeric, with their ``stereo``
    labels, for a model with a stereo head), in [0, 1].

    A conditional VAE decodes ``z`` with the molecules' own standardized properties ``cond
    (B, P)`` (:meth:`GraphVAE.standardize`), as in training: with the mean condition instead
    the decoder is asked for a molecule of average properties, not this one."""
    if vae.stereo_head is not None and stereo is None:
        raise ValueError("a stereo model's reconstruction needs the batch's stereo labels")
    if vae.condition_dim and cond is None:
        raise ValueError("a conditional model's reconstruction needs the molecules' properties")
    was_training = vae.training
    vae.eval()
    try:
        mu, _ = vae.encode(batch, stereo)  # (B, L)
        if vae.condition_dim:
            mu = torch.cat([mu, cast(torch.Tensor, cond).to(mu)], -1)  # (B, L + P)
        dec = vae.decoder
        # greedy decoding ignores the noise; passing it keeps the global RNG untouched
        u = torch.full((len(mu), dec.max_atoms + 1, vae.noise_width()), 0.5, device=mu.device)
        decoded = vae.decode_smiles(mu, vocab, temperature=0.0, uniforms=u)
    finally:
        vae.train(was_training)
    if vae.stereo_head is not None and stereo is not None:
        target = labelled_smiles(batch_to_mols(batch, vocab), stereo)
    else:
        target = batch_to_smiles(batch, vocab)
    hits = sum(d is not None and d == t for d, t in zip(decoded, target, strict=True))
    return hits / max(1, len(target))
