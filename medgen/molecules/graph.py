"""RDKit molecules <-> graph tensors: atom-type vocabulary, valence table, decoding order.

A molecule becomes a :class:`MolGraph`: one vocabulary index per heavy atom and its bonds, kekulized
(single / double / triple only), so that aromaticity is perceived again by RDKit's sanitization when
the graph is turned back into a molecule.

Atom types are ``(element, formal charge, hydrogens)`` where ``hydrogens`` is ``None`` ("let RDKit
compute the implicit hydrogens", the usual case, covering e.g. ``[nH]`` in a kekulized ring and
``[NH+]``) or an exact count, stored only where RDKit's implicit-hydrogen rule would give another
count for the same bonds (radicals, unusual valences). Tokens read ``C``, ``N+1``, ``O-1``,
``N;H2``.

Isotopes and atom-map numbers are dropped, and so is stereochemistry unless asked for
(:func:`mol_to_tokens_with_stereo`, labels of :mod:`medgen.molecules.stereo` beside the graph):
graphs are compared by canonical SMILES written with ``isomericSmiles=False``.

Atoms are ordered depth-first from the atom of lowest canonical rank, neighbours visited by
canonical rank (the order of a canonical SMILES string). In that order every atom but the first
has an earlier neighbour; its *parent* is the latest earlier neighbour (the DFS tree parent) and
its other earlier neighbours are *ring closures*, all with smaller indices than the parent.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

import torch

from medgen.errors import UserError

# bond orders used on graph edges; 0 means "no bond"
MAX_BOND_ORDER = 3
_TOKEN = re.compile(r"^([A-Z][a-z]?)([+-]\d+)?(?:;H(\d+))?$")


class FeaturizeError(ValueError):
    """A molecule that cannot become a graph (the message is the reason, for rejects files)."""


@dataclass(frozen=True, order=True)
class AtomType:
    """One vocabulary entry: element, formal charge, exact hydrogen count or None (implicit)."""

    symbol: str
    charge: int = 0
    hydrogens: int | None = None

    @property
    def token(self) -> str:
        text = self.symbol + (f"{self.charge:+d}" if self.charge else "")
        return text + (f";H{self.hydrogens}" if self.hydrogens is not None else "")

    @classmethod
    def from_token(cls, token: str) -> AtomType:
        match = _TOKEN.match(token.strip())
        if not match:
            raise UserError(f"not an atom-type token (e.g. 'C', 'N+1', 'N;H2'): {token!r}")
        symbol, charge, hs = match.groups()
        return cls(symbol, int(charge or 0), None if hs is None else int(hs))


@cache
def _max_valence(symbol: str, charge: int) -> int:
    """Largest total valence RDKit's sanitizer accepts for an element with this charge.

    Probed with RDKit itself (a lone atom carrying ``v`` explicit hydrogens), so the table always
    follows the installed RDKit's valence model, including its rules for charged atoms (N+ like C,
    O- like F, ...). Elements without a valence rule are capped at 8.
    """
    from rdkit import Chem, rdBase

    best = 0
    with rdBase.BlockLogs():
        for v in range(9):
            mol = Chem.RWMol()
            atom = Chem.Atom(symbol)
            atom.SetFormalCharge(charge)
            atom.SetNumExplicitHs(v)
            atom.SetNoImplicit(True)
            mol.AddAtom(atom)
            try:
                Chem.SanitizeMol(mol)
            except Exception:  # noqa: BLE001 - RDKit raises several exception types for valence
                break
            best = v
    return best


def bond_capacity(atom_type: AtomType) -> int:
    """Sum of bond orders an atom of this type may carry so that the molecule sanitizes."""
    return max(0, _max_valence(atom_type.symbol, atom_type.charge) - (atom_type.hydrogens or 0))


class Vocabulary:
    """An ordered list of atom types with their bond capacities (from RDKit's valence rules)."""

    def __init__(self, tokens: Sequence[str]):
        if len(tokens) == 0:
            raise UserError("an atom vocabulary needs at least one atom type")
        self.types = tuple(AtomType.from_token(t) for t in tokens)
        self.tokens = [t.token for t in self.types]
        if len(set(self.tokens)) != len(self.tokens):
            raise UserError(f"duplicate atom types in vocabulary: {list(tokens)}")
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.capacity = torch.tensor([bond_capacity(t) for t in self.types], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.types)

    def __repr__(self) -> str:
        return f"Vocabulary({self.tokens})"

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_count: int = 1) -> Vocabulary:
        """The types seen at least ``min_count`` times, most frequent first (ties by token)."""
        counts = Counter(t for tokens in token_lists for t in tokens)
        kept = sorted(
            (t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t)
        )
        return cls(kept)


