"""Chemistry the training data teaches: masks learned from the training graphs, on top of valence.

Valence (:func:`medgen.molecules.graph.bond_capacity`) says what RDKit will sanitize; the data says
what drug-like molecules look like. :class:`ChemistryMasks` holds four tables learned from the
training split, all monotone over a decoding (a choice they forbid stays forbidden later), so a
decoder can apply them at every step and never back itself into a dead end:

* ``pair_orders (K, K, 3)``: atom-type pairs x bond orders 1..3 seen bonded (``O-O``, ``Br=C``...);
* ``max_bonds (K, 3)``: per atom type, the most bonds of each order one atom carried (a carbon
  never carries two double bonds in MOSES, so allenes and ketenes are not proposed);
* ``max_degree (K,)``: per atom type, the most neighbours one atom had;
* ``ring_sizes (MAX_RING + 1,)``: sizes of the ring a ring-closure bond closes (see below), the
  last entry meaning ``>= MAX_RING``;
* ``ring_bound``: the data's largest ring (:func:`smallest_rings`; 7 for MOSES, whose filters
  reject rings of 8 atoms or more), which decoding keeps every ring within (0: no bound).

Charges need no table: the atom vocabulary is built from the training split, so a charge the data
lacks is no atom type. Graphs are kekulized, so every aromatic ring the decoder writes is a Kekulé
structure and kekulizes by construction.

Ring size of a closure. Atoms are added in the DFS order of :mod:`medgen.molecules.graph`; atom
``j`` bonds first to its parent ``p``, then to earlier atoms ``i < p`` in increasing ``i``. The bond
``j - i`` closes a ring of ``2 + min_s d(s, i)`` atoms, ``d`` the shortest-path distance in the
graph of atoms ``< j`` and ``s`` over ``j``'s neighbours so far (``p`` and the closures before
``i``): the smallest ring through the new bond. The largest ring of RDKit's SSSR never exceeds the
largest closure ring (a minimum cycle basis is also min-max), but a fused system's perimeter,
closed before its fusion bond, is a large closure ring of molecules whose rings are all small,
so the table allows sizes up to 12 on MOSES; the ring bound does the rest (:func:`basis_rings`,
:meth:`medgen.molecules.decoder.GraphStateDecoder._bounded_closures`). :func:`prefix_distances`
and :func:`closure_rings` compute these numbers for teacher forcing; decoders update the same
distances step by step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from medgen.errors import InputFileError
from medgen.molecules.graph import MAX_BOND_ORDER, GraphBatch, collate_graphs

MAX_RING = 12  # ring-size buckets 0..12, the last one ">= 12"
FAR = 1000  # distance between atoms not (yet) connected


@dataclass(frozen=True)
class ChemistryMasks:
    """Learned allow-tables (see the module docstring); all tensors on the CPU unless moved."""

    pair_orders: torch.Tensor  # (K, K, 3) bool, symmetric
    max_bonds: torch.Tensor  # (K, 3) int64
    max_degree: torch.Tensor  # (K,) int64
    ring_sizes: torch.Tensor  # (MAX_RING + 1,) bool
    ring_bound: int = 0  # the largest ring of the data (0: no bound; checkpoints before it)

    @classmethod
    def permissive(cls, n_types: int) -> ChemistryMasks:
        """Tables that forbid nothing (valence alone decides)."""
        big = 64
        return cls(
            pair_orders=torch.ones(n_types, n_types, MAX_BOND_ORDER, dtype=torch.bool),
            max_bonds=torch.full((n_types, MAX_BOND_ORDER), big, dtype=torch.long),
            max_degree=torch.full((n_types,), big, dtype=torch.long),
            ring_sizes=torch.ones(MAX_RING + 1, dtype=torch.bool),
        )

    # ------------------------------------------------------------------------------ learning
    @classmethod
    def learn(cls, batches: Any, n_types: int) -> ChemistryMasks:
        """Tables of everything seen in an iterable of :class:`GraphBatch` (the training split)."""
        pair = torch.zeros(n_types, n_types, MAX_BOND_ORDER, dtype=torch.bool)
        max_bonds = torch.zeros(n_types, MAX_BOND_ORDER, dtype=torch.long)
        max_degree = torch.zeros(n_types, dtype=torch.long)
        rings = torch.zeros(MAX_RING + 1, dtype=torch.bool)
        bound = 0
        for batch in batches:
            atoms, adj, _ = batch
            valid = atoms >= 0
            t = atoms.clamp(min=0)
            b, i, j = torch.tril(adj, diagonal=-1).nonzero(as_tuple=True)
            order = adj[b, i, j] - 1
            pair[t[b, i], t[b, j], order] = True
            pair[t[b, j], t[b, i], order] = True
            counts = torch.stack([(adj == o).sum(-1) for o in range(1, MAX_BOND_ORDER + 1)], -1)
            flat_t = t[valid]
            max_bonds.scatter_reduce_(
                0, flat_t.unsqueeze(-1).expand(-1, MAX_BOND_ORDER), counts[valid], "amax"
            )
            max_degree.scatter_reduce_(0, flat_t, (adj > 0).sum(-1)[valid], "amax")
            ring = closure_rings(adj)
            rings[ring[ring > 0].clamp(max=MAX_RING).unique()] = True
            bound = max(bound, int(smallest_rings(adj).max()) if adj.numel() else 0)
        return cls(pair, max_bonds, max_degree, rings, bound)

    @classmethod
    def learn_from(cls, dataset: Sequence[Any], n_types: int, chunk: int = 4096) -> ChemistryMasks:
        """:meth:`learn` over a dataset of :class:`~medgen.molecules.graph.MolGraph` items."""
        batches = (
            collate_graphs([dataset[k] for k in range(lo, min(len(dataset), lo + chunk))])
            for lo in range(0, len(dataset), chunk)
        )
        return cls.learn(batches, n_types)

    # ------------------------------------------------------------------------------ storage
    def to_plain(self, tokens: Sequence[str]) -> dict[str, Any]:
        """Plain lists and dicts keyed by atom-type token (for checkpoint hyperparameters)."""
        a, b, o = self.pair_orders.nonzero(as_tuple=True)
        return {
            "pair_orders": [
                [tokens[x], tokens[y], z + 1]
                for x, y, z in zip(a.tolist(), b.tolist(), o.tolist(), strict=True)
                if x <= y
            ],
            "max_bonds": {tokens[k]: row for k, row in enumerate(self.max_bonds.tolist())},
            "max_degree": dict(zip(tokens, self.max_degree.tolist(), strict=True)),
            "ring_sizes": self.ring_sizes.nonzero().flatten().tolist(),
            "ring_bound": int(self.ring_bound),
        }

    @classmethod
    def from_plain(cls, data: Mapping[str, Any], tokens: Sequence[str]) -> ChemistryMasks:
        """Inverse of :meth:`to_plain`; ``InputFileError`` if ``data`` does not fit ``tokens``."""
        index = {t: k for k, t in enumerate(tokens)}
        k = len(tokens)
        try:
            pair = torch.zeros(k, k, MAX_BOND_ORDER, dtype=torch.bool)
            for x, y, order in data["pair_orders"]:
                pair[index[x], index[y], int(order) - 1] = True
                pair[index[y], index[x], int(order) - 1] = True
            max_bonds = torch.tensor([list(data["max_bonds"][t]) for t in tokens], dtype=torch.long)
            max_degree = torch.tensor([int(data["max_degree"][t]) for t in tokens])
            rings = torch.zeros(MAX_RING + 1, dtype=torch.bool)
            rings[torch.tensor([int(r) for r in data["ring_sizes"]], dtype=torch.long)] = True
            bound = int(data.get("ring_bound", 0))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise InputFileError(
                f"learned chemistry masks do not fit the vocabulary {list(tokens)}: {err!r}"
            ) from err
        return cls(pair, max_bonds.reshape(k, MAX_BOND_ORDER), max_degree.long(), rings, bound)


# ---------------------------------------------------------------------------- partial graphs


def add_atom(dist: torch.Tensor, j: int, via: torch.Tensor) -> None:
    """Add atom ``j`` to the all-pairs distances ``dist (B, M, M)`` (in place; :data:`FAR` where
    not connected), given ``via (B, n)``: its distances to atoms ``< n`` (``FAR``: none)."""
    row = torch.full_like(dist[:, 0], FAR)
    row[:, : via.shape[1]] = via.clamp(max=FAR)
    row[:, j] = 0
    dist[:, j, :] = row
    dist[:, :, j] = row
    torch.minimum(dist, (row.unsqueeze(-1) + row.unsqueeze(-2)).clamp(max=FAR), out=dist)


def empty_distances(bsz: int, m: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.full((bsz, m, m), FAR, dtype=torch.int32, device=device)


@torch.no_grad()
def prefix_distances(
    adj: torch.Tensor, nearest_first: bool = False, snapshots: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing geometry of padded graphs ``adj (B, N, N)`` in decoding order.

    Returns ``last (B, N, N)``: ``last[b, j, i]`` the distance from atom ``j - 1`` to ``i < j`` in
    the graph of atoms ``< j`` (0 for ``j = 0``), and ``rings (B, N, N)``: for every ring-closure
    candidate ``i`` below ``j``'s parent, the size of the ring a bond ``j - i`` would close given
    the closures ``j`` actually made to atoms below ``i``; 0 elsewhere. Both int64.
    ``nearest_first``: the closures ``j`` made to atoms *above* ``i`` count instead (the rings
    of :func:`basis_rings`). ``snapshots (B, N, N, N)``, if given, receives at ``[:, j]`` the
    all-pairs distances of the graph of atoms ``< j`` (what a decoder's distances are when it
    adds atom ``j``; int32, :data:`FAR` where not connected).
    """
    bsz, n = adj.shape[:2]
    dev = adj.device
    idx = torch.arange(n, device=dev)
    lower = torch.tril(adj, diagonal=-1) > 0  # (B, j, i)
    parent = torch.where(lower, idx, -1).amax(-1)  # (B, N)
    dist = empty_distances(bsz, n, dev)
    last = torch.zeros(bsz, n, n, dtype=torch.long, device=dev)
    rings = torch.zeros(bsz, n, n, dtype=torch.long, device=dev)
    for j in range(n):
        if snapshots is not None:
            snapshots[:, j] = dist
        nbr = lower[:, j]
        k = int(nbr.sum(-1).max())
        if j == 0 or k == 0:
            add_atom(dist, j, dist.new_full((bsz, 1), FAR))
            continue
        last[:, j] = dist[:, j - 1]
        # j's earlier neighbours as k slots (few: a small gather instead of an (N, N) reduction)
        slot = torch.sort(nbr.int(), dim=-1, descending=True, stable=True).indices[:, :k]
        used = nbr.gather(1, slot)  # (B, k)
        rows = dist.gather(1, slot.unsqueeze(-1).expand(-1, -1, n))  # (B, k, N)
        p = parent[:, j]
        # for candidate i: the parent and the closures below i count
        closer = slot.unsqueeze(-1) > idx if nearest_first else slot.unsqueeze(-1) < idx
        counts = used.unsqueeze(-1) & ((slot == p.unsqueeze(-1)).unsqueeze(-1) | closer)
        reach = rows.masked_fill(~counts, FAR).amin(1)  # (B, N)
        candidate = (idx < p.unsqueeze(-1)) & (p >= 0).unsqueeze(-1)
        rings[:, j] = torch.where(candidate, (reach + 2).clamp(max=FAR), 0)
        via = rows.masked_fill(~used.unsqueeze(-1), FAR).amin(1) + 1
        add_atom(dist, j, torch.where(idx < j, via, FAR))
    return last.clamp(max=FAR), rings


