"""Stereochemistry as an option (``data.stereo=true``): labels on the graph, a head, assignment.

Graphs (:mod:`medgen.molecules.graph`) hold the constitution. With the option, each molecule also
carries one label per *stereo candidate*, the tetrahedral centres and double bonds RDKit's
``FindPotentialStereo`` finds in the graph's (sanitized, aromatic) molecule, so the same candidates
are found when a data set is featurized and when a decoded graph is labelled:

* an atom: ``UNSPECIFIED`` (0), ``1`` (clockwise) or ``2`` (anticlockwise), looking from the first
  of its neighbours *in increasing decoding index* (an implicit hydrogen where RDKit puts it);
* a double bond ``i > j``: ``0``, ``1`` (cis) or ``2`` (trans) of the two reference neighbours, on
  each end the neighbour other than the partner with the lowest decoding index;
* ``NOT_CANDIDATE`` (-1) everywhere else.

Labels live in the decoding order, never in a file's atom order, so a label means the same thing
for every molecule and the network can learn it. Stereo kinds that are neither (atropisomers,
octahedral or square-planar centres, cumulenes) are dropped, as they are without the option.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medgen.molecules.graph import MAX_BOND_ORDER, GraphBatch

NOT_CANDIDATE = -1
UNSPECIFIED = 0
N_CLASSES = 3  # unspecified, clockwise / cis, anticlockwise / trans


def _parity(values: Sequence[int]) -> int:
    """0 for an even permutation of ``sorted(values)``, 1 for an odd one."""
    values, odd = list(values), 0
    for a in range(len(values)):
        for b in range(a + 1, len(values)):
            odd ^= values[a] > values[b]
    return odd


def _reference(mol, atom: int, partner: int) -> int:
    """The neighbour of ``atom`` other than ``partner`` with the lowest index (-1: none)."""
    others = [n.GetIdx() for n in mol.GetAtomWithIdx(atom).GetNeighbors() if n.GetIdx() != partner]
    return min(others) if others else -1


def candidates(mol) -> tuple[list[int], list[tuple[int, int]]]:
    """Tetrahedral centres and double bonds ``(i, j)``, ``i > j``, that may carry stereo."""
    from rdkit import Chem

    atoms, bonds = [], []
    for info in Chem.FindPotentialStereo(mol, cleanIt=False, flagPossible=True):
        if info.type == Chem.StereoType.Atom_Tetrahedral:
            atoms.append(int(info.centeredOn))
        elif info.type == Chem.StereoType.Bond_Double:
            bond = mol.GetBondWithIdx(int(info.centeredOn))
            a, b = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
            bonds.append((max(a, b), min(a, b)))
    return sorted(atoms), sorted(bonds)


def stereo_labels(mol, order: Sequence[int]) -> tuple[list[int], dict[tuple[int, int], int]]:
    """Labels of a molecule whose atoms will be decoded in ``order`` (``order[k]`` is the atom
    of ``mol`` at decoding index ``k``): chirality per decoding index and ``{(i, j): label}``
    for candidate double bonds (``i > j`` decoding indices). ``mol``: sanitized, stereo kept."""
    from rdkit import Chem

    tet, cis_trans = _descriptors()
    renumbered = Chem.RenumberAtoms(mol, [int(k) for k in order])
    chirality = [NOT_CANDIDATE] * renumbered.GetNumAtoms()
    bonds: dict[tuple[int, int], int] = {}
    specified = Chem.StereoSpecified.Specified
    for info in Chem.FindPotentialStereo(renumbered, cleanIt=False, flagPossible=True):
        if info.type == Chem.StereoType.Atom_Tetrahedral:
            # the atom's own tag, relative to its bonds' order (the descriptor RDKit reports
            # beside it can disagree in bridged rings), re-expressed for sorted neighbours
            atom = renumbered.GetAtomWithIdx(int(info.centeredOn))
            label = tet.get(atom.GetChiralTag(), UNSPECIFIED)
            if info.specified == specified and label:
                in_bond_order = [b.GetOtherAtomIdx(atom.GetIdx()) for b in atom.GetBonds()]
                label ^= 3 * _parity(in_bond_order)  # 1 <-> 2 when odd
            else:
                label = UNSPECIFIED
            chirality[atom.GetIdx()] = label
        elif info.type == Chem.StereoType.Bond_Double:
            bond = renumbered.GetBondWithIdx(int(info.centeredOn))
            begin, end = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
            label = UNSPECIFIED
            if info.specified == specified and info.descriptor in cis_trans:
                ctrl = list(info.controllingAtoms)
                flips = (ctrl[0] != _reference(renumbered, begin, end)) + (
                    ctrl[2] != _reference(renumbered, end, begin)
                )
                label = cis_trans[info.descriptor] ^ (3 * (flips % 2))
            bonds[(max(begin, end), min(begin, end))] = label
    return chirality, bonds


def featurize_with_stereo(mol):
    """``(tokens, bonds, chirality, bond labels, isomeric canonical SMILES)`` of a molecule:
    its graph (:func:`medgen.molecules.graph.mol_to_tokens_with_stereo`) and the SMILES of that
    graph with its labels set, the string a decode of it gives."""
    from rdkit import Chem

    from medgen.molecules.graph import _build_mol, atom_type_of_token, mol_to_tokens_with_stereo

    tokens, bonds, chirality, on_bonds = mol_to_tokens_with_stereo(mol)
    built = _build_mol([atom_type_of_token(t) for t in tokens], bonds)
    chosen = {k: v for k, v in enumerate(chirality) if v > 0}
    pairs = {(i, j): v for (i, j, _), v in zip(bonds, on_bonds, strict=True) if v > 0}
    return tokens, bonds, chirality, on_bonds, Chem.MolToSmiles(assign(built, chosen, pairs))


def smiles_with_stereo(smiles: str):
    """:func:`featurize_with_stereo` of a SMILES string (``FeaturizeError`` naming the reason)."""
    from medgen.chem.mol import parse_smiles_with_reason
    from medgen.molecules.graph import FeaturizeError

    mol, reason = parse_smiles_with_reason(smiles)
    if mol is None:
        raise FeaturizeError(reason or "RDKit could not parse the SMILES")
    return featurize_with_stereo(mol)


def labels_tensors(bonds, chirality, on_bonds) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One molecule's labels as :func:`collate_stereo` takes them."""
    keep = [k for k, v in enumerate(on_bonds) if v >= 0]
    rows = torch.tensor([bonds[k][:2] for k in keep], dtype=torch.long).reshape(-1, 2)
    return torch.tensor(chirality), rows, torch.tensor([on_bonds[k] for k in keep])


