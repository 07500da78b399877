"""Stereochemistry as an option: labels in decoding order round-trip exactly, do not depend on
how the input was written, get a cache of their own, and a model learns, encodes and samples them
(enantiomers that share one graph reconstruct exactly)."""

from __future__ import annotations

import random

import pytest
import torch

from medgen.molecules.featurize import EMBEDDED_SAMPLE, cache_file, load_source
from medgen.molecules.graph import (
    Vocabulary,
    collate_graphs,
    encode_tokens,
    mol_to_tokens,
    mol_to_tokens_with_stereo,
)
from medgen.molecules.stereo import (
    NOT_CANDIDATE,
    collate_stereo,
    labels_tensors,
    smiles_with_stereo,
)

HAND = [
    "C[C@H](N)C(=O)O",  # L-alanine
    "C[C@@H](N)C(=O)O",  # D-alanine
    "CC(N)C(=O)O",  # a centre left unspecified
    "F/C=C/Cl",
    "F/C=C\\Cl",
    "[H]/C(F)=C/Cl",  # the hydrogen that defines the bond is removed, the stereo kept
    "C/C(F)=C(/Cl)Br",
    "C1CC[C@H]2CCCC[C@@H]2C1",
    "C[C@H]1CC[C@@H](C)CC1",  # ring stereo: trans-1,4-dimethylcyclohexane
    "C[C@H]1CC[C@H](C)CC1",
    "C/C=C/[C@@H](O)c1ccccc1",
    "O[C@H]1[C@H](O)[C@@H](O)[C@H](O)[C@@H](O)[C@@H]1O",
    "C[S@](=O)c1ccccc1",  # a sulfoxide
    # a bridged ring where RDKit's reported descriptor and the atom's own tag disagree
    "Cc1ccc(OC(=O)[C@]23CC[C@](C)(C(=O)C2)C3(C)C)cc1",
]


def _rebuilt(smiles: str) -> str:
    """The isomeric SMILES of the graph and labels featurized from ``smiles``."""
    return smiles_with_stereo(smiles)[4]


def _isomers(n: int) -> list[str]:
    """Up to ``n`` stereoisomers (with a specified centre or bond) of embedded molecules."""
    from rdkit import Chem
    from rdkit.Chem.EnumerateStereoisomers import (
        EnumerateStereoisomers,
        StereoEnumerationOptions,
    )

    opts = StereoEnumerationOptions(onlyUnassigned=True, maxIsomers=2, unique=True)
    out: list[str] = []
    for line in EMBEDDED_SAMPLE.read_text().splitlines()[1:]:
        mol = Chem.MolFromSmiles(line.split()[0]) if line.strip() else None
        if mol is None:
            continue
        for iso in EnumerateStereoisomers(mol, options=opts):
            smi = Chem.MolToSmiles(iso)
            if any(c in smi for c in "@/\\"):
                out.append(smi)
        if len(out) >= n:
            break
    return out[:n]


@pytest.mark.parametrize("smiles", HAND)
def test_stereo_labels_round_trip_known_answers(smiles):
    from rdkit import Chem

    assert _rebuilt(smiles) == Chem.MolToSmiles(Chem.RemoveHs(Chem.MolFromSmiles(smiles)))


def test_stereo_labels_round_trip_stereoisomers_of_the_embedded_sample():
    from rdkit import Chem

    isomers = _isomers(300)
    assert len(isomers) == 300
    wrong = [s for s in isomers if _rebuilt(s) != Chem.MolToSmiles(Chem.MolFromSmiles(s))]
    assert wrong == []


