"""The graph-aware decoder: partial-graph geometry, learned chemistry masks, exact
reconstruction after overfitting, and checkpoints of the version-1 (sequence) model."""

from __future__ import annotations

import pytest
import torch
from rdkit import Chem

from medgen.errors import InputFileError
from medgen.molecules.graph import (
    Vocabulary,
    batch_to_smiles,
    collate_graphs,
    encode_tokens,
    graph_to_mol,
    round_trip,
    smiles_to_tokens,
)
from medgen.molecules.masks import ChemistryMasks, closure_rings, graph_rings, prefix_distances
from medgen.molecules.module import GraphVAEModule
from medgen.molecules.sampling import draw_noise, reconstruction_accuracy
from medgen.molecules.vae import GraphVAE

from .conftest import MOLECULES

NET = {"latent_dim": 16, "hidden_dim": 64, "pair_dim": 32}


def graphs_of(smiles: list[str], vocab: Vocabulary | None = None):
    tokens = [smiles_to_tokens(s) for s in smiles]
    vocab = vocab or Vocabulary.build(t for t, _ in tokens)
    return collate_graphs([encode_tokens(t, b, vocab) for t, b in tokens]), vocab


def test_closure_ring_sizes_known_answers():
    # one closure per monocycle, its size the ring's; naphthalene closes 6 then 6; phenanthrene's
    # DFS closes the 10-atom perimeter of two rings first, then the fusion bond splits it (6)
    smiles = ["C1CC1", "C1CCCCC1", "C1CCCCCCC1", "c1ccc2ccccc2c1", "c1ccc2c(c1)ccc1ccccc12", "CCO"]
    batch, _ = graphs_of(smiles)
    assert graph_rings(batch) == [[3], [6], [8], [6, 6], [10, 6, 6], []]
    last, rings = prefix_distances(batch.adj)
    # a chain: the last atom is 1 bond from its predecessor, 2 from the one before
    assert last[5, 2, :2].tolist() == [1, 0]
    assert bool((closure_rings(batch.adj) <= rings).all())


def test_masks_round_trip_as_plain_lists_and_refuse_a_foreign_vocabulary():
    batch, vocab = graphs_of(MOLECULES)
    masks = ChemistryMasks.learn([batch], len(vocab))
    plain = masks.to_plain(vocab.tokens)
    again = ChemistryMasks.from_plain(plain, vocab.tokens)
    for name in ("pair_orders", "max_bonds", "max_degree", "ring_sizes"):
        assert torch.equal(getattr(masks, name), getattr(again, name)), name
    assert ["C", "O", 2] in plain["pair_orders"] and ["O", "O", 1] not in plain["pair_orders"]
    assert plain["max_bonds"]["C"][1] == 1  # no carbon with two double bonds in these
    with pytest.raises(InputFileError, match="do not fit the vocabulary"):
        ChemistryMasks.from_plain(plain, ["C", "N"])


def test_learned_masks_never_propose_what_the_training_data_lacks():
    train = ["CCO", "c1ccccc1O", "CC(=O)NC1CCCCC1", "C1CCNC1", "CCN(C)C(=O)c1ccccc1Cl"]
    batch, vocab = graphs_of(train)
    masks = ChemistryMasks.learn([batch], len(vocab))
    torch.manual_seed(0)
    vae = GraphVAE(capacity=vocab.capacity, max_atoms=24, masks=masks, **NET).eval()
    z, u = draw_noise(vae, range(300), seed=3)
    for temperature in (1.0, 3.0):  # a hot untrained decoder tries everything the masks allow
        graphs = vae.sample(z * 2, temperature=temperature, uniforms=u)
        t = graphs.atoms.clamp(min=0)
        b, i, j = torch.tril(graphs.adj, diagonal=-1).nonzero(as_tuple=True)
        seen = {tuple(r) for r in masks.to_plain(vocab.tokens)["pair_orders"]}
        bonds = zip(t[b, i].tolist(), t[b, j].tolist(), graphs.adj[b, i, j].tolist(), strict=True)
        for x, y, o in bonds:
            pair = tuple(sorted((vocab.tokens[x], vocab.tokens[y]), key=vocab.tokens.index))
            assert (*pair, o) in seen, (pair, o)
        allowed = set(masks.ring_sizes.nonzero().flatten().tolist())
        assert {r for rings in graph_rings(graphs) for r in rings} <= allowed
        counts = torch.stack([(graphs.adj == o).sum(-1) for o in (1, 2, 3)], -1)
        assert bool((counts <= masks.max_bonds[t]).all())  # e.g. no C=C=C
        for k in range(len(t)):  # still valid by construction and one molecule
            mol = graph_to_mol(graphs.atoms[k], graphs.adj[k], vocab)
            assert len(Chem.GetMolFrags(mol)) == 1
            rings = [len(r) for r in mol.GetRingInfo().AtomRings()]
            assert max(rings, default=0) <= 6  # SSSR rings never exceed the largest closure seen
    assert int(graphs.n_atoms.max()) > 6