def closure_rings(adj: torch.Tensor) -> torch.Tensor:
    """Ring size closed by each ring-closure bond, ``(B, N, N)`` (0 where none); see module doc."""
    return prefix_distances(adj)[1] * (torch.tril(adj, diagonal=-1) > 0)


def basis_rings(adj: torch.Tensor) -> torch.Tensor:
    """The rings of a cycle basis, one per ring-closure bond, ``(B, N, N)`` (0 where none).

    Atom ``j``'s closures taken nearest first: the bond ``j - i`` closes a ring of ``2 + min_s
    d(s, i)`` atoms, ``s`` over ``j``'s parent and its closures to atoms above ``i``, ``d`` in
    the graph of atoms ``< j``. Each ring uses only bonds counted before its own, so together
    they form a cycle basis, and the largest ring of RDKit's SSSR (a minimum cycle basis, which
    is also min-max) never exceeds the largest of them. Unlike :func:`closure_rings` (closures in
    decoding order), a fused ring system gets its own small rings: an atom that closes the
    perimeter of a naphthalene first and its fusion bond next has rings 6 and 6 here, 10 and 6
    there.
    """
    return prefix_distances(adj, nearest_first=True)[1] * (torch.tril(adj, diagonal=-1) > 0)


@torch.no_grad()
def smallest_rings(adj: torch.Tensor) -> torch.Tensor:
    """For each ring-closure bond of the finished graphs ``adj (B, N, N)``, the size of the
    smallest ring through it, ``(B, N, N)`` at ``[b, j, i]`` (0 elsewhere). Every ring holds a
    closure bond, so the largest of these is at most the largest ring of RDKit's SSSR: the
    data's ring bound (:attr:`ChemistryMasks.ring_bound`)."""
    bsz, n = adj.shape[:2]
    out = torch.zeros(bsz, n, n, dtype=torch.long, device=adj.device)
    lower = torch.tril(adj, diagonal=-1) > 0
    if not bool(lower.any()):
        return out
    idx = torch.arange(n, device=adj.device)
    parent = torch.where(lower, idx, -1).amax(-1)  # (B, N)
    b, j, i = (lower & (idx < parent.unsqueeze(-1))).nonzero(as_tuple=True)
    if not len(b):
        return out
    graph = (adj[b] > 0).float()  # (E, N, N), one copy per closure bond, without that bond
    e = torch.arange(len(b), device=adj.device)
    graph[e, j, i] = 0
    graph[e, i, j] = 0
    seen = F.one_hot(i, n).float()  # breadth-first search from i, for j
    size = torch.zeros_like(b)
    for step in range(1, n):
        seen = ((seen + torch.bmm(seen.unsqueeze(1), graph).squeeze(1)) > 0).float()
        size = torch.where((size == 0) & (seen[e, j] > 0), step + 1, size)
        if bool((size > 0).all()):  # a closure bond always lies on a ring: all are found
            break
    out[b, j, i] = size
    return out


