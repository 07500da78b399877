"""Scripting API over a trained graph VAE: sample, encode, decode, interpolate, optimize.

>>> vae = MoleculeVAE.from_checkpoint("outputs/train/<run>")          # doctest: +SKIP
>>> z = vae.encode(["CCO", "c1ccccc1O"])                              # (2, L)  # doctest: +SKIP
>>> vae.decode(z)                                                     # doctest: +SKIP
>>> vae.fit_property("logp", training_smiles)                         # doctest: +SKIP
>>> vae.optimize("logp", n=10)                                        # doctest: +SKIP
>>> vae.sample(100, condition={"qed": ">=0.8", "sa": "<=3"})          # doctest: +SKIP

Conditioned sampling uses the property heads stored in the checkpoint
(:mod:`medgen.molecules.conditioning`, ``MoleculeVAE.heads``) or fitted here with
:meth:`MoleculeVAE.fit_property`.

Sampling is reproducible per molecule (:mod:`medgen.molecules.sampling`): molecule ``i`` of seed
``s`` draws its latent and every decoding choice from its own generator seeded with ``(s, i)``, so
it is the same whatever the batch size or how many molecules are drawn with it. ``medgen sample``
draws the same molecules through :class:`~medgen.molecules.module.GraphVAEModule` directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from medgen.errors import ConfigError, UserError
from medgen.molecules.graph import (
    FeaturizeError,
    Vocabulary,
    collate_graphs,
    encode_tokens,
    round_trip,
    smiles_to_tokens,
)
from medgen.molecules.module import GraphVAEModule
from medgen.molecules.sampling import (
    decode_indices,
    draw_noise,
    latent_prior_choice,
    posterior_draws,
    sample_smiles,
)
from medgen.molecules.stereo import collate_stereo, labels_tensors, smiles_with_stereo
from medgen.molecules.vae import GraphVAE, check_temperature
from medgen.utils.logging import get_logger
from medgen.utils.seeding import sample_seed

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


def train_head(
    z: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 300,
    lr: float = 3e-3,
    seed: int = 0,
    hidden_dim: int = 128,
) -> tuple[PropertyHead, dict[str, float]]:
    """Fit a :class:`PropertyHead` on latents ``z (N, L)`` and values ``y (N,)`` (already in a
    random order): full-batch Adam on the first 90%, R^2 on those (``r2_train``) and on the last
    10% (``r2_heldout``). The global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = PropertyHead(z.shape[-1], hidden_dim)
    n_fit = max(1, int(0.9 * len(y)))
    head.mean.fill_(float(y[:n_fit].mean()))
    head.std.fill_(float(y[:n_fit].std().clamp(min=1e-6)))
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(epochs):
            loss = ((head(z[:n_fit]) - y[:n_fit]) / head.std).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    report: dict[str, float] = {"n_fit": n_fit, "n_heldout": len(y) - n_fit}
    with torch.no_grad():
        report["r2_train"] = _r2(head(z[:n_fit]), y[:n_fit])
        if n_fit < len(y):
            report["r2_heldout"] = _r2(head(z[n_fit:]), y[n_fit:])
    return head, report


#: optimize: a head whose held-out R^2 is below this cannot steer the search
WEAK_R2 = 0.5


class Usability(NamedTuple):
    """What makes a decoded molecule unusable as a proposal, from RDKit."""

    sa: float  # synthetic accessibility, 1 (easy) .. 10 (hard)
    bad_rings: int  # rings of fewer than 5 or more than 8 atoms
    moses_pass: bool  # medgen.chem.alerts.moses_filters_pass
    longest_chain: int  # atoms in the longest path of acyclic carbons


def usability(mol) -> Usability:
    """:class:`Usability` of an RDKit molecule."""
    from medgen.chem.alerts import moses_filters_pass
    from medgen.chem.properties import sa_score

    rings = mol.GetRingInfo().AtomRings()
    bad = sum(not 5 <= len(ring) <= 8 for ring in rings)
    return Usability(float(sa_score(mol)), bad, bool(moses_filters_pass(mol)), longest_chain(mol))