def assign(mol, chirality: dict[int, int], bonds: dict[tuple[int, int], int]):
    """A copy of ``mol`` (atoms in decoding order) with the labels set on its candidates; labels
    ``UNSPECIFIED`` and keys that are not candidates leave that element unspecified."""
    from rdkit import Chem

    out = Chem.RWMol(mol)
    for a, label in chirality.items():
        if label not in (1, 2):
            continue
        atom = out.GetAtomWithIdx(int(a))
        in_bond_order = [b.GetOtherAtomIdx(int(a)) for b in atom.GetBonds()]
        clockwise = (label == 1) != bool(_parity(in_bond_order))
        atom.SetChiralTag(
            Chem.ChiralType.CHI_TETRAHEDRAL_CW if clockwise else Chem.ChiralType.CHI_TETRAHEDRAL_CCW
        )
    for (i, j), label in bonds.items():
        if label not in (1, 2):
            continue
        bond = out.GetBondBetweenAtoms(int(i), int(j))
        if bond is None or bond.GetBondType() != Chem.BondType.DOUBLE:
            continue
        begin, end = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        ref_b, ref_e = _reference(out, begin, end), _reference(out, end, begin)
        if ref_b < 0 or ref_e < 0:
            continue
        bond.SetStereoAtoms(ref_b, ref_e)
        bond.SetStereo(Chem.BondStereo.STEREOCIS if label == 1 else Chem.BondStereo.STEREOTRANS)
    mol = out.GetMol()
    # RDKit's (legacy) perception reads double-bond stereo from the neighbours' bond directions
    Chem.SetDoubleBondNeighborDirections(mol)
    Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
    return mol