def graph_rings(batch: GraphBatch) -> list[list[int]]:
    """The closure ring sizes of each graph in ``batch`` (for checks and reports)."""
    rings = closure_rings(batch.adj)
    return [r[r > 0].tolist() for r in rings]


# ---------------------------------------------------------------------------- the ring bound
def ring_bound_of(source: Any, chunk: int = 4096) -> tuple[int, int]:
    """``(bound, beyond)`` over every molecule of a featurized source
    (:class:`~medgen.molecules.featurize.FeaturizedSource`): the largest smallest-ring through a
    ring-closure bond, and how many molecules have a basis ring above it (those whose rings
    close across atoms, which decoding with the bound cannot write)."""
    import time

    from medgen.molecules.featurize import PROGRESS_EVERY_S
    from medgen.utils.logging import get_logger

    log = get_logger(__name__)
    remap = torch.arange(len(source.tokens))
    bound, rings = 0, []
    began = last_log = time.perf_counter()
    for lo in range(0, len(source), chunk):
        if lo and time.perf_counter() - last_log >= PROGRESS_EVERY_S:  # 1.58 M take minutes
            last_log = time.perf_counter()
            rate = lo / (last_log - began)
            log.info("ring bound: %s of %s molecules, %.0f/s, about %.0f min left", f"{lo:,}",
                     f"{len(source):,}", rate, (len(source) - lo) / rate / 60)  # fmt: skip
        batch = collate_graphs(
            [source.graph(k, remap) for k in range(lo, min(len(source), lo + chunk))]
        )
        bound = max(bound, int(smallest_rings(batch.adj).max()))
        rings.append(basis_rings(batch.adj).flatten(1).amax(-1))
    beyond = int((torch.cat(rings) > bound).sum()) if rings else 0
    return bound, beyond