def usability_penalty(
    use: Usability,
    *,
    sa_weight: float = 1.0,
    ring_weight: float = 1.0,
    filter_weight: float = 1.0,
    chain_weight: float = 0.5,
    max_chain: int = 6,
) -> float:
    """What :meth:`MoleculeVAE.optimize` subtracts from a score, in standard deviations of the
    property: ``sa_weight`` per unit of SA above 4, ``ring_weight`` per ring of < 5 or > 8
    atoms, ``filter_weight`` for failing the MOSES filters, ``chain_weight`` per acyclic carbon
    beyond ``max_chain`` in a row (0 for a usable drug-like molecule)."""
    return (
        sa_weight * max(0.0, use.sa - 4.0)
        + ring_weight * use.bad_rings
        + filter_weight * (not use.moses_pass)
        + chain_weight * max(0, use.longest_chain - max_chain)
    )


def longest_chain(mol) -> int:
    """Atoms in the longest path through carbons that are in no ring (0 without any): 16 for
    hexadecane, 4 for butylbenzene. The acyclic carbons form a forest; its longest path is the
    largest tree diameter (two breadth-first searches per tree)."""
    chain = {a.GetIdx() for a in mol.GetAtoms() if a.GetSymbol() == "C" and not a.IsInRing()}
    nbrs = {i: [n.GetIdx() for n in mol.GetAtomWithIdx(i).GetNeighbors() if n.GetIdx() in chain]
            for i in chain}  # fmt: skip

    def farthest(start: int) -> tuple[int, int, set[int]]:
        depth, frontier, seen = 1, [start], {start}
        last = start
        while frontier:
            last = frontier[0]
            frontier = [j for i in frontier for j in nbrs[i]
                        if j not in seen and not seen.add(j)]  # type: ignore[func-returns-value]  # fmt: skip
            depth += bool(frontier)
        return last, depth, seen

    best, done = 0, set()
    for atom in sorted(chain):
        if atom in done:
            continue
        end, _, tree = farthest(atom)
        done |= tree
        best = max(best, farthest(end)[1])
    return best


