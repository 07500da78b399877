"""Validity by construction, overfitting, encode/decode shapes and seeded determinism."""

from __future__ import annotations

import pytest
import torch
from rdkit import Chem

from medgen.molecules.graph import (
    Vocabulary,
    batch_to_smiles,
    collate_graphs,
    encode_tokens,
    graph_to_mol,
    round_trip,
    smiles_to_tokens,
)
from medgen.molecules.sampling import draw_noise, sample_smiles
from medgen.molecules.vae import GraphVAE

from .conftest import MOLECULES

VOCAB = ["C", "N", "O", "S", "F", "Cl", "Br", "N+1", "O-1"]


def tiny_vae(vocab: Vocabulary, max_atoms: int = 30, seed: int = 0) -> GraphVAE:
    torch.manual_seed(seed)
    return GraphVAE(
        capacity=vocab.capacity, max_atoms=max_atoms, latent_dim=16, hidden_dim=64, pair_dim=32
    )


def test_untrained_samples_all_sanitize_and_are_connected():
    vocab = Vocabulary(VOCAB)
    vae = tiny_vae(vocab, max_atoms=24).eval()
    for temperature in (1.0, 2.0):  # a hot decoder explores odd corners of the valence rules
        z, u = draw_noise(vae, range(200), seed=temperature.__hash__())
        graphs = vae.sample(z * 2, temperature=temperature, uniforms=u)
        for b in range(200):
            # graph_to_mol raises if RDKit cannot sanitize
            mol = graph_to_mol(graphs.atoms[b], graphs.adj[b], vocab)
            assert len(Chem.GetMolFrags(mol)) == 1
            assert Chem.MolFromSmiles(Chem.MolToSmiles(mol)) is not None
        assert int(graphs.n_atoms.max()) > 5


def test_samples_are_valid_with_a_trained_like_bias():
    # push the decoder to always prefer triple bonds and ring closures: masks must still hold
    vocab = Vocabulary(VOCAB)
    vae = tiny_vae(vocab, max_atoms=20).eval()
    with torch.no_grad():
        vae.decoder.parent_head.bias[1:] = torch.tensor([-5.0, 0.0, 5.0])
        vae.decoder.closure_head.bias[:] = torch.tensor([-5.0, 0.0, 0.0, 5.0])
        vae.decoder.atom_head[-1].bias[-1] = -5.0  # rarely stop
    smiles = sample_smiles(vae, vocab, 200, seed=1)
    assert all(s is not None and "." not in s for s in smiles)


def test_tiny_model_overfits_and_reconstructs():
    tokens = [smiles_to_tokens(s) for s in MOLECULES]
    vocab = Vocabulary.build(t for t, _ in tokens)
    batch = collate_graphs([encode_tokens(t, b, vocab) for t, b in tokens])
    vae = tiny_vae(vocab)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    first = None
    for _ in range(250):
        out = vae(batch)
        loss = out["recon"] + 0.01 * out["kl"]
        first = first if first is not None else out["recon"].item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert out["recon"].item() < 0.05 * first
    vae.eval()
    mu, _ = vae.encode(batch)
    decoded = batch_to_smiles(vae.sample(mu, temperature=0.0), vocab)
    assert decoded == [round_trip(s) for s in MOLECULES]


def test_encode_decode_shapes_and_seeded_determinism():
    vocab = Vocabulary(VOCAB)
    vae = tiny_vae(vocab).eval()
    batch = collate_graphs([encode_tokens(*smiles_to_tokens(s), vocab) for s in MOLECULES])
    mu, logvar = vae.encode(batch)
    assert mu.shape == logvar.shape == (len(MOLECULES), 16)
    graphs = vae.sample(mu, temperature=0.0)
    assert graphs.atoms.shape[0] == len(MOLECULES)
    assert graphs.adj.shape[1:] == (graphs.atoms.shape[1],) * 2
    # molecule i of seed s is the same whatever the batch size or how many are drawn
    a = sample_smiles(vae, vocab, 12, seed=7, batch_size=12)
    b = sample_smiles(vae, vocab, 12, seed=7, batch_size=5)
    c = sample_smiles(vae, vocab, 5, seed=7, batch_size=2)
    assert a == b and a[:5] == c
    assert sample_smiles(vae, vocab, 12, seed=8) != a


def test_teacher_forcing_masks_allow_every_sampled_graph():
    # training and sampling share the masks: a sampled graph never hits a masked (-1e9) choice
    vocab = Vocabulary(VOCAB)
    vae = tiny_vae(vocab).eval()
    z = torch.randn(64, 16)
    with torch.no_grad():
        for temperature in (0.0, 1.0):
            graphs = vae.sample(z, temperature=temperature)
            ll = sum(vae.decoder.log_likelihood(z, graphs).values())
            assert bool((ll > -1e4).all()), ll.min()


def test_encoding_does_not_depend_on_the_batch():
    # pooling is normalized by each molecule's own atom count, not the batch's padded length
    vocab = Vocabulary(VOCAB)
    vae = tiny_vae(vocab).eval()
    long = "CCCCCCCCCCOc1ccc(C(=O)NCCF)cc1Br"
    graphs = [encode_tokens(*smiles_to_tokens(s), vocab) for s in ("CCO", long)]
    with torch.no_grad():
        alone, _ = vae.encode(collate_graphs(graphs[:1]))
        both, _ = vae.encode(collate_graphs(graphs))
    assert torch.allclose(alone[0], both[0], atol=1e-5), (alone[0] - both[0]).abs().max()


def test_extreme_temperature_keeps_validity_by_construction():
    # masks are applied after temperature scaling and noise: a huge temperature cannot unmask
    vocab = Vocabulary(VOCAB)
    vae = tiny_vae(vocab, max_atoms=20).eval()
    z, u = draw_noise(vae, range(100), seed=5)
    for temperature in (1e6, 1e10):  # 1e10 made -1e9 masks finite noise-level logits before
        graphs = vae.sample(z, temperature=temperature, uniforms=u)
        for b in range(100):
            mol = graph_to_mol(graphs.atoms[b], graphs.adj[b], vocab)  # raises if not sanitizable
            assert len(Chem.GetMolFrags(mol)) == 1
    assert all(s is not None for s in sample_smiles(vae, vocab, 50, seed=2, temperature=1e6))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), float("nan")])
def test_sampling_rejects_bad_temperatures(temperature):
    vocab = Vocabulary(VOCAB)
    vae = tiny_vae(vocab, max_atoms=8).eval()
    with pytest.raises(ValueError, match=f"temperature .*got {temperature}"):
        sample_smiles(vae, vocab, 2, seed=0, temperature=temperature)
    if temperature != 0.0:  # the decoder itself allows 0 (greedy), nothing below or infinite
        with pytest.raises(ValueError, match="temperature"):
            vae.sample(torch.zeros(1, 16), temperature=temperature)