def add_ring_bound(
    checkpoint: str | Path,
    out: str | Path,
    *,
    data: str | Path,
    limit: int | None = None,
    workers: int = 1,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``checkpoint`` with the ring bound of the molecules of ``data`` in its masks to
    ``out`` (atomically; never over an input), for checkpoints written before the bound.
    Returns ``{"ring_bound", "molecules", "beyond"}``."""
    from medgen.errors import UserError
    from medgen.molecules.conditioning import check_new_checkpoint, write_with_record
    from medgen.molecules.featurize import load_source
    from medgen.utils.checkpoint import load_checkpoint

    file, target = check_new_checkpoint(checkpoint, out, data=data, overwrite=overwrite)
    hparams = dict(load_checkpoint(file).get("hyper_parameters") or {})
    if not hparams.get("masks"):
        raise UserError(f"{file} has no learned chemistry masks (model.learn_masks=false)")
    source, _ = load_source(Path(data).expanduser(), limit=limit, workers=workers)
    bound, beyond = ring_bound_of(source)
    hparams["masks"] = {**hparams["masks"], "ring_bound": bound}
    write_with_record(file, target, "hyper_parameters", hparams)
    return {"ring_bound": bound, "molecules": len(source), "beyond": beyond}


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import sys

    from medgen.errors import UserError
    from medgen.utils.logging import configure_logging

    parser = argparse.ArgumentParser(
        prog="python -m medgen.molecules.masks",
        description="learn the ring bound of a graph VAE's chemistry masks from a SMILES file "
        "(the largest ring of its molecules) and store it in a new checkpoint",
    )
    parser.add_argument("checkpoint", help="a graph VAE .ckpt, run dir or pretrained:<name>")
    parser.add_argument("--data", required=True, help="the training SMILES file")
    parser.add_argument("--out", required=True, help="the new checkpoint (.ckpt)")
    parser.add_argument("--limit", type=int, help="the first N molecules of --data only")
    parser.add_argument("--workers", type=int, default=1, help="featurizing processes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        report = add_ring_bound(args.checkpoint, args.out, data=args.data, limit=args.limit,
                                workers=args.workers, overwrite=args.overwrite)  # fmt: skip
    except UserError as err:
        print(f"medgen.molecules.masks: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    share = report["beyond"] / max(1, report["molecules"])
    print(f"ring bound {report['ring_bound']} over {report['molecules']:,} molecules; "
          f"{report['beyond']:,} ({share:.2%}) have rings that close across atoms beyond it "
          f"and cannot be decoded with the bound")  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