class MoleculeVAE:
    """A trained :class:`~medgen.molecules.module.GraphVAEModule` behind a SMILES interface."""

    def __init__(self, module: GraphVAEModule):
        if module.vae is None:
            raise ValueError("the module has no network yet (train it or load a checkpoint)")
        self.module = module.eval()
        self.vae: GraphVAE
        self.vocab: Vocabulary
        self.vae, self.vocab = module.built()
        #: property heads: the checkpoint's (``property_heads``), then those fitted here
        self.heads: dict[str, PropertyHead] = {}
        #: per head its fit: ``r2_heldout``, ``r2_train``, ``n_fit``, ``n_heldout``
        self.head_reports: dict[str, dict[str, Any]] = {}
        self._fitted: dict[str, tuple[list[str], torch.Tensor, torch.Tensor]] = {}
        record = getattr(module, "property_heads", None)
        if record is not None:
            from medgen.molecules.conditioning import check_record, head_from_record

            for name, entry in check_record(record)["heads"].items():
                self.heads[name] = head_from_record(entry)
                self.head_reports[name] = {k: v for k, v in entry.items()
                                           if k.startswith(("r2_", "n_", "steer_"))}  # fmt: skip

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

    @property
    def condition_stats(self) -> dict[str, Any] | None:
        """A conditional VAE's ``condition_stats`` (property names, mean, std, the table of
        training rows its conditions are drawn from); None for an unconditional model."""
        hp = self.module.hparams
        return hp.get("condition_stats") if hp.get("conditions") else None

    # ---------------------------------------------------------------------------------- codec
    @torch.no_grad()
    def encode(
        self,
        smiles: Sequence[str],
        *,
        sample: bool = False,
        seed: int = 0,
        with_condition: bool = False,
    ) -> torch.Tensor:
        """Latents ``(n, L)``: posterior means, or draws from ``q(z|x)`` seeded per molecule.

        ``with_condition``: for a conditional VAE, ``(n, L + P)``: each molecule's own
        properties, standardized as in training, after its ``z``: what the decoder read for it
        in training (:meth:`decode` takes either shape; ``(n, L)`` decodes with the training mean
        of every property). Ignored by an unconditional model.

        Raises ``ValueError`` naming the SMILES that cannot be read or holds atoms outside the
        model's vocabulary.
        """
        mu, logvar = self.posterior(smiles)
        z = posterior_draws(mu, logvar, seed) if sample else mu
        if with_condition and self.vae.condition_dim:
            z = torch.cat([z, self.own_condition(smiles).to(z)], -1)
        return z

    @torch.no_grad()
    def posterior(self, smiles: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior ``q(z|x)`` of each of ``smiles``: means and log-variances ``(n, L)``
        (the errors of :meth:`encode`)."""
        graphs, labels = [], []
        stereo = self.vae.stereo_head is not None
        for k, s in enumerate(smiles):
            try:
                if stereo:  # the encoder of a stereo model also reads the molecule's labels
                    tokens, bonds, chirality, on_bonds, _ = smiles_with_stereo(s)
                    graphs.append(encode_tokens(tokens, bonds, self.vocab))
                    labels.append(labels_tensors(bonds, chirality, on_bonds))
                else:
                    graphs.append(encode_tokens(*smiles_to_tokens(s), self.vocab))
            except FeaturizeError as err:
                raise UserError(f"cannot encode SMILES #{k} {s!r}: {err}") from err
        return self.vae.encode(collate_graphs(graphs), collate_stereo(labels) if stereo else None)

    def own_condition(self, smiles: Sequence[str]) -> torch.Tensor:
        """A conditional VAE's condition rows ``(n, P)`` for ``smiles``: their RDKit properties,
        standardized by the training statistics (a value RDKit cannot compute takes the
        training mean, as in training)."""
        stats = self.condition_stats
        if stats is None:
            raise UserError("own_condition is for a conditional model; this one has none")
        from medgen.molecules.conditioning import property_table

        raw = torch.as_tensor(property_table(list(smiles), stats["names"]), dtype=torch.float32)
        return torch.nan_to_num(self.vae.standardize(raw), nan=0.0)

    @torch.no_grad()
    def decode(
        self,
        z: torch.Tensor,
        *,
        temperature: float = 0.0,
        seed: int = 0,
        search: int = 0,
        search_temperature: float = 0.5,
        index: int = 0,
    ) -> list[str | None]:
        """SMILES of latents ``z (n, L)`` (a conditional VAE: or ``(n, L + P)``, the condition
        last, as ``encode(..., with_condition=True)`` gives it); greedy at ``temperature=0``,
        else seeded per row.

        ``search``: also draw this many decodings of each row at ``search_temperature`` (seeded
        per row and draw) and return, per row, the molecule whose decoding path the model finds
        most likely (teacher-forced ``log p(x | z)``), the greedy decode included: a decode of
        ``z`` closer to the most likely molecule than greedy choices, at ``search + 1`` times
        the cost. It never reads a target: it is a decoder, usable for reconstruction.

        ``index``: row ``k`` draws the noise of molecule ``index + k`` of ``seed``, so a long list
        decoded in chunks gets the rows it would get in one call."""
        if search < 0:
            raise UserError(f"search must be >= 0 draws, got {search}")
        if search:
            check_temperature(search_temperature, allow_zero=False)
        z = torch.as_tensor(z, dtype=torch.float32)
        width = z.shape[-1] if z.dim() else 0
        widths = sorted({self.latent_dim, self.latent_dim + self.vae.condition_dim})
        if width not in widths:
            allowed = " or ".join(map(str, widths))
            raise UserError(f"decode takes latents of width {allowed}, got shape {tuple(z.shape)}")
        z = z.reshape(-1, width)
        rows = range(index, index + len(z))
        _, u = draw_noise(self.vae, rows, seed, device=z.device)
        draws = [  # draw k of row i: its own stream, from (seed, k) and i
            (search_temperature, draw_noise(self.vae, rows, sample_seed(seed, k),
                                            device=z.device)[1])
            for k in range(search)
        ]  # fmt: skip
        return self.vae.decode_smiles(
            z, self.vocab, temperature=temperature, uniforms=u, search=draws
        )

    def sample(
        self,
        n: int,
        *,
        seed: int = 0,
        temperature: float = 1.0,
        batch_size: int = 1000,
        condition: Mapping[str, str] | str | None = None,
        latent_prior: str = "auto",
    ) -> list[str | None]:
        """``n`` molecules from the prior (see :func:`sample_smiles`); with ``condition`` the
        SMILES of :meth:`sample_conditioned` (all meet the targets; fewer than ``n`` when the
        budget ran out, which it logs). ``latent_prior``: ``auto`` (the fitted prior when the
        model has one, :meth:`fit_prior`), ``fitted`` or ``normal`` (N(0, I))."""
        if condition is not None:
            frame = self.sample_conditioned(
                n, condition, seed=seed, temperature=temperature, batch_size=batch_size,
                latent_prior=latent_prior,
            )  # fmt: skip
            return list(frame["smiles"])
        with latent_prior_choice(self.vae, latent_prior):
            return sample_smiles(self.vae, self.vocab, n, seed=seed, temperature=temperature,
                                 batch_size=batch_size)  # fmt: skip

    def fit_prior(
        self,
        smiles: Sequence[str],
        *,
        components: int = 8,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Fit a latent prior (:mod:`medgen.molecules.prior`: a Gaussian mixture over posterior
        draws of ``smiles``, jointly with their properties for a conditional model) and sample
        from it from now on. Returns the fit's report (held-out log-likelihood of the fit and of
        N(0, I), ``heldout_ll_z`` / ``normal_ll_z``)."""
        from medgen.molecules.prior import encode_for_prior, fit_prior

        z, cond, skipped = encode_for_prior(self, smiles, seed=seed)
        self.vae.latent_prior, report = fit_prior(z, cond, components=components, seed=seed)
        report["skipped"] = skipped
        return report

    def heads_record(self) -> dict[str, Any]:
        """:attr:`heads` as a checkpoint's ``property_heads`` record."""
        from medgen.molecules.conditioning import record_from_heads

        return record_from_heads(self.heads, self.head_reports)

    def sample_conditioned(
        self,
        n: int,
        condition: Mapping[str, str] | str,
        *,
        seed: int = 0,
        temperature: float = 1.0,
        batch_size: int = 1000,
        budget_factor: int | None = None,
        latent_prior: str = "auto",
    ):
        """Up to ``n`` molecules meeting every target of ``condition`` (e.g. ``{"qed": ">=0.8",
        "sa": "<=3"}``), as ``medgen sample condition=...`` draws them: a DataFrame ``index,
        smiles, <property>...`` (the RDKit values) in stream order; ``frame.attrs`` holds the
        report (guided and unguided success rates, IntDiv, ``shortfall``).

        Candidate ``i`` is the same as in ``medgen sample`` with the same seed, temperature,
        heads and ``latent_prior`` (as in :meth:`sample`). Raises a ``UserError`` for a bad
        condition or a property without a head.
        """
        import pandas as pd

        from medgen.molecules.conditioning import (
            BUDGET_FACTOR,
            guided_decode,
            resolve_condition,
            select_targets,
        )

        if n < 1:
            raise ConfigError("n", n, "an integer >= 1")
        from medgen.molecules.conditioning import condition_rows

        record = self.heads_record()
        stats = self.condition_stats
        condition = resolve_condition(condition, record, stats=stats)
        kw: dict[str, Any] = {"seed": seed, "temperature": temperature}
        rows = condition_rows(stats, condition) if stats is not None else None

        def draw(indices: list[int]) -> dict[int, str | None]:
            out: dict[int, str | None] = {}
            for lo in range(0, len(indices), batch_size):
                chunk = indices[lo : lo + batch_size]
                if rows is not None:  # a conditional VAE: conditions of training molecules
                    found = decode_indices(self.vae, self.vocab, chunk, rows=rows, **kw)
                else:
                    found = guided_decode(
                        self.vae, self.vocab, record, chunk, condition=condition, **kw
                    )
                out.update(zip(chunk, found, strict=True))
            return out

        def chance(indices: list[int]) -> list[str | None]:  # unguided: 0..m-1 of the prior
            start = indices[0] if indices else 0
            return sample_smiles(self.vae, self.vocab, len(indices), start=start,
                                 batch_size=batch_size, **kw)  # fmt: skip

        with latent_prior_choice(self.vae, latent_prior):
            chosen, found = select_targets(
                {}, n, condition, draw=draw, chance=chance,
                heads=record["heads"] if stats is None else None,
                budget_factor=budget_factor or BUDGET_FACTOR, batch_size=batch_size,
            )  # fmt: skip
        frame = pd.DataFrame({"index": chosen.indices, "smiles": chosen.smiles, **found.values})
        frame.attrs.update(found.report)
        return frame

    def interpolate(self, a: str, b: str, steps: int = 8) -> list[str | None]:
        """Greedy decodes of ``steps`` evenly spaced points from ``encode(a)`` to ``encode(b)``
        (a conditional VAE: from ``a``'s latent and properties to ``b``'s)."""
        if steps < 2:
            raise UserError(f"interpolate needs steps >= 2, got {steps}")
        za, zb = self.encode([a, b], with_condition=True)
        w = torch.linspace(0, 1, steps).unsqueeze(-1)
        return self.decode((1 - w) * za + w * zb)

    def reconstruction_accuracy(
        self,
        smiles: Sequence[str],
        batch_size: int = 500,
        *,
        search: int = 0,
        search_temperature: float = 0.5,
    ) -> float:
        """Share of molecules whose greedy decode of the posterior mean is the same molecule
        (canonical SMILES without stereo; isomeric for a stereo model). A conditional VAE
        decodes each with its own properties (``encode(..., with_condition=True)``).
        ``search``: decode with :meth:`decode`'s likelihood search instead of greedily."""
        hits = 0
        stereo = self.vae.stereo_head is not None
        for lo in range(0, len(smiles), batch_size):
            chunk = list(smiles[lo : lo + batch_size])
            decoded = self.decode(
                self.encode(chunk, with_condition=True),
                search=search,
                search_temperature=search_temperature,
                index=lo,
            )
            want = [smiles_with_stereo(s)[4] if stereo else round_trip(s) for s in chunk]
            hits += sum(d == w for d, w in zip(decoded, want, strict=True))
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
        with ``seed``, held out). A conditional VAE's head reads ``[z, c]`` (``encode(...,
        with_condition=True)``), the latent and the properties its decoder is asked for, so
        :meth:`optimize` moves both.
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
        z = torch.cat([self.encode(smiles[i : i + 500], with_condition=True)
                       for i in range(0, len(smiles), 500)])  # fmt: skip
        head, report = train_head(z, y, epochs=epochs, lr=lr, seed=seed)
        if values is None:  # a computed property: does moving z along the head move the output?
            from medgen.molecules.conditioning import steerability

            report["steer_r"] = steerability(self, {name: head}, seed=seed)[name]
        self.heads[name] = head
        self.head_reports[name] = report
        self._fitted[name] = (smiles, z, y)
        log.info("property head %s: %s", name, report)
        return report

    def predict(self, name: str, z: torch.Tensor) -> torch.Tensor:
        """The property head's prediction ``(n,)`` for latents ``z (n, L)`` (a conditional
        VAE: ``(n, L + P)``, as :meth:`fit_property` fitted it)."""
        if name not in self.heads:
            raise KeyError(f"no property head {name!r}; call fit_property({name!r}, ...) first")
        with torch.no_grad():
            return self.heads[name](z)

    def optimize(
        self,
        property: str,
        n: int = 10,
        *,
        smiles: Sequence[str] | None = None,
        n_starts: int = 32,
        steps: int = 60,
        lr: float = 0.02,
        prior_weight: float = 0.1,
        decode_every: int = 5,
        maximize: bool = True,
        max_rounds: int = 4,
        sa_weight: float = 1.0,
        ring_weight: float = 1.0,
        chain_weight: float = 0.5,
        max_chain: int = 6,
    ):
        """Gradient ascent on the property head from the best fitted molecules' latents.

        The latent walk maximizes ``head(z) - prior_weight * |z|^2 / 2`` (in standard deviations
        of the property): the prior term keeps ``z`` where the decoder was trained and the head is
        not extrapolating. Every ``decode_every`` steps all points are decoded greedily. Each
        distinct decoded molecule that is not a fitted one is checked with RDKit: one that fails
        the MOSES filters or holds an acyclic carbon chain longer than ``2 * max_chain`` is
        dropped (counted in ``attrs["unusable"]``); the others are scored with RDKit (the head's
        prediction for a property RDKit cannot compute) less a penalty for what makes a molecule
        hard to use, in standard deviations ``sd`` of the fitted values
        (:func:`usability_penalty`)::

            score = property - sd * (sa_weight * max(0, SA - 4) + ring_weight * (rings of < 5 or
                    > 8 atoms) + chain_weight * max(0, longest acyclic carbon chain - max_chain))

        (the penalty is added when minimizing), so a long alkane chain does not win ``logp``.
        Rounds of ``n_starts`` further starts (the next best fitted molecules) run until ``n``
        usable molecules are found or ``max_rounds`` are spent.

        ``smiles``: start from these molecules (encoded and scored here) instead of those given
        to :meth:`fit_property` (needed for a head that came with the checkpoint).

        Returns a DataFrame (``smiles, score, predicted, property, penalty, sa, bad_rings,
        moses_pass, longest_chain, step, start_smiles, start_score``), best score first, of
        ``n`` rows or fewer; ``frame.attrs`` says ``n_found`` and why fewer (``shortfall``),
        the head's ``r2_heldout`` (``weak_head`` and a logged warning below 0.5: too weak to
        steer), ``best_score`` (the property of the first row), ``best_training_score`` and
        ``beats_best_training``.
        """
        import pandas as pd

        from medgen.chem.mol import parse_smiles

        if property not in self.heads:
            raise KeyError(f"no property head {property!r}; call fit_property({property!r}, ...)")
        if smiles is not None:
            starts = list(smiles)
            computable = property_function(property) is not None
            z_fit = torch.cat([self.encode(starts[i : i + 500], with_condition=True)
                               for i in range(0, len(starts), 500)])  # fmt: skip
            scores = score_smiles(property, starts) if computable else self.predict(property, z_fit)
            self._fitted[property] = (starts, z_fit, torch.as_tensor(scores, dtype=torch.float32))
        if property not in self._fitted:
            raise KeyError(f"no molecules to start {property!r} from; call fit_property or pass "
                           "smiles=")  # fmt: skip
        fitted, z_all, y = self._fitted[property]
        sign = 1.0 if maximize else -1.0
        r2 = self.head_reports.get(property, {}).get("r2_heldout")
        weak = r2 is None or not r2 >= WEAK_R2
        if weak:
            log.warning("optimize %s: the head's held-out R^2 is %s < %.1f: too weak to steer "
                        "(the search is close to a random walk)", property,
                        "unknown" if r2 is None else f"{r2:.2f}", WEAK_R2)  # fmt: skip
        from medgen.molecules.conditioning import WEAK_STEER

        steer = self.head_reports.get(property, {}).get("steer_r")
        if steer is not None and steer < WEAK_STEER:
            log.warning("optimize %s: the head's steerability (prior-draw correlation with the "
                        "decoded molecules' values) is %.2f < %.1f: the decoder, not z, decides "
                        "what comes out", property, steer, WEAK_STEER)  # fmt: skip
        finite = torch.isfinite(y)
        order = torch.argsort(torch.where(finite, sign * y, -torch.inf), descending=True)
        stereo = self.vae.stereo_head is not None
        seen = {_canonical(s, stereo) for s in fitted}  # decodes are canonical: like with like
        rows: dict[str, dict] = {}  # every distinct new decode, usable or not
        columns = ["smiles", "score", "predicted", "property", "penalty", *Usability._fields,
                   "step", "start_smiles", "start_score"]  # fmt: skip
        sd = float(y[finite].std()) if int(finite.sum()) > 1 else 1.0
        fn = property_function(property)
        weights: dict[str, Any] = {"sa_weight": sa_weight, "ring_weight": ring_weight,
                                   "filter_weight": 0.0, "chain_weight": chain_weight,
                                   "max_chain": max_chain}  # fmt: skip
        usable: dict[str, dict] = {}
        rounds = 0
        for rounds in range(1, max_rounds + 1):
            top = order[(rounds - 1) * n_starts : rounds * n_starts]
            if len(top) == 0:
                rounds -= 1
                break
            new = self._walk(property, top, z_all, y, fitted, seen, rows, sign=sign,
                             steps=steps, lr=lr, prior_weight=prior_weight,
                             decode_every=decode_every)  # fmt: skip
            for s in new:
                mol = parse_smiles(s)
                if mol is None:  # a decode RDKit does not read back: not a proposal
                    continue
                use = usability(mol)
                if not use.moses_pass or use.longest_chain > 2 * max_chain:
                    continue
                row = rows[s]
                row["property"] = float(fn(mol)) if fn is not None else row["predicted"]
                row["penalty"] = sd * usability_penalty(use, **weights)
                row["score"] = row["property"] - sign * row["penalty"]
                usable[s] = {**row, **use._asdict()}
            if len(usable) >= n:
                break
        frame = pd.DataFrame(list(usable.values()), columns=columns)
        frame = frame.sort_values("score", ascending=not maximize, kind="stable")
        frame = frame.head(n).reset_index(drop=True)
        best_training = float(sign * (sign * y[finite]).max()) if int(finite.sum()) else None
        best = float(frame["property"].iloc[0]) if len(frame) else None
        beats = (
            best is not None and best_training is not None and sign * best > sign * best_training
        )
        shortfall = None
        if len(frame) < n:
            shortfall = (f"only {len(frame)} usable distinct new molecules ({len(rows)} decoded, "
                         f"{len(rows) - len(usable)} unusable) in {rounds} round(s) of {n_starts} "
                         f"starts x {steps} steps; raise n_starts, steps or max_rounds, or fit "
                         "more molecules")  # fmt: skip
            log.warning("optimize %s: %s", property, shortfall)
        frame.attrs.update(
            property=property, maximize=maximize, n_requested=n, n_found=len(frame),
            shortfall=shortfall, rounds=rounds, unusable=len(rows) - len(usable),
            r2_heldout=r2, weak_head=weak, steer_r=steer,
            best_score=best, best_training_score=best_training, beats_best_training=beats,
            penalty_weights=weights,
        )  # fmt: skip
        if best is not None:
            log.info("optimize %s: best %.3f (%s) %s the best fitted molecule (%.3f); head R^2 "
                     "held out %s", property, best, frame["smiles"].iloc[0],
                     "beats" if beats else "does not beat", best_training,
                     "unknown" if r2 is None else f"{r2:.2f}")  # fmt: skip
        return frame

    def _walk(self, property, top, z_all, y, fitted, seen, rows, *, sign, steps, lr,
              prior_weight, decode_every) -> list[str]:  # fmt: skip
        """One round of :meth:`optimize`: the latent walk from starts ``top``, adding the
        distinct new decodes to ``rows``; returns them."""
        new: list[str] = []
        z = z_all[top].clone().requires_grad_(True)
        head = self.heads[property]
        opt = torch.optim.Adam([z], lr=lr)
        for step in range(1, steps + 1):
            with torch.enable_grad():
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
                        "start_smiles": fitted[start],
                        "start_score": float(y[start]),
                    }
                    new.append(s)
        return new


def _canonical(smiles: str, stereo: bool = False) -> str:
    """Canonical SMILES of the standardized graph (as decodes are; isomeric for a stereo
    model); the input if unreadable."""
    try:
        return smiles_with_stereo(smiles)[4] if stereo else round_trip(smiles)
    except Exception:  # noqa: BLE001 - an unreadable SMILES simply matches no decode
        return smiles


def _r2(pred: torch.Tensor, y: torch.Tensor) -> float:
    ss_res = float((pred - y).pow(2).sum())
    ss_tot = float((y - y.mean()).pow(2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