def test_stereo_labels_do_not_depend_on_how_the_molecule_was_written():
    from rdkit import Chem

    # meso compounds and ring stereo: atoms equal by constitution must not be ordered by input
    ties = ["C[C@H](O)[C@H](O)C", "F[C@H]1C[C@H]1F", "C[C@H](Cl)C[C@@H](C)Cl",
            "C[C@@H]1C[C@H](C)C[C@@H](C)C1"]  # fmt: skip
    for smiles in [*HAND, *ties, *_isomers(300)]:
        mol = Chem.MolFromSmiles(smiles)
        want = mol_to_tokens_with_stereo(mol)
        assert want[:2] == mol_to_tokens(mol)  # the graph is the stereo-free one
        for seed in range(3 if smiles in ties or smiles in HAND else 1):
            perm = list(range(mol.GetNumAtoms()))
            random.Random(seed).shuffle(perm)
            shuffled = Chem.MolToSmiles(Chem.RenumberAtoms(mol, perm), canonical=False)
            assert mol_to_tokens_with_stereo(Chem.MolFromSmiles(shuffled)) == want, shuffled


def test_enantiomers_share_a_graph_and_differ_only_in_their_label():
    from rdkit import Chem

    left = mol_to_tokens_with_stereo(Chem.MolFromSmiles(HAND[0]))
    right = mol_to_tokens_with_stereo(Chem.MolFromSmiles(HAND[1]))
    flat = mol_to_tokens_with_stereo(Chem.MolFromSmiles(HAND[2]))
    assert left[:2] == right[:2] == flat[:2]
    assert sorted(v for v in left[2] if v > 0) == [left[2][1]] and left[2][1] in (1, 2)
    assert right[2][1] == 3 - left[2][1]
    assert flat[2][1] == 0  # a candidate, unspecified
    assert [v for k, v in enumerate(flat[2]) if k != 1] == [NOT_CANDIDATE] * (len(flat[2]) - 1)


def test_featurize_with_stereo_keeps_isomeric_smiles_in_a_cache_of_its_own(tmp_path):
    src = tmp_path / "stereo.smi"
    src.write_text("smiles\n" + "\n".join([*HAND, "not_a_smiles"]) + "\n")
    feats, cache = load_source(src, cache_dir=tmp_path / "cache", stereo=True)
    flat, flat_cache = load_source(src, cache_dir=tmp_path / "cache")
    assert cache != flat_cache and cache == cache_file(src, None, tmp_path / "cache", True)
    assert len(feats) == len(flat) == len(HAND) and len(feats.rejects) == 1
    assert feats.smiles[0] == "C[C@H](N)C(=O)O" and flat.smiles[0] == "CC(N)C(=O)O"
    assert flat.chirality is None and feats.chirality is not None
    chi, rows, labels = feats.stereo(3)  # F/C=C/Cl: one candidate bond, trans
    assert (chi == NOT_CANDIDATE).all() and rows.tolist() == [[2, 1]] and labels.tolist() == [2]
    again, _ = load_source(src, cache_dir=tmp_path / "cache", stereo=True)  # from the cache
    assert again.smiles == feats.smiles and torch.equal(again.chirality, feats.chirality)


def _tiny_stereo_model(smiles: list[str], steps: int, until_exact: bool = False):
    """A tiny stereo graph VAE fitted to ``smiles`` (teacher forcing, full batch); with
    ``until_exact``, ``steps`` is a cap: it stops at the first 100-step round after which every
    molecule reconstructs (when the stereo head gets there depends on the CPU's arithmetic)."""
    from rdkit import Chem

    from medgen.molecules.sampling import reconstruction_accuracy
    from medgen.molecules.vae import GraphVAE

    encoded = [mol_to_tokens_with_stereo(Chem.MolFromSmiles(s)) for s in smiles]
    vocab = Vocabulary(sorted({t for toks, *_ in encoded for t in toks}))
    graphs = [encode_tokens(toks, bonds, vocab) for toks, bonds, _, _ in encoded]
    labels = [labels_tensors(bonds, chi, on_bonds) for _, bonds, chi, on_bonds in encoded]
    batch, stereo = collate_graphs(graphs), collate_stereo(labels)
    torch.manual_seed(0)
    vae = GraphVAE(capacity=vocab.capacity, max_atoms=int(batch.n_atoms.max()), latent_dim=8,
                   hidden_dim=32, pair_dim=16, stereo=True)  # fmt: skip
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    for step in range(1, steps + 1):
        out = vae(batch, sample_z=False, stereo=stereo)
        opt.zero_grad()
        (out["recon"] + 1e-3 * out["kl"]).backward()
        opt.step()
        if until_exact and step % 100 == 0:
            if reconstruction_accuracy(vae, vocab, batch, stereo) == 1.0:  # restores train()
                break
    return vae.eval(), vocab, batch, stereo