class MolGraph(NamedTuple):
    """One molecule as a graph, atoms in decoding order.

    atoms: ``(N,)`` int64 vocabulary indices.
    bonds: ``(E, 3)`` int64 rows ``(i, j, order)`` with ``i > j`` (a bond to an earlier atom) and
    ``order`` in {1, 2, 3} (kekulized).
    """

    atoms: torch.Tensor
    bonds: torch.Tensor


class GraphBatch(NamedTuple):
    """Padded graphs.

    atoms: ``(B, N)`` int64 vocabulary indices, ``-1`` past each molecule's end.
    adj: ``(B, N, N)`` int64 symmetric bond orders (0 = no bond).
    n_atoms: ``(B,)`` int64 heavy-atom counts.
    """

    atoms: torch.Tensor
    adj: torch.Tensor
    n_atoms: torch.Tensor

    def to(self, device: torch.device | str) -> GraphBatch:
        return GraphBatch(*(t.to(device) for t in self))


def collate_graphs(graphs: Sequence[MolGraph]) -> GraphBatch:
    """Pad a list of :class:`MolGraph` into one :class:`GraphBatch`."""
    n_atoms = torch.tensor([len(g.atoms) for g in graphs], dtype=torch.long)
    size = int(n_atoms.max()) if len(graphs) else 0
    atoms = torch.full((len(graphs), size), -1, dtype=torch.long)
    adj = torch.zeros((len(graphs), size, size), dtype=torch.long)
    for b, g in enumerate(graphs):
        atoms[b, : len(g.atoms)] = g.atoms
        if len(g.bonds):
            i, j, order = g.bonds.T
            adj[b, i, j] = order
            adj[b, j, i] = order
    return GraphBatch(atoms, adj, n_atoms)


def standardize(mol):
    """A copy of ``mol`` without stereo, isotopes, atom maps and explicit H atoms, kekulized.

    Raises :class:`FeaturizeError` for molecules a graph cannot hold (several fragments, no atoms,
    bond types other than single/double/triple/aromatic).
    """
    from rdkit import Chem

    mol = Chem.Mol(mol)
    if mol.GetNumAtoms() == 0:
        raise FeaturizeError("no atoms")
    Chem.RemoveStereochemistry(mol)
    _clear_atoms(mol)
    mol = Chem.RemoveHs(mol, sanitize=True)
    return _kekulized(mol)


def standardize_with_stereo(mol):
    """``(standardized, with_stereo)``: :func:`standardize`'s molecule and the same atoms (same
    indices) sanitized with their stereochemistry, hydrogens that defined it removed."""
    from rdkit import Chem

    mol = Chem.Mol(mol)
    if mol.GetNumAtoms() == 0:
        raise FeaturizeError("no atoms")
    _clear_atoms(mol)
    params = Chem.RemoveHsParameters()
    params.removeDefiningBondStereo = True
    with_stereo = Chem.RemoveHs(mol, params, sanitize=True)
    flat = Chem.Mol(with_stereo)
    Chem.RemoveStereochemistry(flat)
    return _kekulized(flat), with_stereo


def _atoms(mol) -> list:
    """``mol``'s atoms in index order (direct calls: RDKit's sequence wrapper is slower)."""
    return [mol.GetAtomWithIdx(k) for k in range(mol.GetNumAtoms())]


def _bonds(mol) -> list:
    """``mol``'s bonds in index order."""
    return [mol.GetBondWithIdx(k) for k in range(mol.GetNumBonds())]


def _clear_atoms(mol) -> None:
    for atom in _atoms(mol):
        if atom.GetAtomicNum() == 0:
            raise FeaturizeError(f"dummy/query atom {atom.GetSymbol()!r} (atomic number 0)")
        atom.SetIsotope(0)
        atom.SetAtomMapNum(0)


def _kekulized(mol):
    from rdkit import Chem

    n_frags = len(Chem.GetMolFrags(mol))
    if n_frags > 1:
        raise FeaturizeError(f"{n_frags} disconnected fragments (salts/mixtures are not supported)")
    try:
        Chem.Kekulize(mol, clearAromaticFlags=True)
    except Exception as err:  # noqa: BLE001 - RDKit raises several kinds here
        raise FeaturizeError(f"cannot kekulize: {err}") from err
    # checked after kekulizing: an aromatic bond outside a ring (``C:C``) stays aromatic
    to_order, _ = _bond_types()
    for bond in _bonds(mol):
        if bond.GetBondType() not in to_order:
            raise FeaturizeError(f"unsupported bond type {bond.GetBondType()} after kekulization")
    return mol


@cache
def _bond_types():
    from rdkit import Chem

    bt = Chem.BondType
    return {bt.SINGLE: 1, bt.DOUBLE: 2, bt.TRIPLE: 3}, {1: bt.SINGLE, 2: bt.DOUBLE, 3: bt.TRIPLE}


