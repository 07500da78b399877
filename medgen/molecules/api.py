"""Scripting API over a trained graph VAE: sample, encode, decode, interpolate, optimize.

>>> vae = MoleculeVAE.from_checkpoint("outputs/train/<run>")          # doctest: +SKIP
>>> z = vae.encode(["CCO", "c1ccccc1O"])                              # (2, L)  # doctest: +SKIP
>>> vae.decode(z)                                                     # doctest: +SKIP
>>> vae.optimize("qed", n=10, smiles=training_smiles)                 # doctest: +SKIP

Sampling is reproducible per molecule (:mod:`medgen.molecules.sampling`): molecule ``i`` of seed
``s`` draws its latent and every decoding choice from its own generator seeded with ``(s, i)``, so
it is the same whatever the batch size or how many molecules are drawn with it. ``medgen sample``
draws the same molecules through :class:`~medgen.molecules.module.GraphVAEModule` directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch import nn

from medgen.errors import UserError
from medgen.molecules.graph import (
    FeaturizeError,
    Vocabulary,
    batch_to_smiles,
    collate_graphs,
    encode_tokens,
    round_trip,
    smiles_to_tokens,
)
from medgen.molecules.module import GraphVAEModule
from medgen.molecules.sampling import draw_noise, sample_smiles
from medgen.molecules.vae import GraphVAE
from medgen.utils.logging import get_logger
from medgen.utils.seeding import sample_generator

log = get_logger(__name__)

#: properties medgen can compute for any molecule (others come from a column of the training CSV)
COMPUTED_PROPERTIES = ("qed", "logp", "sa")


def property_function(name: str) -> Callable | None:
    """RDKit scorer ``f(mol) -> float`` for ``qed``, ``logp``, ``sa`` (None for other names)."""
    from medgen.chem import properties

    return {"qed": properties.qed, "logp": properties.logp, "sa": properties.sa_score}.get(
        name.lower()
    )


def score_smiles(name: str, smiles: Sequence[str | None]) -> list[float]:
    """Computed property of each SMILES (NaN where invalid)."""
    from medgen.chem.mol import parse_smiles

    fn = property_function(name)
    if fn is None:
        raise UserError(f"property {name!r} is not computable; choose {COMPUTED_PROPERTIES}")
    out = []
    for s in smiles:
        mol = parse_smiles(s) if s else None
        out.append(float(fn(mol)) if mol is not None else float("nan"))
    return out


class PropertyHead(nn.Module):
    """MLP ``z (B, L) -> property (B,)`` in the property's units (targets standardized inside)."""

    mean: torch.Tensor  # () target mean and standard deviation (buffers)
    std: torch.Tensor

    def __init__(self, latent_dim: int, hidden_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, 1)
        )
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1) * self.std + self.mean


