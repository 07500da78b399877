"""``GraphVAEModule``: the graph VAE in Lightning, with ELBO, KL annealing and sample checks.

The network is built from the data's atom vocabulary: in ``setup()`` from the datamodule when the
vocabulary is not given, then stored in the hyperparameters (plain list of tokens, with
``max_atoms`` and ``kind="graph_vae"``), so a checkpoint rebuilds the model without the data and
loads with ``torch.load(weights_only=True)`` (:meth:`GraphVAEModule.load_medgen_checkpoint`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from medgen.errors import UserError
from medgen.molecules.graph import GraphBatch, Vocabulary, batch_to_smiles, collate_graphs
from medgen.molecules.vae import GraphVAE
from medgen.utils.logging import get_logger
from medgen.utils.validate import check_arguments

log = get_logger(__name__)


_LIMITS: dict[str, dict[str, float]] = {
    "max_atoms": {"ge": 2},
    "latent_dim": {"ge": 1},
    "hidden_dim": {"ge": 1},
    "encoder_layers": {"ge": 1},
    "pair_dim": {"ge": 1},
    "lr": {"gt": 0.0},
    "weight_decay": {"ge": 0.0},
    "beta": {"ge": 0.0},
    "kl_start_step": {"ge": 0},
    "kl_warmup_steps": {"ge": 0},
    "free_bits": {"ge": 0.0},
    "n_val_samples": {"ge": 0},
    "grid_size": {"ge": 0},
    "n_val_recon": {"ge": 0},
    "sample_seed": {"ge": 0},
}


class GraphVAEModule(pl.LightningModule):
    """Graph VAE trained on the ELBO ``recon + beta_t * KL`` (nats per molecule).

    ``beta_t`` rises linearly from 0 at ``kl_start_step`` to ``beta`` over ``kl_warmup_steps``
    (Bowman et al. 2016, "Generating Sentences from a Continuous Space"). ``val/loss`` is the full
    negative ELBO (``beta = 1``, z sampled), comparable across epochs whatever the schedule.

    Args:
        vocabulary: atom-type tokens (None: taken from the datamodule in ``setup``).
        max_atoms: largest molecule the decoder builds (None: the data's largest).
        latent_dim, hidden_dim, encoder_layers, pair_dim: network sizes.
        lr, weight_decay: AdamW settings.
        beta, kl_start_step, kl_warmup_steps: KL weight schedule.
        free_bits: KL floor per latent dimension in nats (batch mean); 0 = plain ELBO. Counters
            posterior collapse (the decoder ignoring ``z``); ``val/loss`` stays the plain ELBO.
        n_val_samples: molecules sampled from the prior after each validation epoch (0: none) for
            validity / uniqueness / novelty and a PNG grid.
        grid_size: molecules drawn in that grid.
        n_val_recon: validation molecules (the first ones of the fixed val split) encoded and
            greedily decoded after each validation epoch for ``val/recon_accuracy`` (0: none).
        sample_seed: seed of those samples (fixed, so epochs are compared on the same latents).
        kind: checkpoint family for ``medgen sample``; always ``"graph_vae"``.
    """

    def __init__(
        self,
        *,
        vocabulary: list[str] | None = None,
        max_atoms: int | None = None,
        latent_dim: int = 56,
        hidden_dim: int = 256,
        encoder_layers: int = 3,
        pair_dim: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        beta: float = 1.0,
        kl_start_step: int = 0,
        kl_warmup_steps: int = 5000,
        free_bits: float = 0.0,
        n_val_samples: int = 256,
        grid_size: int = 24,
        n_val_recon: int = 100,
        sample_seed: int = 0,
        kind: str = "graph_vae",
    ):
        super().__init__()
        args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        check_arguments(GraphVAEModule.__init__, args, prefix="model.", limits=_LIMITS)
        del args  # not a hyperparameter
        if kind != "graph_vae":
            raise UserError(f"GraphVAEModule has kind='graph_vae', got kind={kind!r}")
        self.save_hyperparameters()
        self.vae: GraphVAE | None = None
        self.vocab: Vocabulary | None = None
        self.train_smiles: set[str] = set()
        if vocabulary is not None and max_atoms is not None:
            self.build(vocabulary, max_atoms)

    # ------------------------------------------------------------------------------------------
    def build(self, vocabulary: list[str], max_atoms: int) -> None:
        """Create the network for a vocabulary; records both in the hyperparameters."""
        self.vocab = Vocabulary(vocabulary)
        self.hparams["vocabulary"] = list(self.vocab.tokens)
        self.hparams["max_atoms"] = int(max_atoms)
        hp = self.hparams
        self.vae = GraphVAE(
            capacity=self.vocab.capacity,
            max_atoms=int(max_atoms),
            latent_dim=hp.latent_dim,
            hidden_dim=hp.hidden_dim,
            encoder_layers=hp.encoder_layers,
            pair_dim=hp.pair_dim,
        )

    def setup(self, stage: str | None = None) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "use_vocabulary"):
            if self.vae is None:
                raise RuntimeError("GraphVAEModule needs a vocabulary or a GraphDataModule")
            return
        if self.vae is not None and dm.vocabulary.tokens != self.vocab.tokens:
            dm.use_vocabulary(self.vocab.tokens)  # the model's vocabulary wins; others rejected
        if self.vae is None:
            self.build(dm.vocabulary.tokens, self.hparams.max_atoms or dm.max_atoms_seen)
        if dm.max_atoms_seen > self.hparams.max_atoms:
            raise UserError(
                f"the data has molecules of {dm.max_atoms_seen} heavy atoms but "
                f"model.max_atoms={self.hparams.max_atoms}; set data.max_atoms to reject them"
            )
        self.train_smiles = set(dm.train_smiles())

    @classmethod
    def load_medgen_checkpoint(
        cls, path: str | os.PathLike, map_location: str | torch.device = "cpu"
    ) -> GraphVAEModule:
        """Rebuild a trained module from a checkpoint (``weights_only=True``), in eval mode."""
        from medgen.errors import InputFileError
        from medgen.utils.checkpoint import load_medgen_checkpoint, load_weights

        file, ckpt, kind = load_medgen_checkpoint(path, map_location=map_location)
        if kind != "graph_vae":
            raise InputFileError(f"checkpoint {file} holds kind={kind!r}, not a graph_vae")
        hp = dict(ckpt["hyper_parameters"])
        if not hp.get("vocabulary") or not hp.get("max_atoms"):
            raise InputFileError(f"checkpoint {file}: hyper_parameters lack vocabulary/max_atoms")
        model = cls(**hp)
        load_weights(model, ckpt["state_dict"], file)
        return model.eval()

    # ------------------------------------------------------------------------------------------
    def beta_at(self, step: int) -> float:
        """KL weight at a global step."""
        hp = self.hparams
        if hp.kl_warmup_steps <= 0:
            return float(hp.beta) if step >= hp.kl_start_step else 0.0
        ramp = (step - hp.kl_start_step) / hp.kl_warmup_steps
        return float(hp.beta) * min(1.0, max(0.0, ramp))

    def _log_terms(self, prefix: str, out: dict[str, torch.Tensor], loss, bsz: int) -> None:
        on_step = prefix == "train"
        self.log(
            f"{prefix}/loss", loss, prog_bar=True, batch_size=bsz, on_step=on_step, on_epoch=True
        )
        for key in ("recon", "kl", "nll_atoms", "nll_parents", "nll_orders", "nll_closures"):
            self.log(f"{prefix}/{key}", out[key], batch_size=bsz, on_step=on_step, on_epoch=True)

    def training_step(self, batch: GraphBatch, batch_idx: int) -> torch.Tensor:
        out = self.vae(batch)
        beta = self.beta_at(self.global_step)
        kl_term = out["kl"]
        if self.hparams.free_bits > 0:  # Kingma et al. 2016: no KL pressure below the floor
            kl_term = out["kl_per_dim"].clamp(min=self.hparams.free_bits).sum()
        loss = out["recon"] + beta * kl_term
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)} at step {self.global_step}")
        self._log_terms("train", out, loss, batch.atoms.shape[0])
        self.log("train/beta", beta, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: GraphBatch, batch_idx: int) -> torch.Tensor:
        out = self.vae(batch, sample_z=True)
        loss = out["recon"] + out["kl"]
        self._log_terms("val", out, loss, batch.atoms.shape[0])
        return loss

    def test_step(self, batch: GraphBatch, batch_idx: int) -> torch.Tensor:
        out = self.vae(batch, sample_z=True)
        loss = out["recon"] + out["kl"]
        self._log_terms("test", out, loss, batch.atoms.shape[0])
        return loss

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        dm = getattr(self.trainer, "datamodule", None)
        val_set = getattr(dm, "val_set", None)
        k = min(int(self.hparams.get("n_val_recon", 0)), len(val_set) if val_set else 0)
        if k > 0:
            batch = collate_graphs([val_set[i] for i in range(k)]).to(self.device)
            accuracy = reconstruction_accuracy(self.vae, self.vocab, batch)
            self.log("val/recon_accuracy", accuracy)  # held-out: molecules never trained on
        n = int(self.hparams.n_val_samples)
        if n <= 0:
            return
        from medgen.chem.metrics import fraction_unique, fraction_valid, novelty
        from medgen.molecules.api import sample_smiles

        smiles = sample_smiles(self.vae, self.vocab, n, seed=self.hparams.sample_seed)
        valid = [s for s in smiles if s]
        metrics = {
            "val/validity": fraction_valid(smiles),
            "val/uniqueness": fraction_unique(smiles),
            "val/novelty": novelty(smiles, self.train_smiles),
            "val/heavy_atoms": _mean_atoms(valid),
        }
        for key, value in metrics.items():
            self.log(key, float(value))  # same seed and weights on every rank: same values
        if self.trainer.is_global_zero:
            self._write_grid(valid)

    def _write_grid(self, smiles: list[str]) -> None:
        """Save ``molecules/epoch_XXX.png`` and ``.smi`` in the run dir; send the PNG to TB."""
        import numpy as np
        from rdkit import Chem
        from rdkit.Chem import Draw

        from medgen.utils.atomic import atomic_path, atomic_write_text

        folder = Path(self.trainer.default_root_dir) / "molecules"
        stem = f"epoch_{self.current_epoch:03d}"
        atomic_write_text(folder / f"{stem}.smi", "\n".join(smiles) + "\n")
        mols = [Chem.MolFromSmiles(s) for s in smiles[: self.hparams.grid_size]]
        mols = [m for m in mols if m is not None]
        if not mols:
            return
        image = Draw.MolsToGridImage(mols, molsPerRow=6, subImgSize=(220, 180))
        with atomic_path(folder / f"{stem}.png") as tmp:
            image.save(tmp, format="PNG")
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                array = np.asarray(image.convert("RGB"))
                experiment.add_image("val/molecules", array, self.global_step, dataformats="HWC")

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(
            self.vae.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )


@torch.no_grad()
def reconstruction_accuracy(vae: GraphVAE, vocab: Vocabulary, batch: GraphBatch) -> float:
    """Share of the graphs in ``batch`` whose greedy decode of the posterior mean is the same
    molecule (canonical SMILES without stereo of both graphs)."""
    was_training = vae.training
    vae.eval()
    try:
        mu, _ = vae.encode(batch)
        dec = vae.decoder
        # greedy decoding ignores the noise; passing it keeps the global RNG untouched
        u = torch.full((len(mu), dec.max_atoms + 1, dec.noise_width()), 0.5, device=mu.device)
        decoded = batch_to_smiles(vae.sample(mu, temperature=0.0, uniforms=u), vocab)
    finally:
        vae.train(was_training)
    target = batch_to_smiles(batch, vocab)
    hits = sum(d is not None and d == t for d, t in zip(decoded, target, strict=True))
    return hits / max(1, len(target))


def _mean_atoms(smiles: list[str]) -> float:
    from rdkit import Chem

    counts = [m.GetNumAtoms() for m in map(Chem.MolFromSmiles, smiles) if m is not None]
    return sum(counts) / max(1, len(counts))