def _descriptors():
    """``(chiral tag, double-bond descriptor)`` tables from RDKit to labels."""
    from rdkit import Chem

    tag, d = Chem.ChiralType, Chem.StereoDescriptor
    tet = {tag.CHI_TETRAHEDRAL_CW: 1, tag.CHI_TETRAHEDRAL_CCW: 2}
    return tet, {d.Bond_Cis: 1, d.Bond_Trans: 2}


# --------------------------------------------------------------------------------- batches
class StereoBatch(tuple):
    """Padded labels: ``chirality (B, N)`` and ``bonds (B, N, N)`` (lower triangle ``i > j``),
    ``NOT_CANDIDATE`` where there is nothing to predict."""

    __slots__ = ()

    def __new__(cls, chirality: torch.Tensor, bonds: torch.Tensor):
        return super().__new__(cls, (chirality, bonds))

    @property
    def chirality(self) -> torch.Tensor:
        return self[0]

    @property
    def bonds(self) -> torch.Tensor:
        return self[1]

    def to(self, device: torch.device | str) -> StereoBatch:
        return StereoBatch(self.chirality.to(device), self.bonds.to(device))


def collate_stereo(items: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> StereoBatch:
    """Pad ``(chirality (N,), bond rows (E, 2) i > j, bond labels (E,))`` per molecule."""
    size = max((len(c) for c, _, _ in items), default=0)
    chirality = torch.full((len(items), size), NOT_CANDIDATE, dtype=torch.long)
    bonds = torch.full((len(items), size, size), NOT_CANDIDATE, dtype=torch.long)
    for b, (chi, rows, labels) in enumerate(items):
        chirality[b, : len(chi)] = chi.long()
        if len(rows):
            bonds[b, rows[:, 0].long(), rows[:, 1].long()] = labels.long()
    return StereoBatch(chirality, bonds)


def batch_candidates(mols: Sequence, size: int) -> StereoBatch:
    """Candidates of decoded molecules (None: invalid) as a :class:`StereoBatch` of
    ``UNSPECIFIED`` (candidate) and ``NOT_CANDIDATE``."""
    chirality = torch.full((len(mols), size), NOT_CANDIDATE, dtype=torch.long)
    bonds = torch.full((len(mols), size, size), NOT_CANDIDATE, dtype=torch.long)
    for b, mol in enumerate(mols):
        if mol is None:
            continue
        atoms, pairs = candidates(mol)
        chirality[b, atoms] = UNSPECIFIED
        for i, j in pairs:
            bonds[b, i, j] = UNSPECIFIED
    return StereoBatch(chirality, bonds)


# --------------------------------------------------------------------------------- network
class StereoHead(nn.Module):
    """Labels of a finished graph: message passing over the whole graph (the latent added to
    every atom), then for each candidate an MLP over its own state and its neighbours' *in
    decoding order* (an atom: itself and up to 4 neighbours, a learned vector for an implicit
    hydrogen; a double bond: its two ends and their reference neighbours), so that a label tied
    to that order can be read off. Only candidates are computed (no dense pair tensor).

    :meth:`encode_offset` lets the encoder see the labels too: the same context with the label,
    pooled, through a layer that starts at zero (a model starts stereo-blind and learns to put
    the molecule's stereo into its latent)."""

    def __init__(self, *, n_types: int, latent_dim: int, hidden_dim: int = 128, layers: int = 3):
        super().__init__()
        self.latent_dim = latent_dim
        self.embed = nn.Embedding(n_types, hidden_dim)
        self.from_z = nn.Linear(latent_dim, hidden_dim)
        self.messages = nn.ModuleList(
            nn.Linear(hidden_dim, MAX_BOND_ORDER * hidden_dim) for _ in range(layers)
        )
        self.updates = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * hidden_dim, hidden_dim), nn.SiLU()) for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in range(layers))
        self.missing = nn.Parameter(torch.zeros(hidden_dim))  # an absent (implicit H) neighbour
        self.atom_out = _mlp(5 * hidden_dim, hidden_dim, N_CLASSES)
        self.bond_out = _mlp(4 * hidden_dim, hidden_dim, N_CLASSES)
        self.atom_in = _mlp(5 * hidden_dim + N_CLASSES, hidden_dim, hidden_dim)
        self.bond_in = _mlp(4 * hidden_dim + N_CLASSES, hidden_dim, hidden_dim)
        self.to_latent = nn.Linear(hidden_dim, latent_dim)
        nn.init.zeros_(self.to_latent.weight)
        nn.init.zeros_(self.to_latent.bias)

    def _states(self, z: torch.Tensor | None, graphs: GraphBatch) -> torch.Tensor:
        atoms, adj, _ = graphs
        mask = (atoms >= 0).unsqueeze(-1).float()
        h = self.embed(atoms.clamp(min=0))
        if z is not None:
            h = h + self.from_z(z).unsqueeze(1)
        h = h * mask
        a = torch.stack([(adj == k).float() for k in range(1, MAX_BOND_ORDER + 1)], dim=1)
        for msg, upd, norm in zip(self.messages, self.updates, self.norms, strict=True):
            b, n, hd = h.shape
            w = msg(h).view(b, n, MAX_BOND_ORDER, hd).transpose(1, 2)
            h = norm(h + upd(torch.cat([h, (a @ w).sum(1)], -1))) * mask
        return h

    def _contexts(self, h: torch.Tensor, adj: torch.Tensor, where: StereoBatch):
        """``(atom index (Ka, 2), atom context (Ka, 5H), bond index (Kb, 3), bond context
        (Kb, 4H))`` of the candidates (entries ``>= 0``) of ``where``."""
        bsz, n, hd = h.shape
        padded = torch.cat([h, self.missing.expand(bsz, 1, hd)], 1)  # index n: "missing"
        idx = torch.arange(n, device=h.device)
        at = (where.chirality >= 0).nonzero()  # (Ka, 2) rows (b, a)
        bonded = adj[at[:, 0], at[:, 1]] > 0  # (Ka, N)
        nbr = torch.where(bonded, idx, n).sort(-1).values[:, :4]
        nbr = F.pad(nbr, (0, 4 - nbr.shape[-1]), value=n) if nbr.shape[-1] < 4 else nbr
        atom_ctx = torch.cat(
            [h[at[:, 0], at[:, 1]], padded[at[:, 0].unsqueeze(-1), nbr].flatten(1)], -1
        )
        bd = (where.bonds >= 0).nonzero()  # (Kb, 3) rows (b, i, j), i > j
        b, i, j = bd.unbind(-1)

        def reference(end: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
            others = (adj[b, end] > 0) & (idx != partner.unsqueeze(-1))
            return torch.where(others, idx, n).amin(-1)

        bond_ctx = torch.cat(
            [h[b, i], h[b, j], padded[b, reference(i, j)], padded[b, reference(j, i)]], -1
        )
        return at, atom_ctx, bd, bond_ctx

    def forward(self, z: torch.Tensor, graphs: GraphBatch, where: StereoBatch):
        """``(atom index (Ka, 2), atom logits (Ka, 3), bond index (Kb, 3), bond logits (Kb, 3))``
        for the candidates of ``where``."""
        at, atom_ctx, bd, bond_ctx = self._contexts(self._states(z, graphs), graphs.adj, where)
        return at, self.atom_out(atom_ctx), bd, self.bond_out(bond_ctx)

    def encode_offset(self, graphs: GraphBatch, labels: StereoBatch) -> torch.Tensor:
        """What the molecule's stereo labels add to its posterior mean, ``(B, L)``."""
        h = self._states(None, graphs)
        at, atom_ctx, bd, bond_ctx = self._contexts(h, graphs.adj, labels)
        chi = F.one_hot(labels.chirality[at[:, 0], at[:, 1]], N_CLASSES).to(h.dtype)
        bond = F.one_hot(labels.bonds[bd[:, 0], bd[:, 1], bd[:, 2]], N_CLASSES).to(h.dtype)
        pooled = h.new_zeros(h.shape[0], h.shape[-1])
        pooled = pooled.index_add(0, at[:, 0], self.atom_in(torch.cat([atom_ctx, chi], -1)))
        pooled = pooled.index_add(0, bd[:, 0], self.bond_in(torch.cat([bond_ctx, bond], -1)))
        return self.to_latent(pooled)

    def log_likelihood(
        self, z: torch.Tensor, graphs: GraphBatch, labels: StereoBatch
    ) -> torch.Tensor:
        """Log-likelihood ``(B,)`` of the candidates' labels (0 for a molecule without any)."""
        at, atom_logits, bd, bond_logits = self(z, graphs, labels)
        chi = labels.chirality[at[:, 0], at[:, 1]]
        bond = labels.bonds[bd[:, 0], bd[:, 1], bd[:, 2]]
        ll = z.new_zeros(z.shape[0])
        ll = ll.index_add(0, at[:, 0], -F.cross_entropy(atom_logits, chi, reduction="none"))
        return ll.index_add(0, bd[:, 0], -F.cross_entropy(bond_logits, bond, reduction="none"))

    @torch.no_grad()
    def choose(
        self,
        z: torch.Tensor,
        graphs: GraphBatch,
        cands: StereoBatch,
        *,
        temperature: float,
        uniforms: torch.Tensor | None,
    ) -> StereoBatch:
        """Labels for the candidates ``cands``: Gumbel-max with ``uniforms (B, N', 6)`` (atom
        ``k``: columns 0-2; the candidate double bond whose higher end is ``k``: columns 3-5),
        greedy when ``temperature`` is 0 or ``uniforms`` is None."""
        at, atom_logits, bd, bond_logits = self(z, graphs, cands)
        if temperature > 0 and uniforms is not None:
            g = -torch.log(-torch.log(uniforms.clamp(1e-10, 1 - 1e-7)))
            atom_logits = atom_logits / temperature + g[at[:, 0], at[:, 1], :3]
            bond_logits = bond_logits / temperature + g[bd[:, 0], bd[:, 1], 3:6]
        chi = torch.full_like(cands.chirality, NOT_CANDIDATE)
        chi[at[:, 0], at[:, 1]] = atom_logits.argmax(-1)
        bonds = torch.full_like(cands.bonds, NOT_CANDIDATE)
        bonds[bd[:, 0], bd[:, 1], bd[:, 2]] = bond_logits.argmax(-1)
        return StereoBatch(chi, bonds)


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, d_out))


def labelled_smiles(mols: Sequence, labels: StereoBatch) -> list[str | None]:
    """Isomeric canonical SMILES of decoded molecules with the chosen labels set."""
    from rdkit import Chem, rdBase

    out: list[str | None] = []
    chi_all, bonds_all = labels.chirality.cpu(), labels.bonds.cpu()
    with rdBase.BlockLogs():
        for b, mol in enumerate(mols):
            if mol is None:
                out.append(None)
                continue
            chi = {int(a): int(chi_all[b, a]) for a in (chi_all[b] > 0).nonzero().flatten()}
            where = (bonds_all[b] > 0).nonzero().tolist()
            pairs = {(i, j): int(bonds_all[b, i, j]) for i, j in where}
            out.append(Chem.MolToSmiles(assign(mol, chi, pairs)))
    return out