def test_overfit_one_batch_to_exact_reconstruction():
    batch, vocab = graphs_of(MOLECULES)
    masks = ChemistryMasks.learn([batch], len(vocab))
    torch.manual_seed(0)
    vae = GraphVAE(capacity=vocab.capacity, max_atoms=30, masks=masks, **NET)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    for _ in range(300):
        out = vae(batch)
        loss = out["recon"] + 0.01 * out["kl"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert reconstruction_accuracy(vae, vocab, batch) == 1.0
    vae.eval()
    mu, _ = vae.encode(batch)
    assert batch_to_smiles(vae.sample(mu, temperature=0.0), vocab) == [
        round_trip(s) for s in MOLECULES
    ]


def test_teacher_forcing_never_masks_the_target():
    # a molecule with chemistry the masks forbid (an O-O bond) keeps a finite likelihood
    batch, vocab = graphs_of(["CCO", "COOC"])
    masks = ChemistryMasks.learn([graphs_of(["CCO", "COC"], vocab)[0]], len(vocab))
    vae = GraphVAE(capacity=vocab.capacity, max_atoms=8, masks=masks, **NET)
    ll = vae.decoder.log_likelihood(torch.zeros(2, 16), batch)
    assert all(bool((v > -1e3).all()) for v in ll.values())


def _save(module: GraphVAEModule, hp: dict, path) -> None:
    torch.save({"hyper_parameters": hp, "state_dict": module.state_dict()}, path)


def test_version_1_checkpoints_load_with_the_sequence_decoder(tmp_path):
    vocab = ["C", "N", "O"]
    net = {**NET, "decoder": "sequence"}
    module = GraphVAEModule(vocabulary=vocab, max_atoms=12, network=net)
    hp = dict(module.hparams)
    # what medgen wrote before model versions: no version, no masks, no decoder key
    for key in ("model_version", "masks", "learn_masks", "kl_warmup_fraction"):
        hp.pop(key)
    hp["network"] = {k: v for k, v in hp["network"].items() if k != "decoder"}
    _save(module, hp, tmp_path / "v1.ckpt")
    loaded = GraphVAEModule.from_checkpoint(tmp_path / "v1.ckpt")
    assert loaded.hparams["network"]["decoder"] == "sequence"
    assert type(loaded.vae.decoder).__name__ == "GraphDecoder"
    z = torch.randn(4, 16)
    a, b = module.vae.eval().sample(z, temperature=0.0), loaded.vae.sample(z, temperature=0.0)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_checkpoints_of_a_newer_model_version_are_refused_by_name(tmp_path):
    module = GraphVAEModule(vocabulary=["C", "O"], max_atoms=6, network=NET)
    hp = {**module.hparams, "model_version": 99}
    _save(module, hp, tmp_path / "new.ckpt")
    with pytest.raises(InputFileError, match=r"new\.ckpt.*model version changed"):
        GraphVAEModule.from_checkpoint(tmp_path / "new.ckpt")


def test_learned_masks_travel_in_the_checkpoint(tmp_path):
    batch, vocab = graphs_of(MOLECULES)
    plain = ChemistryMasks.learn([batch], len(vocab)).to_plain(vocab.tokens)
    module = GraphVAEModule(vocabulary=vocab.tokens, max_atoms=30, network=NET, masks=plain)
    _save(module, dict(module.hparams), tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["masks"]["ring_sizes"] == plain["ring_sizes"]
    loaded = GraphVAEModule.from_checkpoint(tmp_path / "m.ckpt")
    assert torch.equal(loaded.vae.decoder.pair_orders, module.vae.decoder.pair_orders)


def test_filters_metric_counts_molecules_passing_the_moses_filters():
    from medgen.molecules.callbacks import _filters_pass

    # an 8-membered ring and a charged atom fail the MOSES filters; ethanol and benzamide pass
    smiles = ["CCO", "NC(=O)c1ccccc1", "C1CCCCCCC1", "C[N+](C)(C)C"]
    assert _filters_pass(smiles) == 0.5
    assert _filters_pass([]) == 0.0
