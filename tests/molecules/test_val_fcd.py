"""`val/fcd`: the Fréchet ChemNet distance of validation-time samples to a fixed validation subset,
and the MOSES recipe keeping its best checkpoint by it."""

from __future__ import annotations

import math

import pytest
import torch

from medgen.chem.fcd import activation_statistics, chemnet_activations, frechet_distance
from medgen.errors import ConfigError, UserError
from medgen.molecules.callbacks import MoleculeSampling

from .conftest import MOLECULES
from .test_module import train_tiny

MORE = ["CCOc1ccc(C(=O)N2CCCC2)cc1", "Cc1ccc(S(=O)(=O)N2CCOCC2)cc1", "O=C(Nc1ccccc1)c1ccco1",
        "CN1CCN(c2ccc(F)cc2)CC1", "CC(=O)Nc1ccc(O)cc1", "Clc1ccc(CN2CCCCC2)cc1"]  # fmt: skip


class _Data:
    def __init__(self, val):
        self._val = list(val)

    def val_smiles(self):
        return self._val


def test_val_fcd_is_the_fcd_to_the_first_n_fcd_validation_molecules():
    cb = MoleculeSampling(n_samples=8, n_fcd=6)
    dm = _Data(MOLECULES + MORE)  # the reference is the first 6: MOLECULES
    got = cb._fcd(dm, MORE)
    ref = activation_statistics(chemnet_activations(MOLECULES))
    want = frechet_distance(*activation_statistics(chemnet_activations(MORE)), *ref)
    assert got == pytest.approx(want, rel=1e-9) and got > 0
    assert cb._fcd(dm, MOLECULES) == pytest.approx(0.0, abs=1e-6)  # the reference itself
    assert cb._fcd(dm, MORE[:1]) == math.inf  # fewer than 2 valid samples: never the best


def test_val_fcd_settings_and_data_are_checked():
    with pytest.raises(ConfigError, match=r"callbacks\.molecule_sampling\.n_fcd"):
        MoleculeSampling(n_fcd=1)
    with pytest.raises(ConfigError, match=r"callbacks\.molecule_sampling\.n_fcd"):
        MoleculeSampling(n_samples=0, n_fcd=10)
    with pytest.raises(UserError, match="validation SMILES"):
        MoleculeSampling(n_fcd=10)._fcd(object(), MORE)
    # a validation split too small for FCD: inf (never the best checkpoint), said once
    small = MoleculeSampling(n_fcd=10)
    assert small._fcd(_Data(MOLECULES[:1]), MORE) == math.inf
    assert small._fcd(_Data(MOLECULES[:1]), MORE) == math.inf


def test_the_moses_recipe_keeps_the_best_checkpoint_by_val_fcd(tmp_path, monkeypatch):
    """experiment=moses_graph_vae, shrunk to the embedded sample: val/fcd (of samples from a
    prior fitted at each validation) is logged every validation and checkpoints/best_fcd-*.ckpt
    is the checkpoint of its lowest value."""
    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(tmp_path / "cache"))
    overrides = ["experiment=moses_graph_vae", "data.path=null", "data.limit=40",
                 "data.val_fraction=0.25", "data.test_fraction=0.0", "data.batch_size=16",
                 "data.num_workers=0", "data.featurize_workers=1", "model.network.hidden_dim=16",
                 "model.network.latent_dim=4", "model.network.pair_dim=8",
                 "callbacks.molecule_sampling.n_samples=8", "callbacks.molecule_sampling.n_recon=2",
                 "callbacks.molecule_sampling.n_fcd=10", "trainer.max_epochs=2"]  # fmt: skip
    metrics = train_tiny(tmp_path, overrides)
    assert "val/fcd" in metrics and metrics["val/fcd"] >= 0
    assert "val/prior_gain" in metrics  # the recipe draws them from a fitted prior
    best = list((tmp_path / "run" / "checkpoints").glob("best_fcd-*.ckpt"))
    assert len(best) == 1
    state = torch.load(best[0], map_location="cpu", weights_only=True)
    callbacks = state["callbacks"]
    key = next(k for k in callbacks if "val/fcd" in k)
    assert float(callbacks[key]["best_model_score"]) <= metrics["val/fcd"] + 1e-9