def dfs_order(mol) -> list[int]:
    """Atom indices depth-first from the lowest canonical rank, neighbours by canonical rank."""
    from rdkit import Chem

    ranks = list(Chem.CanonicalRankAtoms(mol, breakTies=True))
    neighbours: list[list[int]] = [[] for _ in ranks]
    for bond in _bonds(mol):
        a, b = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        neighbours[a].append(b)
        neighbours[b].append(a)
    for row in neighbours:
        row.sort(key=ranks.__getitem__)
    start = min(range(mol.GetNumAtoms()), key=ranks.__getitem__)
    order, seen, stack = [], set(), [start]
    while stack:
        atom = stack.pop()
        if atom in seen:
            continue
        seen.add(atom)
        order.append(atom)
        stack.extend(n for n in reversed(neighbours[atom]) if n not in seen)
    return order


def mol_to_tokens(mol) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Atom-type tokens (decoding order) and bonds ``(i, j, order)``, ``i > j``, of a molecule.

    ``mol`` is any sanitized RDKit molecule; it is standardized first (see :func:`standardize`).
    Raises :class:`FeaturizeError` when it cannot be represented.
    """
    tokens, bonds, _ = _tokens(standardize(mol))
    return tokens, bonds


def mol_to_tokens_with_stereo(
    mol,
) -> tuple[list[str], list[tuple[int, int, int]], list[int], list[int]]:
    """:func:`mol_to_tokens` plus stereo labels (:mod:`medgen.molecules.stereo`): one per atom and
    one per bond (aligned with the bonds), ``NOT_CANDIDATE`` where none applies."""
    from rdkit import Chem

    from medgen.molecules.stereo import NOT_CANDIDATE, stereo_labels

    flat, with_stereo = standardize_with_stereo(mol)
    # atoms equal by constitution (meso compounds, ring stereo) are ordered by a rank that sees
    # chirality, never by the input's atom order, so one configuration gets one set of labels
    ranks = list(Chem.CanonicalRankAtoms(with_stereo, breakTies=True, includeChirality=True))
    renumber = sorted(range(with_stereo.GetNumAtoms()), key=ranks.__getitem__)
    flat = Chem.RenumberAtoms(flat, renumber)
    with_stereo = Chem.RenumberAtoms(with_stereo, renumber)
    tokens, bonds, order = _tokens(flat)
    chirality, on_bonds = stereo_labels(with_stereo, order)
    labels = [on_bonds.get((i, j), NOT_CANDIDATE) for i, j, _ in bonds]
    return tokens, bonds, chirality, labels


def _tokens(mol) -> tuple[list[str], list[tuple[int, int, int]], list[int]]:
    """Tokens, bonds and decoding order (atoms of ``mol``) of a standardized molecule."""
    to_order, _ = _bond_types()
    order = dfs_order(mol)
    position = {atom: k for k, atom in enumerate(order)}
    bonds = []
    for bond in _bonds(mol):
        a, b = position[bond.GetBeginAtomIdx()], position[bond.GetEndAtomIdx()]
        bonds.append((max(a, b), min(a, b), to_order[bond.GetBondType()]))
    bonds.sort()
    atoms = _atoms(mol)
    types = [_atom_type(atoms[i].GetSymbol(), atoms[i].GetFormalCharge()) for i in order]
    # keep an exact hydrogen count only where RDKit's implicit rule would not reproduce it
    rebuilt = _build_mol(types, bonds, sanitize=False)
    rebuilt.UpdatePropertyCache(strict=False)
    tokens = []
    for k, atom_idx in enumerate(order):
        atom = atoms[atom_idx]
        wanted = atom.GetTotalNumHs()
        if rebuilt.GetAtomWithIdx(k).GetTotalNumHs() != wanted or atom.GetNumRadicalElectrons():
            types[k] = _atom_type(types[k].symbol, types[k].charge, wanted)
        tokens.append(types[k].token)
    return tokens, bonds, order


@cache
def _atom_type(symbol: str, charge: int = 0, hydrogens: int | None = None) -> AtomType:
    """One shared :class:`AtomType` per entry (they are frozen)."""
    return AtomType(symbol, charge, hydrogens)


@cache
def atom_type_of_token(token: str) -> AtomType:
    """:meth:`AtomType.from_token`, parsed once per distinct token."""
    return AtomType.from_token(token)


def smiles_to_tokens(smiles: str) -> tuple[list[str], list[tuple[int, int, int]]]:
    """:func:`mol_to_tokens` of a SMILES string; :class:`FeaturizeError` names RDKit's reason."""
    from medgen.chem.mol import parse_smiles_with_reason

    mol, reason = parse_smiles_with_reason(smiles)
    if mol is None:
        raise FeaturizeError(reason or "RDKit could not parse the SMILES")
    return mol_to_tokens(mol)


