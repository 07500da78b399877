"""Side work while a molecule model trains, as Lightning callbacks (``conf/callbacks/``).

:class:`MoleculeSampling` runs after each validation epoch: held-out reconstruction accuracy and
prior samples scored with the MOSES definitions (:mod:`medgen.chem.metrics`), plus a grid of them
in the run dir. When training starts it records the training set in the run dir
(``train_set.npz``: keys of the training SMILES, a description without paths, properties of a
sample; :mod:`medgen.molecules.release`), which ``medgen sample`` uses for novelty and
``novel_only``. ``conf/model/graph_vae.yaml`` adds it (``callbacks.molecule_sampling``), so every
molecule model gets it and no other model does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from medgen.errors import ConfigError, UserError
from medgen.generation import Output
from medgen.utils.logging import get_logger
from medgen.utils.validate import check_arguments

log = get_logger(__name__)

_LIMITS = {k: {"ge": 0} for k in ("n_samples", "grid_size", "n_recon", "seed", "n_fcd")}
_LIMITS.update(n_prior={"ge": 0}, prior_components={"ge": 1})
#: training molecules per mixture component the validation prior needs at least
ROWS_PER_COMPONENT = 20
#: how validation samples are drawn (``latent_prior``)
VAL_PRIORS = ("normal", "fitted")


class MoleculeSampling(Callback):
    """Validation-time sampling checks of a graph VAE (skipped during the sanity check).

    Logs ``val/recon_exact`` (share of exact reconstructions: greedy decodes of the posterior means
    of the first ``n_recon`` molecules of the fixed validation split, molecules never trained on;
    a conditional model decodes them with their own properties),
    and ``val/validity``, ``val/uniqueness``, ``val/novelty`` (against the training split),
    ``val/filters`` (share of valid samples passing the MOSES filters,
    :func:`medgen.chem.alerts.moses_filters_pass`) and ``val/heavy_atoms`` of ``n_samples``
    molecules drawn from the prior with ``seed`` (fixed, so epochs are compared on the
    same latents; the same values on every rank). With ``n_fcd``, ``val/fcd`` too: the Fréchet
    ChemNet distance of the valid samples to the first ``n_fcd`` validation molecules (a fixed
    subset; its statistics are computed once per fit), for keeping the best checkpoint by sample
    quality (``callbacks.best_fcd`` in ``experiment=moses_graph_vae``).

    The samples come from ``N(0, I)`` (``latent_prior=normal``) or, with ``latent_prior=fitted``,
    from a Gaussian mixture fitted at each validation to posterior draws of the first ``n_prior``
    training molecules (:func:`medgen.molecules.prior.fit_prior`; a conditional model's jointly
    with their standardized properties), the prior ``medgen sample`` draws from once one is fitted
    (``python -m medgen.molecules.prior``). A model trained with a weak KL term (small
    ``model.beta``) has a posterior far from ``N(0, I)``: its ``N(0, I)`` samples measure that
    hole, not the model, and can worsen while the model improves. ``val/prior_gain`` is the fit's
    held-out log-likelihood per molecule minus that of ``N(0, I)`` (nats): how far the posterior
    is from the standard normal. Rank 0 writes
    ``molecules/epoch_<NNN>.smi`` and a PNG grid of the first ``grid_size`` valid ones into the run
    dir, and sends the grid to loggers that take images (TensorBoard).

    Args:
        n_samples: prior samples per validation epoch (0: none).
        grid_size: molecules drawn in the grid.
        n_recon: validation molecules encoded and decoded for ``val/recon_exact`` (0: none).
        seed: seed of the prior samples.
        n_fcd: validation molecules ``val/fcd`` compares the samples with (0: no ``val/fcd``;
            at least 2, and ``n_samples`` >= 2).
        latent_prior: ``normal`` or ``fitted`` (see above).
        n_prior: training molecules the fitted prior is fitted on (``latent_prior=fitted``; at
            least ``20 * prior_components``; fewer in the training split: ``N(0, I)``, said once).
        prior_components: mixture components of the fitted prior.
    """

    def __init__(
        self,
        *,
        n_samples: int = 256,
        grid_size: int = 24,
        n_recon: int = 100,
        seed: int = 0,
        n_fcd: int = 0,
        latent_prior: str = "normal",
        n_prior: int = 5000,
        prior_components: int = 1,
    ) -> None:
        args = dict(n_samples=n_samples, grid_size=grid_size, n_recon=n_recon, seed=seed,
                    n_fcd=n_fcd, latent_prior=latent_prior, n_prior=n_prior,
                    prior_components=prior_components)  # fmt: skip
        prefix = "callbacks.molecule_sampling."
        check_arguments(MoleculeSampling.__init__, args, prefix=prefix, limits=_LIMITS)
        if n_fcd == 1 or (n_fcd and n_samples < 2):
            raise ConfigError(f"{prefix}n_fcd", n_fcd, "0, or >= 2 with n_samples >= 2")
        if latent_prior not in VAL_PRIORS:
            raise ConfigError(f"{prefix}latent_prior", latent_prior, " | ".join(VAL_PRIORS))
        self._min_prior = ROWS_PER_COMPONENT * prior_components
        if latent_prior == "fitted" and n_prior < self._min_prior:
            raise ConfigError(f"{prefix}n_prior", n_prior, f">= {ROWS_PER_COMPONENT} * "
                              f"prior_components = {self._min_prior}")  # fmt: skip
        self.n_samples, self.grid_size = n_samples, grid_size
        self.n_recon, self.seed, self.n_fcd = n_recon, seed, n_fcd
        self.latent_prior, self.n_prior, self.prior_components = (
            latent_prior, n_prior, prior_components)  # fmt: skip
        self._warned_prior = False
        self._train_smiles: set[str] | None = None
        self._fcd_reference: tuple[Any, ...] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if getattr(type(pl_module), "output", None) != Output.MOLECULES:
            raise UserError(
                f"callbacks.molecule_sampling samples molecule models only, not a "
                f"{type(pl_module).__name__}; set callbacks.molecule_sampling=null"
            )
        self._train_smiles = None  # read once the module has settled the data's vocabulary
        self._fcd_reference = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Rank 0 writes ``train_set.npz`` into the run dir (after the data's ``setup`` and the
        module's vocabulary: the training split as the model sees it)."""
        dm: Any = getattr(trainer, "datamodule", None)
        if not trainer.is_global_zero or not hasattr(dm, "train_smiles"):
            return
        from medgen.molecules.release import TRAIN_SET_FILE, TrainingSet, data_description

        keys = ("seed", "val_fraction", "test_fraction", "limit", "max_atoms")
        split = {k: getattr(dm, k, None) for k in keys}
        described = data_description(getattr(dm, "path", None), **split)
        path = Path(trainer.default_root_dir) / TRAIN_SET_FILE
        TrainingSet.from_smiles(dm.train_smiles(), described).save(path)
        log.info("training set recorded in %s", path)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        from medgen.chem.metrics import fraction_unique, fraction_valid, novelty
        from medgen.molecules.graph import collate_graphs
        from medgen.molecules.sampling import reconstruction_accuracy, sample_smiles, using_prior

        vae, vocab = pl_module.built()  # a GraphVAEModule (see setup)
        dm: Any = getattr(trainer, "datamodule", None)
        val_set: Any = getattr(dm, "val_set", None)
        k = min(self.n_recon, len(val_set) if val_set else 0)
        if k > 0:
            batch = collate_graphs([val_set.graph(i) for i in range(k)]).to(pl_module.device)
            stereo = None
            if getattr(val_set, "stereo", False):
                from medgen.molecules.stereo import collate_stereo

                stereo = collate_stereo([val_set[i][2] for i in range(k)]).to(pl_module.device)
            cond = None
            if vae.condition_dim:  # decoded with each molecule's own properties, as trained
                values = val_set.values[val_set.indices[:k]]  # not val_set[i]: no graph rebuilt
                cond = vae.standardize(values.to(pl_module.device))
            pl_module.log(
                "val/recon_exact", reconstruction_accuracy(vae, vocab, batch, stereo, cond)
            )
        if self.n_samples <= 0:
            return
        if self._train_smiles is None:
            self._train_smiles = set(dm.train_smiles()) if hasattr(dm, "train_smiles") else set()
        prior, gain = self._fit_prior(vae, dm) if self.latent_prior == "fitted" else (None, None)
        with using_prior(vae, prior):  # N(0, I) when None, whatever the module carries
            smiles = sample_smiles(vae, vocab, self.n_samples, seed=self.seed)
        valid = [s for s in smiles if s]
        metrics = {
            "val/validity": fraction_valid(smiles),
            "val/uniqueness": fraction_unique(smiles),
            "val/novelty": novelty(smiles, self._train_smiles),
            "val/filters": _filters_pass(valid),
            "val/heavy_atoms": _mean_atoms(valid),
        }
        if self.n_fcd:
            metrics["val/fcd"] = self._fcd(dm, valid)
        if gain is not None:
            metrics["val/prior_gain"] = gain
        for key, value in metrics.items():
            pl_module.log(key, float(value))
        if trainer.is_global_zero:
            self._write_grid(trainer, valid)

    @torch.no_grad()
    def _fit_prior(self, vae: Any, dm: Any) -> tuple[Any, float | None]:
        """The validation prior: a mixture over posterior draws (seeded) of the first
        ``n_prior`` training molecules, and its held-out gain over ``N(0, I)`` in nats per
        molecule; ``(None, None)`` (``N(0, I)``, warned once) when the split holds too few."""
        from medgen.molecules.data import ConditionedBatch, collate_items
        from medgen.molecules.prior import fit_prior
        from medgen.molecules.sampling import posterior_draws

        train_set: Any = getattr(dm, "train_set", None)
        k = min(self.n_prior, len(train_set) if train_set is not None else 0)
        if k < self._min_prior:
            if not self._warned_prior:
                log.warning("callbacks.molecule_sampling.latent_prior=fitted: the training split "
                            "holds %d molecule(s), a %d-component prior needs %d; validation "
                            "samples come from N(0, I)", k, self.prior_components,
                            self._min_prior)  # fmt: skip
                self._warned_prior = True
            return None, None
        device = next(vae.parameters()).device
        zs, conds = [], []
        for lo in range(0, k, 500):
            batch = collate_items([train_set[i] for i in range(lo, min(k, lo + 500))])
            batch = batch.to(device)
            graphs, stereo = (batch.graphs, batch.stereo) if isinstance(
                batch, ConditionedBatch) else (batch, None)  # fmt: skip
            mu, logvar = vae.encode(graphs, stereo)
            zs.append(posterior_draws(mu, logvar, self.seed, start=lo).cpu())
            if vae.condition_dim and isinstance(batch, ConditionedBatch):
                conds.append(vae.standardize(batch.props).cpu())
        cond = torch.cat(conds) if conds else None
        prior, report = fit_prior(torch.cat(zs), cond, components=self.prior_components,
                                  seed=self.seed)  # fmt: skip
        return prior, report["heldout_ll_z"] - report["normal_ll_z"]

    def _fcd(self, dm: Any, valid: list[str]) -> float:
        """FCD of ``valid`` samples to the first ``n_fcd`` validation molecules (inf when fewer
        than 2 samples are valid: the worst score, so such a checkpoint is never the best)."""
        from medgen.chem.fcd import activation_statistics, chemnet_activations, frechet_distance

        if self._fcd_reference is None:
            if not hasattr(dm, "val_smiles"):
                raise UserError("callbacks.molecule_sampling.n_fcd needs a data module with "
                                "validation SMILES (data=smiles); set n_fcd=0")  # fmt: skip
            reference = dm.val_smiles()[: self.n_fcd]
            if len(reference) < 2:
                log.warning("callbacks.molecule_sampling.n_fcd=%d: the validation split holds %d "
                            "molecule(s), FCD needs 2; val/fcd is logged as inf",
                            self.n_fcd, len(reference))  # fmt: skip
                self._fcd_reference = ()
                return float("inf")
            self._fcd_reference = activation_statistics(chemnet_activations(reference))
        if len(valid) < 2 or not self._fcd_reference:
            return float("inf")
        mu, sigma = activation_statistics(chemnet_activations(valid))
        return frechet_distance(mu, sigma, *self._fcd_reference)

    def _write_grid(self, trainer: pl.Trainer, smiles: list[str]) -> None:
        """Save ``molecules/epoch_<NNN>.smi`` and ``.png`` in the run dir; send the PNG to TB."""
        import numpy as np

        from medgen.molecules.cohort import molecule_grid, save_png
        from medgen.utils.atomic import atomic_write_text

        folder = Path(trainer.default_root_dir) / "molecules"
        stem = f"epoch_{trainer.current_epoch:03d}"
        atomic_write_text(folder / f"{stem}.smi", "\n".join(smiles) + "\n")
        image = molecule_grid(smiles, self.grid_size)
        if image is None:
            return
        save_png(image, folder / f"{stem}.png")
        for logger in trainer.loggers:
            experiment: Any = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                array = np.asarray(image.convert("RGB"))
                experiment.add_image("val/molecules", array, trainer.global_step, dataformats="HWC")


def _filters_pass(smiles: list[str]) -> float:
    """Share of parsable SMILES passing the MOSES filters (0.0 for none)."""
    from medgen.chem.alerts import moses_filters_pass
    from medgen.chem.mol import parse_smiles

    mols = [m for m in map(parse_smiles, smiles) if m is not None]
    return sum(moses_filters_pass(m) for m in mols) / max(1, len(mols))


def _mean_atoms(smiles: list[str]) -> float:
    """Mean heavy-atom count of parsable SMILES (0.0 for none)."""
    from medgen.chem.mol import parse_smiles

    counts = [m.GetNumAtoms() for m in map(parse_smiles, smiles) if m is not None]
    return sum(counts) / max(1, len(counts))