def test_a_stereo_model_reconstructs_enantiomers_that_share_one_graph():
    from medgen.molecules.sampling import reconstruction_accuracy

    smiles = HAND[:2] + ["C[C@H](O)CC", "C[C@@H](O)CC", "F/C=C/Cl", "F/C=C\\Cl"]
    vae, vocab, batch, stereo = _tiny_stereo_model(smiles, steps=1500, until_exact=True)
    assert reconstruction_accuracy(vae, vocab, batch, stereo) == 1.0
    # the enantiomers share a graph: only their labels tell their latents apart
    blind, _ = vae.encode(batch)
    seeing, _ = vae.encode(batch, stereo)
    assert torch.equal(blind[0], blind[1]) and not torch.allclose(seeing[0], seeing[1])
    with pytest.raises(ValueError, match="needs the batch's stereo labels"):
        reconstruction_accuracy(vae, vocab, batch, None)


def test_stereo_sampling_is_isomeric_and_per_molecule():
    from medgen.molecules.sampling import decode_indices, sample_smiles

    smiles = HAND[:2] + ["C[C@H](O)CC", "C[C@@H](O)CC", "F/C=C/Cl", "F/C=C\\Cl"]
    vae, vocab, _, _ = _tiny_stereo_model(smiles, steps=150)
    drawn = sample_smiles(vae, vocab, 40, seed=3, batch_size=40)
    assert all(s is not None for s in drawn)
    assert any(any(c in s for c in "@/\\") for s in drawn)
    assert sample_smiles(vae, vocab, 40, seed=3, batch_size=7) == drawn
    assert decode_indices(vae, vocab, [5, 17], seed=3) == [drawn[5], drawn[17]]


def test_train_with_data_stereo_end_to_end(tmp_path, monkeypatch):
    from medgen.errors import UserError
    from medgen.molecules.api import MoleculeVAE

    from .test_module import train_tiny

    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "isomers.smi"
    src.write_text("smiles\n" + "\n".join(_isomers(200)) + "\n")
    sizes = ["model.network.hidden_dim=32", "model.network.latent_dim=8",
             "model.network.pair_dim=16", "callbacks.molecule_sampling.n_samples=16",
             "callbacks.molecule_sampling.n_recon=4", "data.batch_size=32",
             "data.test_fraction=0.0", f"data.path={src}", "trainer.max_epochs=2"]  # fmt: skip
    train_tiny(tmp_path / "run", [*sizes, "data.stereo=true"])
    vae = MoleculeVAE.from_checkpoint(tmp_path / "run")
    assert vae.module.hparams["stereo"] is True and vae.vae.stereo_head is not None
    drawn = vae.sample(32, seed=0)
    assert all(s is not None for s in drawn)
    # the encoder reads the labels: two enantiomers get two latents
    left, right = vae.encode(["C[C@H](N)C(=O)O", "C[C@@H](N)C(=O)O"])
    assert not torch.allclose(left, right)
    metrics = list((tmp_path / "run").rglob("metrics.csv"))
    assert metrics
    assert any("val/nll_stereo" in p.read_text().splitlines()[0] for p in metrics)
    with pytest.raises(UserError, match="model.stereo=False needs data.stereo=False"):
        train_tiny(tmp_path / "run2", [*sizes, "data.stereo=true", "model.stereo=false"])
    with pytest.raises(UserError, match="a stereo model; set data.stereo=true"):
        train_tiny(tmp_path / "run3", [*sizes, f"model.init_from={tmp_path / 'run'}"])
