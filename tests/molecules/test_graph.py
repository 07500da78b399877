"""RDKit <-> graph round trips, atom types, valence capacities, decoding order."""

from __future__ import annotations

import pytest
import torch
from rdkit import Chem

from medgen.molecules.graph import (
    AtomType,
    FeaturizeError,
    Vocabulary,
    bond_capacity,
    collate_graphs,
    encode_tokens,
    round_trip,
    smiles_to_tokens,
)


def canon(smiles: str) -> str:
    return Chem.MolToSmiles(Chem.MolFromSmiles(smiles), isomericSmiles=False)


@pytest.mark.parametrize(
    "smiles",
    [
        "c1ccccc1",  # benzene: kekulized, aromaticity recovered on sanitization
        "C1=CC=CC=C1",  # Kekulé input gives the aromatic canonical form
        "c1ccc2ccccc2c1",  # naphthalene
        "O=[N+]([O-])c1ccccc1",  # nitro: charged N+ and O-
        "c1cc[nH]c1",  # pyrrole [nH]
        "c1ccc2[nH]ccc2c1",  # indole
        "O=c1cc[nH]cc1",  # pyridone
        "C[NH+](C)C",  # charged N with H
        "[NH3+]CC(=O)[O-]",  # zwitterion
        "[O-][n+]1ccccc1",  # pyridine N-oxide
        "CS(=O)(=O)N",  # hypervalent S
        "C#N",
        "[Cl-]",  # single atom
        "[CH2]C",  # radical: exact H count kept
        "Cn1cnc2c1c(=O)n(C)c(=O)n2C",  # caffeine
    ],
)
def test_round_trip_known_answers(smiles):
    assert round_trip(smiles) == canon(smiles)


def test_stereo_is_dropped():
    assert round_trip("C[C@H](N)C(=O)O") == "CC(N)C(=O)O"
    assert round_trip("C/C=C/C") == "CC=CC"


def test_tokens_keep_charges_and_exact_hydrogens_only_where_needed():
    tokens, bonds = smiles_to_tokens("O=[N+]([O-])c1ccccc1")
    assert sorted(set(tokens)) == ["C", "N+1", "O", "O-1"]
    assert {order for _, _, order in bonds} == {1, 2}  # kekulized: no aromatic bonds
    assert smiles_to_tokens("c1cc[nH]c1")[0].count("N") == 1  # [nH] is implicit in Kekulé form
    assert "C;H2" in smiles_to_tokens("[CH2]C")[0]  # a radical needs its exact H count


def test_decoding_order_has_parents():
    # every atom after the first bonds to an earlier one (DFS order)
    tokens, bonds = smiles_to_tokens("CC(C)Oc1ccc(C(=O)NCCF)cc1Br")
    earlier = {i for i, j, _ in bonds}
    assert earlier == set(range(1, len(tokens)))
    assert all(i > j for i, j, _ in bonds)


def test_atom_type_tokens_parse_back():
    for token in ("C", "N+1", "O-1", "N;H2", "Fe+2", "S+1;H1"):
        assert AtomType.from_token(token).token == token
    with pytest.raises(ValueError, match="not an atom-type token"):
        AtomType.from_token("c1")


def test_capacities_follow_rdkit_valence_rules():
    caps = {t: bond_capacity(AtomType.from_token(t)) for t in ("C", "N", "O", "N+1", "O-1", "F")}
    assert caps == {"C": 4, "N": 3, "O": 2, "N+1": 4, "O-1": 1, "F": 1}
    assert bond_capacity(AtomType.from_token("S")) == 6
    assert bond_capacity(AtomType.from_token("N;H1")) == 2


def test_unrepresentable_molecules_are_refused_with_reason():
    with pytest.raises(FeaturizeError, match="2 disconnected fragments"):
        smiles_to_tokens("CC(=O)[O-].[Na+]")
    with pytest.raises(FeaturizeError, match="(?i)valence"):
        smiles_to_tokens("C(C)(C)(C)(C)C")
    tokens, bonds = smiles_to_tokens("CCBr")
    with pytest.raises(FeaturizeError, match="not in the vocabulary: Br"):
        encode_tokens(tokens, bonds, Vocabulary(["C", "N"]))


def test_collate_pads_and_symmetrizes():
    vocab = Vocabulary(["C", "O", "N"])
    graphs = [encode_tokens(*smiles_to_tokens(s), vocab) for s in ("CCO", "C1CC1N")]
    batch = collate_graphs(graphs)
    assert batch.atoms.shape == (2, 4) and batch.adj.shape == (2, 4, 4)
    assert batch.n_atoms.tolist() == [3, 4]
    assert batch.atoms[0, 3] == -1
    assert torch.equal(batch.adj, batch.adj.transpose(1, 2))
    assert int(batch.adj[1].sum()) == 2 * 4  # 4 single bonds, counted twice