class MoleculeVAE:
    """A trained :class:`~medgen.molecules.module.GraphVAEModule` behind a SMILES interface."""

    def __init__(self, module: GraphVAEModule):
        if module.vae is None:
            raise ValueError("the module has no network yet (train it or load a checkpoint)")
        self.module = module.eval()
        self.vae: GraphVAE
        self.vocab: Vocabulary
        self.vae, self.vocab = module.built()
        self.heads: dict[str, PropertyHead] = {}
        self._fitted: dict[str, tuple[list[str], torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, map_location: str | torch.device = "cpu"
    ) -> MoleculeVAE:
        """Load ``path`` (a ``.ckpt``, a run dir or ``pretrained:moses``) with ``weights_only=True``
        (:meth:`GraphVAEModule.from_checkpoint`)."""
        return cls(GraphVAEModule.from_checkpoint(path, map_location=map_location))

    @property
    def latent_dim(self) -> int:
        return self.vae.latent_dim

    # ---------------------------------------------------------------------------------- codec
    @torch.no_grad()
    def encode(self, smiles: Sequence[str], *, sample: bool = False, seed: int = 0) -> torch.Tensor:
        """Latents ``(n, L)``: posterior means, or draws from ``q(z|x)`` seeded per molecule.

        Raises ``ValueError`` naming the SMILES that cannot be read or holds atoms outside the
        model's vocabulary.
        """
        graphs = []
        for k, s in enumerate(smiles):
            try:
                graphs.append(encode_tokens(*smiles_to_tokens(s), self.vocab))
            except FeaturizeError as err:
                raise UserError(f"cannot encode SMILES #{k} {s!r}: {err}") from err
        mu, logvar = self.vae.encode(collate_graphs(graphs))
        if not sample:
            return mu
        eps = torch.stack(
            [
                torch.randn(self.latent_dim, generator=sample_generator(seed, i))
                for i in range(len(mu))
            ]
        )
        return mu + eps * torch.exp(0.5 * logvar)

    @torch.no_grad()
    def decode(
        self, z: torch.Tensor, *, temperature: float = 0.0, seed: int = 0
    ) -> list[str | None]:
        """SMILES of latents ``z (n, L)``; greedy at ``temperature=0``, else seeded per row."""
        z = torch.as_tensor(z, dtype=torch.float32).reshape(-1, self.latent_dim)
        _, u = draw_noise(self.vae, range(len(z)), seed, device=z.device)
        graphs = self.vae.sample(z, temperature=temperature, uniforms=u)
        return batch_to_smiles(graphs, self.vocab)

    def sample(
        self, n: int, *, seed: int = 0, temperature: float = 1.0, batch_size: int = 1000
    ) -> list[str | None]:
        """``n`` molecules from the prior (see :func:`sample_smiles`)."""
        return sample_smiles(
            self.vae, self.vocab, n, seed=seed, temperature=temperature, batch_size=batch_size
        )

    def interpolate(self, a: str, b: str, steps: int = 8) -> list[str | None]:
        """Greedy decodes of ``steps`` evenly spaced points from ``encode(a)`` to ``encode(b)``."""
        if steps < 2:
            raise UserError(f"interpolate needs steps >= 2, got {steps}")
        za, zb = self.encode([a, b])
        w = torch.linspace(0, 1, steps).unsqueeze(-1)
        return self.decode((1 - w) * za + w * zb)

    def reconstruction_accuracy(self, smiles: Sequence[str], batch_size: int = 500) -> float:
        """Share of molecules whose greedy decode of the posterior mean is the same molecule
        (canonical SMILES without stereo)."""
        hits = 0
        for lo in range(0, len(smiles), batch_size):
            chunk = list(smiles[lo : lo + batch_size])
            decoded = self.decode(self.encode(chunk))
            hits += sum(d == round_trip(s) for d, s in zip(decoded, chunk, strict=True))
        return hits / max(1, len(smiles))

    # ---------------------------------------------------------------------------------- properties
    def fit_property(
        self,
        name: str,
        smiles: Sequence[str],
        values: Sequence[float] | torch.Tensor | None = None,
        *,
        epochs: int = 300,
        lr: float = 3e-3,
        seed: int = 0,
    ) -> dict[str, float]:
        """Train a :class:`PropertyHead` for ``name`` on the latents of ``smiles``.

        ``values`` defaults to the computed property (``qed``, ``logp``, ``sa``); pass a column of
        the training CSV for anything else. Returns train / held-out R^2 (a random 10%, drawn
        with ``seed``, held out).
        """
        smiles = list(smiles)
        y = torch.tensor(
            score_smiles(name, smiles) if values is None else list(map(float, values)),
            dtype=torch.float32,
        )
        keep = torch.isfinite(y)
        smiles = [s for s, k in zip(smiles, keep.tolist(), strict=True) if k]
        y = y[keep]
        if len(y) < 10:
            raise UserError(f"fit_property({name!r}) needs at least 10 molecules, got {len(y)}")
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        smiles, y = [smiles[k] for k in order.tolist()], y[order]
        z = torch.cat([self.encode(smiles[i : i + 500]) for i in range(0, len(smiles), 500)])
        torch.manual_seed(seed)
        head = PropertyHead(self.latent_dim)
        n_fit = max(1, int(0.9 * len(y)))
        head.mean.fill_(float(y[:n_fit].mean()))
        head.std.fill_(float(y[:n_fit].std().clamp(min=1e-6)))
        opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-4)
        for _ in range(epochs):
            loss = ((head(z[:n_fit]) - y[:n_fit]) / head.std).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        self.heads[name] = head
        self._fitted[name] = (smiles, z, y)
        with torch.no_grad():
            report = {"r2_train": _r2(head(z[:n_fit]), y[:n_fit])}
            if n_fit < len(y):
                report["r2_heldout"] = _r2(head(z[n_fit:]), y[n_fit:])
        log.info("property head %s: %s", name, report)
        return report

    def predict(self, name: str, z: torch.Tensor) -> torch.Tensor:
        """The property head's prediction ``(n,)`` for latents ``z (n, L)``."""
        if name not in self.heads:
            raise KeyError(f"no property head {name!r}; call fit_property({name!r}, ...) first")
        with torch.no_grad():
            return self.heads[name](z)

    def optimize(
        self,
        property: str,
        n: int = 10,
        *,
        n_starts: int = 32,
        steps: int = 60,
        lr: float = 0.02,
        prior_weight: float = 0.1,
        decode_every: int = 5,
        maximize: bool = True,
    ):
        """Gradient ascent on the property head from the best fitted molecules' latents.

        The objective, in standard deviations of the property, is
        ``head(z) - prior_weight * |z|^2 / 2``: the prior term keeps ``z`` where the decoder was
        trained and the head is not extrapolating. Every ``decode_every`` steps all points are
        decoded greedily; decoded molecules are scored with RDKit when the property is
        computable (else by the head) and the ``n`` best distinct ones that are not among the
        fitted molecules are returned as a DataFrame (``smiles, score, predicted, step,
        start_smiles, start_score``), best first.
        """
        import pandas as pd

        if property not in self._fitted:
            raise KeyError(f"no property head {property!r}; call fit_property first")
        smiles, z_all, y = self._fitted[property]
        sign = 1.0 if maximize else -1.0
        top = torch.argsort(sign * y, descending=True)[:n_starts]
        z = z_all[top].clone().requires_grad_(True)
        head = self.heads[property]
        seen = {_canonical(s) for s in smiles}  # decodes are canonical: compare like with like
        rows: dict[str, dict] = {}
        opt = torch.optim.Adam([z], lr=lr)
        for step in range(1, steps + 1):
            objective = sign * head.net(z).squeeze(-1) - prior_weight * 0.5 * z.pow(2).sum(-1)
            opt.zero_grad()
            (-objective.sum()).backward()
            opt.step()
            if step % decode_every and step != steps:
                continue
            decoded = self.decode(z.detach())
            predicted = self.predict(property, z.detach()).tolist()
            for k, s in enumerate(decoded):
                if s and s not in seen and s not in rows:
                    start = int(top[k])
                    rows[s] = {
                        "smiles": s,
                        "predicted": predicted[k],
                        "step": step,
                        "start_smiles": smiles[start],
                        "start_score": float(y[start]),
                    }
        frame = pd.DataFrame(
            list(rows.values()),
            columns=["smiles", "predicted", "step", "start_smiles", "start_score"],
        )
        computable = property_function(property) is not None
        frame.insert(
            1,
            "score",
            score_smiles(property, frame["smiles"]) if computable else frame["predicted"],
        )
        frame = frame.sort_values("score", ascending=not maximize).head(n).reset_index(drop=True)
        if len(frame):
            log.info(
                "optimize %s: best %.3f (%s); best fitted molecule %.3f",
                property,
                frame["score"].iloc[0],
                frame["smiles"].iloc[0],
                float((sign * y).max() * sign),
            )
        return frame


def _canonical(smiles: str) -> str:
    """Canonical SMILES of the standardized graph (as decodes are); the input if unreadable."""
    try:
        return round_trip(smiles)
    except Exception:  # noqa: BLE001 - an unreadable SMILES simply matches no decode
        return smiles


def _r2(pred: torch.Tensor, y: torch.Tensor) -> float:
    ss_res = float((pred - y).pow(2).sum())
    ss_tot = float((y - y.mean()).pow(2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
