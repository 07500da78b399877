"""A graph decoder whose every step sees the partial molecule it is building.

The sequence decoder of :mod:`medgen.molecules.vae` chooses from a GRU over the atom sequence; each
atom's pointer key is frozen when the atom is created and the only position signal is the index
gap ``j - i``, which differs from the ring size in about a third of MOSES ring closures. Here, as
in CGVAE (Liu et al. 2018) and GraphAF (Shi et al. 2020), each step's choices come from the partial
graph, updated incrementally (one message round per new atom, so decoding stays fast):

* every built atom ``i`` carries a state ``s_i = sum_k (M[type_k] + M[order_ik]) + R[rem_i]``
  over its current neighbours ``k`` and its remaining valence: keys change as bonds are made;
* a readout ``sum_i relu(T[type_i] + s_i) / sqrt(j)`` of the partial graph enters the GRU input,
  so the atom/STOP choice sees open valences, rings and branches;
* pointer and closure scores see shortest-path distances in the partial graph: the distance from
  the last atom (DFS backtracking) and, for a ring closure, the exact size of the ring it closes;
* learned chemistry masks (:class:`medgen.molecules.masks.ChemistryMasks`) on top of valence,
  and at decoding the data's ring bound: no ring of a decoded molecule exceeds the largest ring
  of the training set, while a fused system may still close its perimeter before its fusion
  bond (:meth:`GraphStateDecoder._bounded_closures`).

Same procedure and order as the sequence decoder (atom or STOP, parent pointer, bond order, ring
closures in increasing ``i``), same noise layout, same masks and ring bound at teacher forcing
and at decoding (:meth:`GraphStateDecoder.sample_with_log_prob` gives each drawn path the
log-probability :meth:`GraphStateDecoder.log_likelihood` gives its graph), except that teacher
forcing never masks the target itself: a validation molecule with chemistry the training split
lacks keeps a finite loss instead of ``1e9``, and one whose rings break the bound (0.11% of
MOSES train: rings that close across atoms) keeps its closures scored one at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medgen.molecules.graph import MAX_BOND_ORDER, GraphBatch
from medgen.molecules.masks import (
    FAR,
    MAX_RING,
    ChemistryMasks,
    add_atom,
    empty_distances,
    prefix_distances,
)
from medgen.molecules.vae import (
    MAX_DIST,
    MAX_REM,
    NEG,
    check_temperature,
    step_log_likelihoods,
)

_ORDERS = torch.arange(1, MAX_BOND_ORDER + 1)
FIX_DRAWS = 8  # uniforms per atom for the ring bound's fixer draws (an atom makes at most 2-3)


class GraphStateDecoder(nn.Module):
    """Autoregressive decoder with a partial-graph state; see the module docstring.

    ``capacity (K,)``: bond capacity per atom type; ``masks``: learned tables (None: valence only).
    """

    capacity: torch.Tensor
    pair_orders: torch.Tensor
    max_bonds: torch.Tensor
    max_degree: torch.Tensor
    ring_sizes: torch.Tensor

    def __init__(
        self,
        *,
        n_types: int,
        capacity: torch.Tensor,
        max_atoms: int,
        hidden_dim: int,
        latent_dim: int,
        pair_dim: int = 64,
        masks: ChemistryMasks | None = None,
    ):
        super().__init__()
        self.n_types, self.max_atoms = n_types, max_atoms
        self.stop = n_types
        masks = masks if masks is not None else ChemistryMasks.permissive(n_types)
        self.register_buffer("capacity", capacity.long().clone(), persistent=False)
        for name in ("pair_orders", "max_bonds", "max_degree", "ring_sizes"):
            self.register_buffer(name, getattr(masks, name).clone(), persistent=False)
        self.ring_bound = int(masks.ring_bound)
        self.start = nn.Parameter(torch.zeros(hidden_dim))
        self.in_type = nn.Embedding(n_types, hidden_dim)
        self.in_order = nn.Embedding(MAX_BOND_ORDER + 1, hidden_dim)
        self.in_closures = nn.Embedding(4, hidden_dim)
        self.init_h = nn.Linear(latent_dim, hidden_dim)
        self.gru = nn.GRU(hidden_dim + latent_dim, hidden_dim, batch_first=True)
        self.atom_head = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, n_types + 1)
        )
        # partial-graph state, in pair space
        self.msg_type = nn.Embedding(n_types, pair_dim)
        self.msg_order = nn.Embedding(MAX_BOND_ORDER + 1, pair_dim)
        self.node_rem = nn.Embedding(MAX_REM + 1, pair_dim)
        self.read_type = nn.Embedding(n_types, pair_dim)
        self.read_out = nn.Linear(pair_dim, hidden_dim)
        # pointer / closure scores
        self.query_type = nn.Embedding(n_types, hidden_dim)
        self.pair_q = nn.Linear(hidden_dim, pair_dim)
        self.pair_k = nn.Linear(hidden_dim, pair_dim, bias=False)
        self.pair_gap = nn.Embedding(MAX_DIST + 1, pair_dim)
        self.pair_path = nn.Embedding(MAX_DIST + 1, pair_dim)
        self.pair_ring = nn.Embedding(MAX_RING + 1, pair_dim)
        self.parent_head = nn.Linear(pair_dim, 1 + MAX_BOND_ORDER)
        self.closure_head = nn.Linear(pair_dim, 1 + MAX_BOND_ORDER)
        self.closure_rem = nn.Embedding(MAX_REM + 1, 1 + MAX_BOND_ORDER)

    # ----------------------------------------------------------------------------- shared pieces
    def _orders_ok(self, ti, tj, rem_i, rem_j, cnt_i, cnt_j) -> torch.Tensor:
        """(..., 3) bond orders 1..3 allowed between atoms of types ``ti``, ``tj``: valence
        (``rem``) and the learned pair, per-order and degree tables (``cnt``: (..., 3) bonds of
        each order each atom has). Arguments broadcast."""
        orders = _ORDERS.to(rem_i.device)
        ok = (orders <= rem_i.unsqueeze(-1)) & (orders <= rem_j.unsqueeze(-1))
        ok = ok & self.pair_orders[ti, tj]
        ok = ok & (cnt_i < self.max_bonds[ti]) & (cnt_j < self.max_bonds[tj])
        deg_ok = (cnt_i.sum(-1) < self.max_degree[ti]) & (cnt_j.sum(-1) < self.max_degree[tj])
        return ok & deg_ok.unsqueeze(-1)

    def _single_ok(self, tf, tj, rem_f, cnt_f) -> torch.Tensor:
        """``(...)`` whether atom ``f`` (type ``tf``, remaining valence ``rem_f``, bonds of each
        order ``cnt_f (..., 3)``) and the pair table allow a single bond to an atom of type
        ``tj``: :meth:`_orders_ok`'s order-1 terms on ``f``'s side (the other side:
        :meth:`_single_after`). Arguments broadcast."""
        return (
            (rem_f >= 1)
            & self.pair_orders[tf, tj, 0]
            & (cnt_f[..., 0] < self.max_bonds[tf, 0])
            & (cnt_f.sum(-1) < self.max_degree[tf])
        )

    def _single_after(self, tj, rem_j, cnt_j) -> torch.Tensor:
        """``(..., 3)`` whether an atom of type ``tj`` (remaining valence ``rem_j``, bonds
        ``cnt_j (..., 3)``) can still take a single bond after one more bond of order 1, 2,
        3: :meth:`_orders_ok`'s order-1 terms on its side after that bond."""
        orders = _ORDERS.to(rem_j.device)
        return (
            (rem_j.unsqueeze(-1) - orders >= 1)
            & (cnt_j[..., :1] + (orders == 1) < self.max_bonds[tj, 0].unsqueeze(-1))
            & (cnt_j.sum(-1, keepdim=True) + 1 < self.max_degree[tj].unsqueeze(-1))
        )

    def _node(self, nb: torch.Tensor, rem: torch.Tensor) -> torch.Tensor:
        return nb + self.node_rem(rem.clamp(0, MAX_REM))

    def _read_terms(self, t: torch.Tensor, node: torch.Tensor, present: torch.Tensor):
        """Each built atom's share of the readout, ``(..., P)`` (0 where not ``present``)."""
        return F.relu(self.read_type(t) + node) * present.unsqueeze(-1)

    def _read(self, g: torch.Tensor, j) -> torch.Tensor:
        """The readout of the pooled atom terms ``g (..., P)`` after ``j`` atoms (tensor/int)."""
        scale = torch.as_tensor(j, device=g.device).clamp(min=1).float().sqrt()
        return self.read_out(g / scale.unsqueeze(-1) if scale.dim() else g / scale)

    def _type_ok(self, t_prev, rem, cnt, present) -> torch.Tensor:
        """(B, K) atom types that some built atom can bond to (the masks of :meth:`_orders_ok`
        for a new atom of each type). ``t_prev, rem, present (B, n)``, ``cnt (B, n, 3)``.

        Factored as two small matmuls instead of a (B, n, K, 3) tensor: which orders each built
        atom still accepts, pooled by its type, times the pair table of a newcomer type.
        """
        orders = _ORDERS.to(rem.device)
        accepts = (orders <= rem.unsqueeze(-1)) & (cnt < self.max_bonds[t_prev])
        accepts = accepts & (cnt.sum(-1) < self.max_degree[t_prev]).unsqueeze(-1)
        accepts = accepts & present.unsqueeze(-1)  # (B, n, 3)
        by_type = F.one_hot(t_prev, self.n_types).transpose(1, 2).float() @ accepts.float()
        newcomer = (orders <= self.capacity.unsqueeze(-1)) & (self.max_bonds > 0)
        newcomer = newcomer & (self.max_degree > 0).unsqueeze(-1)  # (K, 3) for the new atom
        table = (self.pair_orders & newcomer.unsqueeze(0)).transpose(1, 2)  # (K_i, 3, K_new)
        return (by_type.flatten(1) @ table.flatten(0, 1).float()) > 0

    def _atom_mask(self, step, type_ok: torch.Tensor) -> torch.Tensor:
        """(..., K + 1) allowed classes: any type at step 0, STOP or a bondable type later,
        only STOP at ``max_atoms``."""
        step = torch.as_tensor(step, device=type_ok.device)
        first = torch.cat([self.capacity >= 0, self.capacity.new_zeros(1, dtype=torch.bool)])
        later = torch.cat([type_ok, torch.ones_like(type_ok[..., :1])], -1)
        mask = torch.where((step == 0).unsqueeze(-1), first, later)
        only_stop = torch.zeros_like(first)
        only_stop[-1] = True
        return torch.where((step >= self.max_atoms).unsqueeze(-1), only_stop, mask)

    # ----------------------------------------------------------------------------- training
    def log_likelihood(self, z: torch.Tensor, batch: GraphBatch) -> dict[str, torch.Tensor]:
        """Teacher-forced log-likelihood terms per molecule, each ``(B,)`` in nats."""
        atoms, adj, n_atoms = batch
        bsz, n = atoms.shape
        dev = atoms.device
        idx = torch.arange(n, device=dev)
        steps = torch.arange(n + 1, device=dev)
        valid = idx < n_atoms.unsqueeze(1)  # (B, N)
        t = atoms.clamp(min=0)
        lower = torch.tril(adj, diagonal=-1)
        earlier = lower > 0
        parent = torch.where(earlier, idx, -1).amax(-1)  # (B, N)
        has_parent = (parent >= 0) & valid
        p = parent.clamp(min=0)
        p_order = lower.gather(2, p.unsqueeze(-1)).squeeze(-1) * has_parent
        closures = earlier & (idx < parent.unsqueeze(-1))
        n_clos = closures.sum(-1)

        # partial graph at each step j = 0..N: atoms i < j, bonds among them
        before = (idx < steps.unsqueeze(-1)).float()  # (N + 1, k)
        onehot = torch.stack([adj == o for o in range(1, MAX_BOND_ORDER + 1)], -1).float()
        cnt = torch.einsum("jk,biko->bjio", before, onehot).long()  # (B, N + 1, N, 3)
        cap = self.capacity[t] * valid
        rem_all = cap.unsqueeze(1) - (cnt * _ORDERS.to(dev)).sum(-1)  # (B, N + 1, N)
        present = (idx < steps.unsqueeze(-1)) & valid.unsqueeze(1)  # (B, N + 1, N)
        # Pair-space work (P-vectors per (step j, atom i)) only where it is used: i < j. The
        # pairs are packed row by row, (1, 0), (2, 0), (2, 1), ...; the first n(n-1)/2 of them
        # have j < N (the pointer and closure candidates), all n(n+1)/2 feed the readout.
        jj, ii = torch.tril_indices(n + 1, n, offset=-1, device=dev)
        n_ptr = n * (n - 1) // 2
        nbrs = (adj > 0)[:, ii, :] & (idx < jj.unsqueeze(-1))  # (B, T, k): k < j bonded to i
        cnt_p = cnt[:, jj, ii]  # (B, T, 3)
        # messages from neighbours' types and bond orders in one product
        nb = torch.cat([nbrs, cnt_p], -1).float() @ torch.cat(
            [self.msg_type(t), self.msg_order.weight[1:].expand(bsz, -1, -1)], 1
        )  # (B, T, P)
        node = self._node(nb, rem_all[:, jj, ii])
        terms = self._read_terms(t[:, ii], node, valid[:, ii])
        pooled = terms.new_zeros(bsz, n + 1, terms.shape[-1]).index_add(1, jj, terms)

        x = self.in_type(t) + self.in_order(p_order) + self.in_closures(n_clos.clamp(max=3))
        x = torch.cat([self.start.expand(bsz, 1, -1), x], 1)
        x = x + self._read(pooled, steps)
        zz = z.unsqueeze(1).expand(-1, n + 1, -1)
        h, _ = self.gru(torch.cat([x, zz], -1), torch.tanh(self.init_h(z)).unsqueeze(0))

        # atom type / STOP
        zeros3 = torch.zeros(MAX_BOND_ORDER, dtype=torch.long, device=dev)
        types = torch.arange(self.n_types, device=dev)
        feas = self._orders_ok(
            t[:, None, :, None], types, rem_all.unsqueeze(-1), self.capacity,
            cnt.unsqueeze(-2), zeros3,
        ) & present[..., None, None]  # (B, N + 1, N, K, 3)  # fmt: skip
        amask = self._atom_mask(steps.expand(bsz, -1), feas.any(-1).any(-2))
        target = torch.where(steps < n_atoms.unsqueeze(1), torch.cat([t, t[:, :1]], 1), self.stop)
        step_ok = steps <= n_atoms.unsqueeze(1)
        amask = amask | (F.one_hot(target, self.n_types + 1).bool() & step_ok.unsqueeze(-1))
        logits = self.atom_head(h).masked_fill(~amask, NEG)
        ll_atoms = -F.cross_entropy(logits.transpose(1, 2), target, reduction="none") * step_ok

        # parent pointer and order, at steps j < N, candidates i < j
        q = h[:, :n] + self.query_type(t)
        snaps = None
        if self.ring_bound:  # the graph of atoms < j at each step, for the ring bound
            snaps = torch.full((bsz, n, n, n), FAR, dtype=torch.int32, device=dev)
        last, rings = prefix_distances(adj, snapshots=snaps)
        pj, pi = jj[:n_ptr], ii[:n_ptr]
        pre = (
            self.pair_q(q)[:, pj]
            + self.pair_k(q)[:, pi]
            + node[:, :n_ptr]
            + self.pair_gap((pj - pi).clamp(max=MAX_DIST))
            + self.pair_path(last[:, pj, pi].clamp(0, MAX_DIST))
        )  # (B, T, P) over pairs i < j < N
        par_out = self._unpack(self.parent_head(F.relu(pre)), pj, pi, n)  # (B, j, i, 4)
        below = (idx < idx.unsqueeze(-1)) & valid.unsqueeze(1) & valid.unsqueeze(-1)
        pfeas = (
            feas[:, :n]
            .gather(3, t[:, :, None, None, None].expand(-1, -1, n, 1, MAX_BOND_ORDER))
            .squeeze(3)
        )  # (B, j, i, 3): orders allowed to i for j's own type
        target_p = F.one_hot(p, n).bool() & has_parent.unsqueeze(-1)
        ptr_mask = (below & pfeas.any(-1)) | target_p
        ptr = par_out[..., 0].masked_fill(~ptr_mask, NEG)
        ll_parent = -F.cross_entropy(ptr.transpose(1, 2), p, reduction="none") * has_parent
        o_target = (p_order - 1).clamp(min=0)
        omask = pfeas.gather(2, p[..., None, None].expand(-1, -1, 1, MAX_BOND_ORDER)).squeeze(2)
        omask = omask | F.one_hot(o_target, MAX_BOND_ORDER).bool()
        ologits = par_out.gather(2, p[..., None, None].expand(-1, -1, 1, 4)).squeeze(2)[..., 1:]
        ologits = ologits.masked_fill(~omask, NEG)
        ll_order = -F.cross_entropy(ologits.transpose(1, 2), o_target, reduction="none")
        ll_order = ll_order * has_parent

        # ring closures i < parent(j), in increasing i
        clos_bonds = lower * (idx < parent.unsqueeze(-1))  # (B, j, i)
        made = torch.cumsum(clos_bonds, -1) - clos_bonds
        rem_j = (cap - p_order).unsqueeze(-1) - made
        clos_hot = torch.stack([clos_bonds == o for o in range(1, MAX_BOND_ORDER + 1)], -1).long()
        cnt_j = (torch.cumsum(clos_hot, 2) - clos_hot) + F.one_hot(p_order, MAX_BOND_ORDER + 1)[
            ..., 1:
        ].unsqueeze(2)  # (B, j, i, 3): j's bonds of each order before closing to i
        ring = rings.clamp(0, MAX_RING)
        ok = self._orders_ok(
            t.unsqueeze(1), t.unsqueeze(2), rem_all[:, :n], rem_j, cnt[:, :n], cnt_j
        ) & self.ring_sizes[ring].unsqueeze(-1)
        scope = extra = None
        if snaps is not None:
            state = (t, p, has_parent, clos_bonds, rem_all, cnt, rem_j, cnt_j, pre)
            ok, scope, extra = self._bounded_terms(ok, snaps, state)
        cmask = torch.cat([torch.ones_like(ok[..., :1]), ok], -1)
        cmask = cmask | F.one_hot(clos_bonds, 1 + MAX_BOND_ORDER).bool()
        clogits = self.closure_head(F.relu(pre + self.pair_ring(ring[:, pj, pi])))
        clogits = self._unpack(clogits, pj, pi, n) + self.closure_rem(rem_j.clamp(0, MAX_REM))
        clogits = clogits.masked_fill(~cmask, NEG)
        return step_log_likelihoods(
            ll_atoms, ll_parent, ll_order, clogits, clos_bonds, idx, parent, has_parent,
            scope=scope, extra=extra,
        )  # fmt: skip

    def _bounded_terms(self, ok, snaps, state):
        """The ring bound at teacher forcing: what :meth:`_sample_closures` and
        :meth:`_bounded_closures` do at decoding, for the closures of every atom at once.

        ``ok (B, j, i, 3)`` are the closure orders valence and the masks allow, ``snaps (B, j,
        N, N)`` the distances of the graph of atoms ``< j``. A candidate ``i`` is scored on its
        own (none or an order) unless a closure of ``j`` below it is *pending* (its ring through
        the parent exceeds the bound): then the decoder draws the fixer and its order in one
        categorical over every allowed (fixer, order), in the state after the pending closure,
        and that draw is scored once, at the fixer the molecule has. Returns ``ok`` with the
        bound's mask, the candidates scored on their own ``(B, j, i)``, and the fixer draws'
        log-likelihoods per molecule ``(B,)``. A molecule whose rings break the bound (a
        pending closure without a fixer) keeps its candidates scored on their own and a finite
        loss, as teacher forcing never masks the target.
        """
        t, p, has_parent, clos_bonds, rem_all, cnt, rem_j, cnt_j, pre = state
        bsz, n = t.shape
        dev = t.device
        idx = torch.arange(n, device=dev)
        near = snaps + 2 <= self.ring_bound  # (B, j, a, b): a closure to b would fix one to a
        parent_ok = near.gather(2, p[:, :, None, None].expand(-1, -1, 1, n)).squeeze(2)
        cand = (idx < p.unsqueeze(-1)) & has_parent.unsqueeze(-1)  # (B, j, i)
        # a closure to i (order o) that the parent does not keep small needs a later fixer f:
        # a single bond j - f the masks allow after closing i, in a ring the parent keeps small
        single = self._single_ok(t.unsqueeze(1), t.unsqueeze(2), rem_all[:, :n], cnt[:, :n])
        single = single & parent_ok & cand  # (B, j, f): what the fixer f itself allows
        after = self._single_after(t[:, :, None], rem_j, cnt_j)  # (B, j, i, o) after closing i
        later = idx.unsqueeze(0) > idx.unsqueeze(1)  # (i, f)
        target = clos_bonds > 0
        # j's distances to f at candidate i: through its parent and its closures below i
        run = torch.where(target.unsqueeze(-1), snaps, FAR).cummin(2).values  # (B, j, c, f)
        run = torch.cat([torch.full_like(run[:, :, :1], FAR), run[:, :, :-1]], 2)
        via_parent = snaps.gather(2, p[:, :, None, None].expand(-1, -1, 1, n))  # (B, j, 1, f)
        reach = torch.minimum(run, via_parent)  # (B, j, i, f)
        ring_if = torch.minimum(reach, snaps) + 2  # the fixer's own ring once i is closed
        fix_if = near & later & self.ring_sizes[ring_if.clamp(max=MAX_RING).long()]
        has_fixer = (fix_if & single.unsqueeze(2)).any(-1)  # (B, j, i)
        ok = ok & (parent_ok.unsqueeze(-1) | (after & has_fixer.unsqueeze(-1)))

        # pending: the target's last closure below i, if its ring through the parent is too big
        below = torch.cummax(torch.where(target, idx, -1), -1).values
        below = torch.cat([below.new_full((bsz, n, 1), -1), below[..., :-1]], -1)
        pending = torch.where(
            (below >= 0) & ~parent_ok.gather(2, below.clamp(min=0)), below, -1
        )  # (B, j, i)
        fixes = near.gather(2, pending.clamp(min=0).unsqueeze(2)).squeeze(2) & parent_ok
        zone_end = target & (pending >= 0) & fixes & cand  # (B, j, f): each zone's fixer
        # the zone of a candidate: the first target closure at or above it
        nxt = torch.where(target, idx, n).flip(-1).cummin(-1).values.flip(-1)
        ends = torch.cat([zone_end, zone_end.new_zeros(bsz, n, 1)], -1)
        in_zone = (pending >= 0) & ends.gather(2, nxt)  # (B, j, i)
        extra = torch.zeros(bsz, device=dev, dtype=pre.dtype)
        zb, zj, zf = zone_end.nonzero(as_tuple=True)
        if len(zb):
            zc = pending[zb, zj, zf]
            extra = extra.index_add(0, zb, self._fixer_draws(
                (zb, zj, zf, zc), near, reach, t, p, clos_bonds, rem_all, cnt, rem_j, cnt_j, pre
            ))  # fmt: skip
        return ok, ~in_zone, extra

    def _fixer_draws(self, zone, near, reach, t, p, clos_bonds, rem_all, cnt, rem_j, cnt_j, pre):
        """Log-likelihood of each zone's fixer draw ``(Z,)``: one categorical over every
        candidate ``i`` above the pending closure ``c`` and below the parent, and every order,
        scored in the state after ``c`` (the state the target is in at its fixer ``f``; the
        candidates above ``f`` are scored again without ``f``'s closure)."""
        zb, zj, zf, zc = zone
        n = t.shape[1]
        idx = torch.arange(n, device=t.device)
        pz = p[zb, zj]
        # rings in the state after c (j's reach at candidate c + 1: the parent, closures <= c)
        ring = (reach[zb, zj, zc + 1] + 2).clamp(max=MAX_RING).long()  # (Z, i)
        r_j, c_j = rem_j[zb, zj, zf], cnt_j[zb, zj, zf]  # j's valence after c, before f
        pair = (zj * (zj - 1) // 2).unsqueeze(-1) + idx  # packed (j, i), row by row
        pair = torch.where(idx < zj.unsqueeze(-1), pair, 0)
        logits = self.closure_head(F.relu(pre[zb.unsqueeze(-1), pair] + self.pair_ring(ring)))
        logits = logits[..., 1:] + self.closure_rem(r_j.clamp(0, MAX_REM))[:, None, 1:]
        tz = t[zb]
        ok = self._orders_ok(
            tz, t[zb, zj].unsqueeze(-1), rem_all[zb, zj], r_j.unsqueeze(-1), cnt[zb, zj],
            c_j.unsqueeze(1),
        ) & self.ring_sizes[ring].unsqueeze(-1)  # fmt: skip
        parent_ok = near[zb, zj, pz]  # (Z, i)
        fixer = near[zb, zj, zc] & parent_ok & (idx > zc.unsqueeze(-1)) & (idx < pz.unsqueeze(-1))
        mask = ok & fixer.unsqueeze(-1)
        pick = zf * MAX_BOND_ORDER + clos_bonds[zb, zj, zf] - 1
        mask = mask.flatten(1) | F.one_hot(pick, n * MAX_BOND_ORDER).bool()
        flat = logits.flatten(1).masked_fill(~mask, NEG)
        return -F.cross_entropy(flat, pick, reduction="none")

    @staticmethod
    def _unpack(packed: torch.Tensor, pj: torch.Tensor, pi: torch.Tensor, n: int):
        """Packed pair values ``(B, T, C)`` into a dense ``(B, n, n, C)`` (0 where i >= j)."""
        dense = packed.new_zeros(packed.shape[0], n, n, packed.shape[-1])
        dense[:, pj, pi] = packed
        return dense

    def _folded_gru_input(self, z: torch.Tensor):
        """The GRU's input projection folded into what feeds it, for decoding one step at a
        time. The input is ``[x_j, z]`` with ``x_j`` = the previous atom's embeddings (or
        ``start``) + ``read_out(pooled_j)``, all linear: so ``z``'s share is projected once per
        molecule, each embedding table once per call, and the pooled readout goes through the
        product of the two weights (``P`` wide instead of ``H + L``). The same function as
        :meth:`log_likelihood`'s GRU, to rounding.

        Returns ``z``'s share with both input biases ``(B, 3H)``; the projected ``start``
        ``(3H,)``; one table of the projected ``in_type + in_order + in_closures`` sums, row
        ``(type * (MAX_BOND_ORDER + 1) + order) * C + closures``; the readout's ``(P, 3H)``.
        """
        hid = self.gru.hidden_size
        w_ih, _, b_ih, _ = self.gru.all_weights[0]
        w_x, w_z = w_ih[:, :hid], w_ih[:, hid:]
        bias = b_ih + w_x @ self.read_out.bias
        z_in = torch.addmm(bias, z, w_z.t())
        tokens = (
            self.in_type.weight[:, None, None]
            + self.in_order.weight[None, :, None]
            + self.in_closures.weight[None, None, :]
        )  # (K, MAX_BOND_ORDER + 1, C, H)
        token_in = tokens.flatten(0, 2) @ w_x.t()
        return z_in, self.start @ w_x.t(), token_in, (w_x @ self.read_out.weight).t().contiguous()

    def _gru_step(self, gx: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step of ``self.gru`` from its projected input ``gx (B, 3H)`` (gates r, z, n)."""
        _, w_hh, _, b_hh = self.gru.all_weights[0]
        gh = torch.addmm(b_hh, h, w_hh.t())
        x_r, x_z, x_n = gx.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r = torch.sigmoid(x_r + h_r)
        n = torch.tanh(x_n + r * h_n)
        return n + torch.sigmoid(x_z + h_z) * (h - n)

    def _sample_closures(
        self,
        choose,
        g,
        act,
        j,
        t,
        built,
        pre,
        reach,
        rem,
        rem_j,
        cnt,
        cnt_j,
        adj,
        dist,
        lp=None,
        log_probs=None,
        pick_one=None,
        g_fix=None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ring closures from the new atom ``j`` to the atoms ``i < last`` that ``act (B, last)``
        allows (below each row's parent), drawn as a loop over ``i`` in increasing order would
        draw them: one closure changes the state the later candidates are scored in (valence,
        bond counts, ring sizes), nothing else does. So every candidate is scored at once in
        the current state; each row keeps its first closure and its state is updated; only
        the rows that closed score the candidates after it again. A molecule has few rings,
        so this takes a few rounds per atom instead of one per candidate.

        ``g (B, last, 4)`` are the closures' uniforms; ``adj``, ``rem``, ``cnt``, ``cnt_j``
        and ``reach`` (distances from ``j``) are updated in place. Returns ``rem_j`` and the
        number of closures per row. ``lp (B,)``, if given, gains each row's log-probability of
        the closures drawn, ``log_probs(logits, mask)`` giving the draws' distributions.

        With the ring bound, a pending closure's fixer is one categorical draw
        ``pick_one(logits, mask, u)`` from a single uniform per row, the ``e``-th of an atom's
        fixer draws reading ``g_fix[:, e]`` (``g_fix (B, E)``): uniforms no other draw reads, so
        the candidates above the fixer, drawn again from ``g``, keep their own distribution
        (a Gumbel-max over the pairs would reuse, and bias, their order uniforms).
        """
        last = act.shape[1]
        dev = act.device
        n_clos = torch.zeros_like(t)
        rem_j = rem_j.clone()
        start = torch.zeros_like(t)
        cols = torch.arange(last, device=dev)
        sel = None  # rows that may still close a ring (None: all, the first round)
        bound = self.ring_bound
        if bound:
            # the ring bound (see _bounded_closures): the parent's distances, pending closures
            parent_ok = reach[:, :last] + 2 <= bound  # (B, last) rings the parent keeps small
            pending = torch.full_like(t, -1)
            n_fix = torch.zeros_like(t)  # fixer draws so far, per row

        def rows(v: torch.Tensor) -> torch.Tensor:
            return v if sel is None else v[sel]

        while sel is None or len(sel):
            ring = (rows(reach)[:, :last] + 2).clamp(max=MAX_RING)  # (S, last)
            cl = self.closure_head(F.relu(rows(pre)[:, :last] + self.pair_ring(ring)))
            cl = cl + self.closure_rem(rows(rem_j).clamp(0, MAX_REM)).unsqueeze(1)
            open_ = rows(act) & (cols >= rows(start).unsqueeze(-1))
            args = (
                rows(built)[:, :last], rows(t).unsqueeze(-1), rows(rem)[:, :last],
                rows(rem_j).unsqueeze(-1), rows(cnt)[:, :last], rows(cnt_j).unsqueeze(1),
            )  # fmt: skip
            ok = self._orders_ok(*args) & self.ring_sizes[ring].unsqueeze(-1)
            if bound:
                ok = self._bounded_closures(
                    ok, args, open_, rows(parent_ok), rows(pending), rows(dist)[:, :last, :last],
                    ring,
                )  # fmt: skip
            cmask = torch.cat([torch.ones_like(ok[..., :1]), ok], -1)
            oc = choose(cl, cmask, rows(g)) * open_
            waiting = flat = flat_lp = None
            if bound:  # a pending closure's fixer: one draw over every (fixer, order) allowed
                fix_ok = (ok & open_.unsqueeze(-1)).flatten(1)
                waiting = (rows(pending) >= 0) & fix_ok.any(-1)
                if bool(waiting.any()):
                    flat_logits = cl[waiting][..., 1:].flatten(1)
                    at_rows = (torch.arange(len(t), device=dev) if sel is None else sel)[waiting]
                    u_fix = g_fix[at_rows, n_fix[at_rows].clamp(max=g_fix.shape[1] - 1)]
                    n_fix[at_rows] += 1
                    flat = pick_one(flat_logits, fix_ok[waiting], u_fix)
                    if lp is not None:
                        flat_lp = log_probs(flat_logits, fix_ok[waiting]).gather(
                            1, flat.unsqueeze(-1)
                        )
                    pick = torch.zeros_like(oc[waiting])
                    pick[torch.arange(len(pick)), flat // MAX_BOND_ORDER] = (
                        flat % MAX_BOND_ORDER + 1
                    )
                    oc[waiting] = pick
            closed = oc > 0
            hit = closed.any(-1)
            if lp is not None:  # "none" at the open candidates before the first closure, then it
                upto = torch.where(hit, closed.long().argmax(-1), last)
                each = log_probs(cl, cmask)  # (S, last, 4)
                gain = (each[..., 0] * (open_ & (cols < upto.unsqueeze(-1)))).sum(-1)
                at = each.gather(1, upto.clamp(max=last - 1)[:, None, None].expand(-1, 1, 4))
                at = at.squeeze(1).gather(1, oc.gather(1, upto.clamp(max=last - 1)[:, None]))
                gain = gain + torch.where(hit, at.squeeze(1), 0)
                if flat_lp is not None:
                    gain[waiting] = flat_lp.squeeze(1)
                if sel is None:
                    lp += gain
                else:
                    lp[sel] += gain
            if not bool(hit.any()):
                break
            first = closed[hit].long().argmax(-1)  # the first closure of each row that closed
            order = oc[hit].gather(1, first.unsqueeze(-1)).squeeze(-1)
            sel = hit.nonzero().squeeze(-1) if sel is None else sel[hit]
            if bound:  # a closure the parent does not keep small waits for its fixer
                small = parent_ok[sel, first]
                pending[sel] = torch.where(small, -1, first)
            adj[sel, j, first] = order
            adj[sel, first, j] = order
            rem[sel, first] -= order
            rem_j[sel] -= order
            hot = F.one_hot(order - 1, MAX_BOND_ORDER)
            cnt[sel, first] += hot
            cnt_j[sel] += hot
            n_clos[sel] += 1
            reach[sel] = torch.minimum(reach[sel], dist[sel, first, :j])
            start[sel] = first + 1
        return rem_j, n_clos

    def _bounded_closures(self, ok, args, open_, parent_ok, pending, dist, ring):
        """The ring bound on the closures of the new atom ``j`` (rows ``S``, candidates ``i <
        last``): no ring of the finished molecule exceeds :attr:`ring_bound` atoms.

        ``j``'s closures taken nearest first form a cycle basis (:func:`~medgen.molecules.masks.
        basis_rings`): the ring of ``j - i`` goes through the parent or a closure of ``j`` to an
        atom above ``i``. Decoding meets candidates in increasing ``i``, so a closure whose ring
        through the parent is too large (``parent_ok`` false: the perimeter of a fused system,
        closed before its fusion bond) is *pending*: it is allowed only when a later candidate
        ``f`` can still fix it (``d(i, f) + 2 <= bound``, a ring the parent keeps small, a
        single bond the masks allow after closing ``i``, in a ring size they allow: ``ring (S,
        last)`` are the candidates' ring sizes now), and while it is pending only fixers
        may close: the caller draws the fixer and its order in one categorical over the
        closure scores of every pair allowed (forcing the last fixer instead, when the model
        declined the others, made 7-rings twice as common). One closure is pending at a time.
        Returns the closure orders allowed, ``ok (S, last, 3)``.
        """
        bound = self.ring_bound
        last = ok.shape[1]
        cols = torch.arange(last, device=ok.device)
        near = dist + 2 <= bound  # (S, i, f): a closure to f would fix one to i
        later = cols.unsqueeze(0) > cols.unsqueeze(1)  # (i, f): f above i
        has_p = pending >= 0
        fixer = near.gather(1, pending.clamp(min=0)[:, None, None].expand(-1, 1, last)).squeeze(1)
        fixer = fixer & (cols > pending.unsqueeze(-1)) & parent_ok  # (S, last)
        ok = ok & (~has_p.unsqueeze(-1) | fixer).unsqueeze(-1)
        # no closure pending: one the parent does not keep small needs a fixer after it
        built, t, rem_i, rem_j, cnt_i, cnt_j = args
        single = self._single_ok(built, t, rem_i, cnt_i) & open_ & parent_ok  # (S, f)
        good = single.unsqueeze(-1) & self._single_after(t, rem_j, cnt_j)  # (S, f, 3)
        # the fixer's own ring once i is closed: through j's neighbours so far or through i
        ring_if = torch.minimum(ring.unsqueeze(1), (dist + 2).clamp(max=MAX_RING))  # (S, i, f)
        fix_if = near & later & self.ring_sizes[ring_if]
        fixable = fix_if.float() @ good.float() > 0  # (S, i, 3)
        return ok & (parent_ok.unsqueeze(-1) | fixable)

    # ----------------------------------------------------------------------------- sampling
    def noise_width(self) -> int:
        """Uniform numbers one decoding step consumes (atom, parent, order, closures)."""
        return (self.n_types + 1) + self.max_atoms + MAX_BOND_ORDER + 4 * self.max_atoms

    def sample(
        self,
        z: torch.Tensor,
        *,
        temperature: float = 1.0,
        uniforms: torch.Tensor | None = None,
    ) -> GraphBatch:
        """Decode ``z (B, L)`` into graphs; the contract of
        :meth:`medgen.molecules.vae.GraphDecoder.sample` (Gumbel-max, masks after noise)."""
        return self._decode(z, temperature, uniforms, track=False)[0]

    def sample_with_log_prob(
        self, z: torch.Tensor, *, temperature: float = 1.0, uniforms: torch.Tensor | None = None
    ) -> tuple[GraphBatch, torch.Tensor]:
        """:meth:`sample`, and the log-probability ``(B,)`` of each graph's decoding path under
        the distributions it was drawn from (at ``temperature``; masks and the ring bound
        included): at temperature 1, what :meth:`log_likelihood` gives the same graphs."""
        check_temperature(temperature, allow_zero=False)
        graphs, lp = self._decode(z, temperature, uniforms, track=True)
        assert lp is not None
        return graphs, lp

    @torch.inference_mode()
    def _decode(
        self, z: torch.Tensor, temperature: float, uniforms: torch.Tensor | None, track: bool
    ) -> tuple[GraphBatch, torch.Tensor | None]:
        check_temperature(temperature, allow_zero=True)
        bsz, dev = z.shape[0], z.device
        m = self.max_atoms
        if uniforms is None:
            uniforms = torch.rand(bsz, m + 1, self.noise_width(), device=dev)
        k1 = self.n_types + 1

        def choose(logits: torch.Tensor, mask: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            # Gumbel noise of just the uniforms a choice reads (elementwise, so the same
            # numbers as transforming the whole noise tensor up front)
            if temperature > 0:
                logits = logits / temperature - torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7)))
            return logits.masked_fill(~mask, float("-inf")).argmax(-1)

        def log_probs(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return (logits / temperature).masked_fill(~mask, float("-inf")).log_softmax(-1)

        def pick_one(logits: torch.Tensor, mask: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            # one categorical draw per row from one uniform: the inverse of its CDF
            logits = logits.masked_fill(~mask, float("-inf"))
            if temperature == 0:
                return logits.argmax(-1)
            cdf = (logits / temperature).softmax(-1).cumsum(-1)
            goal = u.clamp(1e-7, 1 - 1e-7).unsqueeze(-1) * cdf[:, -1:]
            return (cdf < goal).sum(-1).clamp(max=logits.shape[-1] - 1)

        atoms = torch.full((bsz, m), -1, dtype=torch.long, device=dev)
        adj = torch.zeros((bsz, m, m), dtype=torch.long, device=dev)
        rem = torch.zeros((bsz, m), dtype=torch.long, device=dev)
        cnt = torch.zeros((bsz, m, MAX_BOND_ORDER), dtype=torch.long, device=dev)
        nb = torch.zeros((bsz, m, self.pair_k.out_features), device=dev)
        keys = torch.zeros_like(nb)
        dist = empty_distances(bsz, m, dev)
        done = torch.zeros(bsz, dtype=torch.bool, device=dev)
        n_atoms = torch.zeros(bsz, dtype=torch.long, device=dev)
        rows = torch.arange(bsz, device=dev)
        zeros3 = torch.zeros(MAX_BOND_ORDER, dtype=torch.long, device=dev)
        state = torch.tanh(self.init_h(z))
        z_in, start_in, token_in, scale_out = self._folded_gru_input(z)
        x_in = start_in.expand(bsz, -1)  # the step's token input, through the GRU's input
        n_c = self.in_closures.num_embeddings
        # finished molecules leave the working batch (their graphs go to `final`), so a few long
        # molecules do not keep every row of the batch busy
        final = GraphBatch(atoms.clone(), adj.clone(), n_atoms.clone())
        origin = torch.arange(bsz, device=dev)
        lp = torch.zeros(bsz, device=dev) if track else None
        final_lp = torch.zeros(bsz, device=dev) if track else None
        for j in range(m + 1):
            if bool(done.any()) and int(done.sum()) * 4 >= len(done):
                gone, keep = origin[done], ~done
                final.atoms[gone] = atoms[done]
                final.adj[gone] = adj[done]
                final.n_atoms[gone] = n_atoms[done]
                if lp is not None and final_lp is not None:
                    final_lp[gone], lp = lp[done], lp[keep]
                origin, atoms, adj, rem, cnt = (v[keep] for v in (origin, atoms, adj, rem, cnt))
                nb, keys, dist, n_atoms = (v[keep] for v in (nb, keys, dist, n_atoms))
                z_in, uniforms, x_in, state = z_in[keep], uniforms[keep], x_in[keep], state[keep]
                done, bsz = done[keep], int(keep.sum())
                rows = torch.arange(bsz, device=dev)
            u = uniforms[:, j]
            built = atoms[:, :j].clamp(min=0)
            present = atoms[:, :j] >= 0
            node = self._node(nb[:, :j], rem[:, :j])  # (B, j, P)
            pooled = self._read_terms(built, node, present).sum(-2) / max(j, 1) ** 0.5
            h = state = self._gru_step(torch.addmm(x_in + z_in, pooled, scale_out), state)
            type_ok = self._type_ok(built, rem[:, :j], cnt[:, :j], present)
            a_logits, a_mask = self.atom_head(h), self._atom_mask(j, type_ok)
            t = choose(a_logits, a_mask, u[:, :k1])
            if lp is not None:
                picked = log_probs(a_logits, a_mask.expand_as(a_logits)).gather(1, t[:, None])
                lp += torch.where(done, 0, picked.squeeze(1))
            done = done | (t == self.stop)
            if j == m or bool(done.all()):
                break
            live = ~done
            t = t.clamp(max=self.n_types - 1)
            atoms[:, j] = torch.where(live, t, -1)
            n_atoms += live.long()
            cap = self.capacity[t]
            q = h + self.query_type(t)
            keys[:, j] = self.pair_k(q)
            p_order = torch.zeros_like(t)
            n_clos = torch.zeros_like(t)
            cnt_j = torch.zeros((bsz, MAX_BOND_ORDER), dtype=torch.long, device=dev)
            rem_j = cap
            if j > 0:
                gap = (j - torch.arange(j, device=dev)).clamp(max=MAX_DIST)
                pre = (
                    self.pair_q(q).unsqueeze(1)
                    + keys[:, :j]
                    + node
                    + self.pair_gap(gap)
                    + self.pair_path(dist[:, j - 1, :j].clamp(0, MAX_DIST))
                )  # (B, j, P)
                par_out = self.parent_head(F.relu(pre))
                pfeas = self._orders_ok(
                    built, t.unsqueeze(-1), rem[:, :j], cap.unsqueeze(-1), cnt[:, :j], zeros3
                ) & present.unsqueeze(-1)  # (B, j, 3)
                off = k1
                p = choose(par_out[..., 0], pfeas.any(-1), u[:, off : off + j])
                off += m
                ologits = par_out[rows, p, 1:]
                o = choose(ologits, pfeas[rows, p], u[:, off : off + MAX_BOND_ORDER]) + 1
                if lp is not None:
                    picked = log_probs(par_out[..., 0], pfeas.any(-1)).gather(1, p[:, None])
                    picked += log_probs(ologits, pfeas[rows, p]).gather(1, o[:, None] - 1)
                    lp += torch.where(live, picked.squeeze(1), 0)
                p_order = o * live
                off += MAX_BOND_ORDER
                adj[rows, j, p] = p_order
                adj[rows, p, j] = p_order
                rem[rows, p] -= p_order
                bonded = (p_order > 0).long()
                cnt[rows, p, (p_order - 1).clamp(min=0)] += bonded
                cnt_j[rows, (p_order - 1).clamp(min=0)] += bonded
                rem_j = cap - p_order
                reach = dist[rows, p, :j]  # distances from j's neighbours so far
                last = int(p[live].max()) if bool(live.any()) else 0
                if last:
                    g = u[:, off : off + 4 * last].reshape(bsz, last, 4)
                    # the fixer draws' uniforms: the last FIX_DRAWS of the closure block, which
                    # the closures never reach (last <= j - 1 <= max_atoms - 2)
                    g_fix = u[:, off + 4 * m - FIX_DRAWS : off + 4 * m]
                    act = live.unsqueeze(-1) & (torch.arange(last, device=dev) < p.unsqueeze(-1))
                    rem_j, n_clos = self._sample_closures(
                        choose, g, act, j, t, built, pre, reach, rem, rem_j, cnt, cnt_j, adj, dist,
                        lp, log_probs, pick_one, g_fix,
                    )  # fmt: skip
                # the new atom's bonds join the partial graph: messages both ways, distances
                row = adj[:, j, :j]
                nbr = row > 0
                nb[:, :j] += nbr.unsqueeze(-1) * (
                    self.msg_type(t).unsqueeze(1) + self.msg_order(row)
                )
                nb[:, j] = (nbr.unsqueeze(-1) * (self.msg_type(built) + self.msg_order(row))).sum(1)
                add_atom(dist, j, torch.where(nbr.any(-1, True), reach + 1, FAR))
            else:
                add_atom(dist, 0, dist.new_full((bsz, 1), FAR))
            rem[:, j] = torch.where(live, rem_j, 0)
            cnt[:, j] = cnt_j
            x_in = token_in[(t * (MAX_BOND_ORDER + 1) + p_order) * n_c + n_clos.clamp(max=n_c - 1)]
        final.atoms[origin], final.adj[origin], final.n_atoms[origin] = atoms, adj, n_atoms
        if lp is not None and final_lp is not None:
            final_lp[origin] = lp
        size = int(final.n_atoms.max()) if len(final.n_atoms) else 0
        out = GraphBatch(final.atoms[:, :size], final.adj[:, :size, :size], final.n_atoms)
        return out, final_lp