def encode_tokens(
    tokens: Sequence[str], bonds: Sequence[tuple[int, int, int]], vocab: Vocabulary
) -> MolGraph:
    """A :class:`MolGraph` from tokens and bonds; :class:`FeaturizeError` for unknown atom types."""
    missing = sorted({t for t in tokens if t not in vocab.index})
    if missing:
        raise FeaturizeError(f"atom type(s) not in the vocabulary: {', '.join(missing)}")
    atoms = torch.tensor([vocab.index[t] for t in tokens], dtype=torch.long)
    edges = torch.tensor(list(bonds), dtype=torch.long).reshape(-1, 3)
    return MolGraph(atoms, edges)


@cache
def _atom_prototype(t: AtomType):
    """The RDKit atom of a vocabulary entry, made once (``AddAtom`` adds a copy of it)."""
    from rdkit import Chem

    atom = Chem.Atom(t.symbol)
    atom.SetFormalCharge(t.charge)
    if t.hydrogens is not None:
        atom.SetNumExplicitHs(t.hydrogens)
        atom.SetNoImplicit(True)
    return atom


def _build_mol(types: Sequence[AtomType], bonds: Iterable[tuple[int, int, int]], sanitize=True):
    from rdkit import Chem

    _, to_rdkit = _bond_types()
    mol = Chem.RWMol()
    for t in types:
        mol.AddAtom(_atom_prototype(t))
    for i, j, order in bonds:
        mol.AddBond(int(i), int(j), to_rdkit[int(order)])
    mol = mol.GetMol()
    if sanitize:
        Chem.SanitizeMol(mol)
    return mol


def graph_to_mol(atoms: torch.Tensor, adj: torch.Tensor, vocab: Vocabulary):
    """The sanitized RDKit molecule of one padded graph (no repair: RDKit errors propagate).

    atoms: ``(N,)`` vocabulary indices (entries ``< 0`` are padding and must come last).
    adj: ``(N, N)`` symmetric bond orders.
    """
    indices = atoms.tolist()
    n = sum(1 for a in indices if a >= 0)
    sub = torch.tril(adj[:n, :n], diagonal=-1)
    i, j = sub.nonzero(as_tuple=True)
    bonds = zip(i.tolist(), j.tolist(), sub[i, j].tolist(), strict=True)
    return _build_mol([vocab.types[a] for a in indices[:n]], bonds)


def molgraph_to_mol(graph: MolGraph, vocab: Vocabulary):
    """The sanitized RDKit molecule of a :class:`MolGraph`."""
    return _build_mol([vocab.types[a] for a in graph.atoms.tolist()], graph.bonds.tolist())


def mol_to_smiles(mol) -> str:
    """Canonical SMILES without stereo or isotopes (how medgen compares molecules)."""
    from rdkit import Chem

    return Chem.MolToSmiles(mol, isomericSmiles=False)


def batch_to_mols(batch: GraphBatch, vocab: Vocabulary) -> list:
    """The sanitized RDKit molecule of each graph in a batch; None where RDKit rejects one."""
    from rdkit import rdBase

    atoms = batch.atoms.cpu().tolist()
    # all bonds of the batch in one call: rows (b, i, j) with i > j, grouped by molecule
    lower = torch.tril(batch.adj.cpu(), diagonal=-1)
    where = lower.nonzero()
    orders = lower[where[:, 0], where[:, 1], where[:, 2]].tolist()
    per_mol: list[list[tuple[int, int, int]]] = [[] for _ in atoms]
    for (b, i, j), order in zip(where.tolist(), orders, strict=True):
        per_mol[b].append((i, j, order))
    out = []
    with rdBase.BlockLogs():
        for row, bonds in zip(atoms, per_mol, strict=True):
            types = [vocab.types[a] for a in row if a >= 0]
            try:
                out.append(_build_mol(types, bonds))
            except Exception:  # noqa: BLE001 - counted as invalid, never fixed
                out.append(None)
    return out


def batch_to_smiles(batch: GraphBatch, vocab: Vocabulary) -> list[str | None]:
    """Canonical SMILES of each graph in a batch; None where RDKit rejects one (never repaired)."""
    return [None if m is None else mol_to_smiles(m) for m in batch_to_mols(batch, vocab)]


def round_trip(smiles: str) -> str:
    """SMILES -> graph -> molecule -> canonical SMILES (no stereo), with a vocabulary of its own."""
    tokens, bonds = smiles_to_tokens(smiles)
    vocab = Vocabulary(sorted(set(tokens)))
    graph = encode_tokens(tokens, bonds, vocab)
    return mol_to_smiles(molgraph_to_mol(graph, vocab))
