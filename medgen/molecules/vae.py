"""Graph VAE: message-passing encoder and an autoregressive graph decoder with valence masks.

Plain torch rather than PyTorch Geometric: drug-like molecules have at most a few dozen heavy atoms,
so padded dense tensors (``(B, N, N)`` adjacency, batched matmuls) are simple and fast on CPU, and
the decoder's step-by-step masking needs dense per-molecule state anyway. It saves a dependency.

Decoding (Li et al. 2018, "Learning Deep Generative Models of Graphs", with a GRU state as in
GraphRNN, You et al. 2018) builds atoms in the DFS order of :mod:`medgen.molecules.graph`. At step
``j``:

1. atom type or STOP, from the GRU state ``h_j`` (conditioned on ``z``);
2. for ``j > 0``: the parent, a pointer over earlier atoms, and the bond order to it;
3. ring closures: for each earlier atom ``i`` below the parent, bond order in {none, 1, 2, 3}.

Every choice is masked by the remaining bond capacity of both atoms (RDKit's valence rules, see
:func:`medgen.molecules.graph.bond_capacity`). Each new atom must bond to its parent, so the graph
is one connected molecule, and no atom ever exceeds its valence, so it sanitizes: validity holds by
construction, with no repair afterwards. Training uses the same masks (teacher forcing).

:class:`GraphDecoder` here is the version-1 (sequence) decoder; the default decoder,
:class:`medgen.molecules.decoder.GraphStateDecoder`, follows the same procedure with a state
computed from the partial graph and learned chemistry masks (``GraphVAE(decoder=...)``).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from medgen.errors import UserError
from medgen.molecules.graph import MAX_BOND_ORDER, GraphBatch
from medgen.molecules.masks import ChemistryMasks

if TYPE_CHECKING:
    from medgen.molecules.decoder import GraphStateDecoder
    from medgen.molecules.prior import LatentPrior
    from medgen.molecules.stereo import StereoBatch, StereoHead

NEG = -1e9  # masked logit (finite so that 0 * NEG stays 0 in losses)
MAX_DIST = 16  # relative-position buckets for (j - i)
MAX_REM = 8  # remaining-capacity buckets
DECODERS = ("graph", "sequence")


def check_temperature(temperature: float, *, allow_zero: bool = False) -> float:
    """``temperature`` as a float; ``ValueError`` naming it unless finite and > 0 (or == 0)."""
    value = float(temperature)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        rule = ">= 0 (0 = greedy)" if allow_zero else "> 0"
        raise UserError(f"temperature must be a finite number {rule}, got {temperature!r}")
    return value


def step_log_likelihoods(
    ll_atoms: torch.Tensor,
    ll_parent: torch.Tensor,
    ll_order: torch.Tensor,
    clogits: torch.Tensor,
    clos_bonds: torch.Tensor,
    idx: torch.Tensor,
    parent: torch.Tensor,
    has_parent: torch.Tensor,
    *,
    scope: torch.Tensor | None = None,
    extra: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-molecule log-likelihood terms (B,) of teacher-forced decoding: the per-step atom,
    parent and order terms (B, N) summed, and the closure logits (B, N, N, 1 + orders) scored
    against ``clos_bonds`` for the candidates ``i < parent(j)`` of atoms that have a parent.
    ``scope (B, N, N)``: only these of those candidates are scored one at a time; ``extra (B,)``:
    closure terms scored otherwise (the ring bound's fixer draws), added."""
    in_scope = (idx < parent.unsqueeze(-1)) & has_parent.unsqueeze(-1)
    if scope is not None:
        in_scope = in_scope & scope
    ll_clos = -F.cross_entropy(clogits.permute(0, 3, 1, 2), clos_bonds, reduction="none")
    ll_clos = (ll_clos * in_scope).sum(-1).sum(1)
    if extra is not None:
        ll_clos = ll_clos + extra
    return {
        "atoms": ll_atoms.sum(1),
        "parents": ll_parent.sum(1),
        "orders": ll_order.sum(1),
        "closures": ll_clos,
    }


def _pad_graphs(graphs: GraphBatch, n: int) -> GraphBatch:
    """``graphs`` padded to ``n`` atoms (atoms ``-1``, no bonds)."""
    extra = n - graphs.atoms.shape[1]
    if extra <= 0:
        return graphs
    return GraphBatch(
        F.pad(graphs.atoms, (0, extra), value=-1),
        F.pad(graphs.adj, (0, extra, 0, extra)),
        graphs.n_atoms,
    )


class GraphEncoder(nn.Module):
    """Message passing over atoms and typed bonds, summed into a latent Gaussian.

    ``forward(atoms (B, N), adj (B, N, N)) -> (mu (B, L), logvar (B, L))``.
    """

    def __init__(self, *, n_types: int, hidden_dim: int, latent_dim: int, layers: int = 3):
        super().__init__()
        self.embed = nn.Embedding(n_types + 1, hidden_dim)  # last row: padding
        self.messages = nn.ModuleList(
            nn.Linear(hidden_dim, MAX_BOND_ORDER * hidden_dim) for _ in range(layers)
        )
        self.updates = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * hidden_dim, hidden_dim), nn.SiLU()) for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in range(layers))
        self.readout = nn.Sequential(
            nn.Linear(2 * hidden_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, 2 * latent_dim)
        )

    def forward(self, atoms: torch.Tensor, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (atoms >= 0).unsqueeze(-1).float()  # (B, N, 1)
        h = self.embed(atoms.clamp(min=0)) * mask  # (B, N, H)
        # one adjacency per bond order: (B, 3, N, N)
        a = torch.stack([(adj == k).float() for k in range(1, MAX_BOND_ORDER + 1)], dim=1)
        for msg, upd, norm in zip(self.messages, self.updates, self.norms, strict=True):
            b, n, hd = h.shape
            w = msg(h).view(b, n, MAX_BOND_ORDER, hd).transpose(1, 2)  # (B, 3, N, H)
            m = (a @ w).sum(1)  # (B, N, H)
            h = norm(h + upd(torch.cat([h, m], -1))) * mask
        # pool over each molecule's own atoms (not the batch's padded length), so a molecule's
        # latent does not depend on what it is batched with
        count = mask.sum(1).clamp(min=1)  # (B, 1)
        pooled = torch.cat([h.sum(1) / count.sqrt(), h.sum(1) / count], -1)
        mu, logvar = self.readout(pooled).chunk(2, dim=-1)
        return mu, logvar.clamp(-10, 5)


class GraphDecoder(nn.Module):
    """Autoregressive graph decoder; see the module docstring for the procedure."""

    capacity: torch.Tensor  # (K,) bond capacity per atom type (a buffer)

    def __init__(
        self,
        *,
        n_types: int,
        capacity: torch.Tensor,
        max_atoms: int,
        hidden_dim: int,
        latent_dim: int,
        pair_dim: int = 64,
    ):
        super().__init__()
        self.n_types, self.max_atoms = n_types, max_atoms
        self.stop = n_types  # STOP is the last atom class
        self.register_buffer("capacity", capacity.long().clone(), persistent=False)
        self.start = nn.Parameter(torch.zeros(hidden_dim))
        self.in_type = nn.Embedding(n_types, hidden_dim)
        self.in_order = nn.Embedding(MAX_BOND_ORDER + 1, hidden_dim)
        self.in_closures = nn.Embedding(4, hidden_dim)
        self.init_h = nn.Linear(latent_dim, hidden_dim)
        # one GRU: over whole sequences for teacher forcing, one step at a time for sampling
        self.gru = nn.GRU(hidden_dim + latent_dim, hidden_dim, batch_first=True)
        self.atom_head = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, n_types + 1)
        )
        self.query_type = nn.Embedding(n_types, hidden_dim)
        self.pair_q = nn.Linear(hidden_dim, pair_dim)
        self.pair_k = nn.Linear(hidden_dim, pair_dim, bias=False)
        self.pair_rem = nn.Embedding(MAX_REM + 1, pair_dim)
        self.pair_dist = nn.Embedding(MAX_DIST + 1, pair_dim)
        self.parent_head = nn.Linear(pair_dim, 1 + MAX_BOND_ORDER)  # pointer score + 3 orders
        self.closure_head = nn.Linear(pair_dim, 1 + MAX_BOND_ORDER)  # none + 3 orders
        self.closure_rem = nn.Embedding(MAX_REM + 1, 1 + MAX_BOND_ORDER)

    # ----------------------------------------------------------------------------- shared pieces
    def _pairs(self, q: torch.Tensor, keys: torch.Tensor, rem: torch.Tensor, dist: torch.Tensor):
        """Pair features ``relu(Wq q_j + Wk m_i + E[rem_i] + E[j - i])``: (..., pair_dim).

        ``keys`` are the projected ``Wk m_i`` (projected once per atom, not once per pair).
        """
        return F.relu(
            self.pair_q(q).unsqueeze(-2)
            + keys
            + self.pair_rem(rem.clamp(0, MAX_REM))
            + self.pair_dist(dist.clamp(0, MAX_DIST))
        )

    def _atom_mask(self, step: int | torch.Tensor, open_: torch.Tensor) -> torch.Tensor:
        """Allowed atom classes (..., K + 1) at ``step``; ``open_``: an earlier atom can still bond.

        Step 0: any type, no STOP. Later: STOP, plus types with capacity >= 1 if some earlier atom
        can still bond. At ``max_atoms``: only STOP.
        """
        step = torch.as_tensor(step, device=open_.device)
        bondable = torch.cat([self.capacity >= 1, self.capacity.new_ones(1, dtype=torch.bool)])
        first = torch.cat([self.capacity >= 0, self.capacity.new_zeros(1, dtype=torch.bool)])
        only_stop = torch.zeros_like(first)
        only_stop[-1] = True
        later = torch.where(open_.unsqueeze(-1), bondable, only_stop)
        mask = torch.where((step == 0).unsqueeze(-1), first, later)
        return torch.where((step >= self.max_atoms).unsqueeze(-1), only_stop, mask)

    @staticmethod
    def _order_mask(limit: torch.Tensor, with_none: bool) -> torch.Tensor:
        """(..., 3 or 4) allowed bond orders 1..3 (preceded by 'none') given a capacity limit."""
        orders = torch.arange(1, MAX_BOND_ORDER + 1, device=limit.device)
        mask = orders <= limit.unsqueeze(-1)
        if with_none:
            mask = torch.cat([torch.ones_like(mask[..., :1]), mask], -1)
        return mask

    # ----------------------------------------------------------------------------- training
    def log_likelihood(self, z: torch.Tensor, batch: GraphBatch) -> dict[str, torch.Tensor]:
        """Teacher-forced log-likelihood terms per molecule, each ``(B,)`` in nats."""
        atoms, adj, n_atoms = batch
        bsz, n = atoms.shape
        dev = atoms.device
        idx = torch.arange(n, device=dev)
        valid = idx < n_atoms.unsqueeze(1)  # (B, N)
        t = atoms.clamp(min=0)
        lower = torch.tril(adj, diagonal=-1)  # (B, j, i): bond of atom j to earlier atom i
        earlier = lower > 0
        # parent = latest earlier neighbour (DFS tree parent); -1 for the first atom
        parent = torch.where(earlier, idx, -1).amax(-1)  # (B, N)
        has_parent = (parent >= 0) & valid
        p = parent.clamp(min=0)
        p_order = lower.gather(2, p.unsqueeze(-1)).squeeze(-1) * has_parent  # (B, N)
        closures = earlier & (idx < parent.unsqueeze(-1))  # (B, j, i) ring-closure bonds
        n_clos = closures.sum(-1)

        # GRU inputs: step j sees what step j - 1 emitted
        x = self.in_type(t) + self.in_order(p_order) + self.in_closures(n_clos.clamp(max=3))
        x = torch.cat([self.start.expand(bsz, 1, -1), x], 1)  # (B, N + 1, H)
        zz = z.unsqueeze(1).expand(-1, n + 1, -1)
        h, _ = self.gru(torch.cat([x, zz], -1), torch.tanh(self.init_h(z)).unsqueeze(0))

        # atom type / STOP at steps 0..N
        cap = self.capacity[t] * valid  # (B, N)
        # used[b, i, j]: bond orders of atom i to atoms k < j, for steps j = 0..N
        adj_pad = F.pad(adj, (0, 1))
        used = torch.cumsum(adj_pad, dim=-1) - adj_pad
        rem_all = (cap.unsqueeze(-1) - used).transpose(1, 2)  # (B, N + 1, N): rem of i before j
        steps = torch.arange(n + 1, device=dev)
        before = idx < steps.unsqueeze(-1)  # (N + 1, N)
        open_ = ((rem_all >= 1) & before & valid.unsqueeze(1)).any(-1)  # (B, N + 1)
        rem = rem_all[:, :n]  # (B, j, i)
        amask = self._atom_mask(steps.expand(bsz, -1), open_)
        target = torch.where(steps < n_atoms.unsqueeze(1), torch.cat([t, t[:, :1]], 1), self.stop)
        logits = self.atom_head(h).masked_fill(~amask, NEG)
        step_ok = steps <= n_atoms.unsqueeze(1)
        ll_atoms = -F.cross_entropy(logits.transpose(1, 2), target, reduction="none") * step_ok

        # pairs (j, i) for atoms j < n, using the query after the type is chosen
        q = h[:, :n] + self.query_type(t)  # (B, N, H)
        dist = idx.unsqueeze(-1) - idx  # (j, i)
        pairs = self._pairs(q, self.pair_k(q).unsqueeze(1), rem, dist)  # (B, j, i, P)
        below = (idx < idx.unsqueeze(-1)) & valid.unsqueeze(1) & valid.unsqueeze(-1)
        par_out = self.parent_head(pairs)  # (B, j, i, 4)
        ptr = par_out[..., 0].masked_fill(~(below & (rem >= 1)), NEG)
        ll_parent = -F.cross_entropy(ptr.transpose(1, 2), p, reduction="none") * has_parent
        rem_p = rem.gather(2, p.unsqueeze(-1)).squeeze(-1)
        cap_j = self.capacity[t]
        omask = self._order_mask(torch.minimum(rem_p, cap_j), with_none=False)
        ologits = par_out.gather(2, p[..., None, None].expand(-1, -1, 1, 4)).squeeze(2)[..., 1:]
        ologits = ologits.masked_fill(~omask, NEG)
        ll_order = (
            -F.cross_entropy(ologits.transpose(1, 2), (p_order - 1).clamp(min=0), reduction="none")
            * has_parent
        )

        # ring closures i < parent(j), in increasing i; j's capacity shrinks as they are made
        clos_bonds = lower * (idx < parent.unsqueeze(-1))
        rem_j = (cap_j - p_order).unsqueeze(-1) - (torch.cumsum(clos_bonds, -1) - clos_bonds)
        cmask = self._order_mask(torch.minimum(rem, rem_j), with_none=True)
        clogits = self.closure_head(pairs) + self.closure_rem(rem_j.clamp(0, MAX_REM))
        clogits = clogits.masked_fill(~cmask, NEG)
        return step_log_likelihoods(
            ll_atoms, ll_parent, ll_order, clogits, clos_bonds, idx, parent, has_parent
        )

    # ----------------------------------------------------------------------------- sampling
    def noise_width(self) -> int:
        """Uniform numbers one decoding step consumes (atom, parent, order, closures)."""
        return (self.n_types + 1) + self.max_atoms + MAX_BOND_ORDER + 4 * self.max_atoms

    @torch.inference_mode()
    def sample(
        self,
        z: torch.Tensor,
        *,
        temperature: float = 1.0,
        uniforms: torch.Tensor | None = None,
    ) -> GraphBatch:
        """Decode latents ``z (B, L)`` into graphs, batched across molecules.

        Each choice is ``argmax(logits / T + Gumbel(u))`` over the allowed options (Gumbel-max
        sampling); ``temperature=0`` is greedy. The valence mask is applied after scaling and
        noise (disallowed options get ``-inf``), so no temperature can make a masked option win.
        ``temperature`` must be finite and >= 0 (``ValueError`` otherwise). ``uniforms`` is a
        ``(B, max_atoms + 1, W)`` tensor of numbers in (0, 1) with ``W = noise_width()`` (so each
        molecule's draws depend only on its own noise, whatever the batch), or None to draw them
        with torch's global RNG.
        """
        check_temperature(temperature, allow_zero=True)
        bsz, dev = z.shape[0], z.device
        m = self.max_atoms
        if uniforms is None:
            uniforms = torch.rand(bsz, m + 1, self.noise_width(), device=dev)
        k1 = self.n_types + 1
        gumbels = -torch.log(-torch.log(uniforms.clamp(1e-10, 1 - 1e-7)))
        # allowed {none, 1, 2, 3} for a capacity limit 0..3: row v allows none and orders <= v
        closure_table = self._order_mask(torch.arange(MAX_BOND_ORDER + 1, device=dev), True)

        def choose(logits: torch.Tensor, mask: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
            if temperature > 0:
                logits = logits / temperature + g
            return logits.masked_fill(~mask, float("-inf")).argmax(-1)

        atoms = torch.full((bsz, m), -1, dtype=torch.long, device=dev)
        adj = torch.zeros((bsz, m, m), dtype=torch.long, device=dev)
        rem = torch.zeros((bsz, m), dtype=torch.long, device=dev)
        keys = torch.zeros((bsz, m, self.pair_k.out_features), device=dev)
        done = torch.zeros(bsz, dtype=torch.bool, device=dev)
        n_atoms = torch.zeros(bsz, dtype=torch.long, device=dev)
        rows = torch.arange(bsz, device=dev)
        state = torch.tanh(self.init_h(z)).unsqueeze(0)  # (1, B, H)
        x = self.start.expand(bsz, -1)
        for j in range(m + 1):
            u = gumbels[:, j]
            out, state = self.gru(torch.cat([x, z], -1).unsqueeze(1), state)
            h = out[:, 0]
            open_ = (rem[:, :j] >= 1).any(-1) if j else torch.zeros_like(done)
            t = choose(self.atom_head(h), self._atom_mask(j, open_), u[:, :k1])
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
            if j > 0:
                dist = j - torch.arange(j, device=dev)
                pairs = self._pairs(q, keys[:, :j], rem[:, :j], dist)  # (B, j, P)
                par_out = self.parent_head(pairs)
                off = k1
                p = choose(par_out[..., 0], rem[:, :j] >= 1, u[:, off : off + j])
                off += m
                rem_p = rem[rows, p]
                omask = self._order_mask(torch.minimum(rem_p, cap), with_none=False)
                ologits = par_out[rows, p, 1:]
                p_order = (choose(ologits, omask, u[:, off : off + MAX_BOND_ORDER]) + 1) * live
                off += MAX_BOND_ORDER
                adj[rows, j, p] = torch.where(live, p_order, adj[rows, j, p])
                adj[rows, p, j] = adj[rows, j, p]
                rem[rows, p] -= p_order
                rem_j = cap - p_order
                base = self.closure_head(pairs)  # (B, j, 4)
                rem_bias = self.closure_rem.weight
                last = int(p[live].max()) if bool(live.any()) else 0
                for i in range(last):  # closures go to atoms below the parent (i < p)
                    act = live & (i < p)
                    cl = base[:, i] + rem_bias[rem_j.clamp(0, MAX_REM)]
                    cmask = closure_table[torch.minimum(rem[:, i], rem_j).clamp(0, MAX_BOND_ORDER)]
                    o = choose(cl, cmask, u[:, off + 4 * i : off + 4 * i + 4]) * act
                    adj[:, j, i] = torch.where(act, o, adj[:, j, i])
                    adj[:, i, j] = adj[:, j, i]
                    rem[:, i] -= o
                    rem_j = rem_j - o
                    n_clos += (o > 0).long()
                rem[:, j] = torch.where(live, rem_j, 0)
            else:
                rem[:, 0] = torch.where(live, cap, 0)
            x = self.in_type(t) + self.in_order(p_order) + self.in_closures(n_clos.clamp(max=3))
        size = int(n_atoms.max()) if bsz else 0
        return GraphBatch(atoms[:, :size], adj[:, :size, :size], n_atoms)


class GraphVAE(nn.Module):
    """Encoder + decoder; ``capacity (K,)`` is the vocabulary's bond capacity per atom type.

    ``decoder``: ``"graph"`` (:class:`medgen.molecules.decoder.GraphStateDecoder`, choices from
    the partial graph, learned ``masks`` applied) or ``"sequence"`` (:class:`GraphDecoder`, the
    version-1 decoder: a GRU over the atom sequence, valence masks only; ``masks`` ignored).
    ``masks`` (:class:`medgen.molecules.masks.ChemistryMasks`) come from the training data.

    ``condition_dim`` P > 0 makes it a conditional VAE: the decoder reads ``z + W c`` where ``c``
    (``(B, P)``) holds the molecule's standardized properties and ``W`` starts at zero (so a
    network fine-tuned from an unconditional one starts as it was). For sampling, the latent
    carries its condition: :meth:`sample` takes ``(B, L + P)`` (``z`` then ``c``), or ``(B, L)``
    with ``c = 0`` (the training mean). ``condition_table`` ``(R, P)``: property rows of
    training molecules in raw units, kept standardized by ``condition_mean`` / ``condition_std``
    (:meth:`standardize`): the empirical prior of ``c`` that
    :func:`medgen.molecules.sampling.draw_noise` draws from.

    ``stereo``: a :class:`medgen.molecules.stereo.StereoHead` labels each finished graph's
    stereo candidates from the decoder's latent (trained on the data's labels); molecules then
    decode to isomeric SMILES (:meth:`decode_smiles`).
    """

    def __init__(
        self,
        *,
        capacity: torch.Tensor,
        max_atoms: int,
        latent_dim: int = 56,
        hidden_dim: int = 256,
        encoder_layers: int = 3,
        pair_dim: int = 64,
        decoder: str = "graph",
        masks: ChemistryMasks | None = None,
        condition_dim: int = 0,
        condition_table: torch.Tensor | None = None,
        condition_mean: torch.Tensor | None = None,
        condition_std: torch.Tensor | None = None,
        stereo: bool = False,
    ):
        super().__init__()
        if decoder not in DECODERS:
            raise UserError(f"decoder must be one of {list(DECODERS)}, got {decoder!r}")
        n_types = int(capacity.numel())
        self.latent_dim = latent_dim
        self.encoder = GraphEncoder(
            n_types=n_types, hidden_dim=hidden_dim, latent_dim=latent_dim, layers=encoder_layers
        )
        sizes: dict[str, Any] = dict(
            n_types=n_types,
            capacity=capacity,
            max_atoms=max_atoms,
            hidden_dim=hidden_dim,
            latent_dim=latent_dim,
            pair_dim=pair_dim,
        )
        self.decoder: GraphDecoder | GraphStateDecoder
        if decoder == "graph":
            from medgen.molecules.decoder import GraphStateDecoder

            self.decoder = GraphStateDecoder(**sizes, masks=masks)
        else:
            self.decoder = GraphDecoder(**sizes)
        self.stereo_head: StereoHead | None = None
        if stereo:
            from medgen.molecules.stereo import StereoHead

            self.stereo_head = StereoHead(n_types=n_types, latent_dim=latent_dim)
        #: a prior fitted after training (:mod:`medgen.molecules.prior`); None: N(0, I)
        self.latent_prior: LatentPrior | None = None
        self.condition_dim = int(condition_dim)
        if self.condition_dim > 0:
            self.condition = nn.Linear(self.condition_dim, latent_dim)
            nn.init.zeros_(self.condition.weight)
            nn.init.zeros_(self.condition.bias)
            table = condition_table
            if table is None:
                table = torch.zeros(1, self.condition_dim)
            if table.ndim != 2 or table.shape[1] != self.condition_dim or len(table) == 0:
                raise UserError(f"condition_table must be (R >= 1, {self.condition_dim}), got "
                                f"{tuple(table.shape)}")  # fmt: skip
            mean = torch.zeros(self.condition_dim) if condition_mean is None else condition_mean
            std = torch.ones(self.condition_dim) if condition_std is None else condition_std
            self.register_buffer("condition_mean", mean.float().clone(), persistent=False)
            self.register_buffer("condition_std", std.float().clone(), persistent=False)
            # the table is given in raw units and kept standardized, as the decoder reads it
            self.register_buffer("condition_table", self.standardize(table), persistent=False)

    def standardize(self, props: torch.Tensor) -> torch.Tensor:
        """Raw property values ``(B, P)`` in the units the condition layer reads."""
        mean, std = cast(torch.Tensor, self.condition_mean), cast(torch.Tensor, self.condition_std)
        return (props.float() - mean) / std

    def decoder_latent(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """What the decoder reads: ``z`` (``(B, L)``), plus ``W cond`` for a conditional VAE;
        ``z`` may also be ``(B, L + P)`` with the condition as its last ``P`` columns."""
        if self.condition_dim == 0:
            return z
        if cond is None and z.shape[-1] == self.latent_dim + self.condition_dim:
            z, cond = z[..., : self.latent_dim], z[..., self.latent_dim :]
        if cond is None:  # the training mean of every property
            return z
        return z + self.condition(cond.to(z.dtype))

    def encode(
        self, batch: GraphBatch, stereo: StereoBatch | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)``, each ``(B, L)``; with a stereo head and the batch's ``stereo``
        labels, the mean also carries them (:meth:`StereoHead.encode_offset`)."""
        mu, logvar = self.encoder(batch.atoms, batch.adj)
        if self.stereo_head is not None and stereo is not None:
            mu = mu + self.stereo_head.encode_offset(batch, stereo)
        return mu, logvar

    def forward(
        self,
        batch: GraphBatch,
        sample_z: bool | None = None,
        cond: torch.Tensor | None = None,
        stereo: StereoBatch | None = None,
    ) -> dict[str, torch.Tensor]:
        """Batch means in nats per molecule: ``recon``, ``kl`` and the parts of ``recon``.

        ``z`` is drawn from ``q(z|x)`` when ``sample_z`` (default: in training mode), else the mean.
        ``cond`` ``(B, P)``: the molecules' standardized properties (a conditional VAE).
        ``stereo``: the molecules' stereo labels (needed by a model with a stereo head).
        """
        mu, logvar = self.encode(batch, stereo)
        if sample_z is None:
            sample_z = self.training
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample_z else mu
        z_dec = self.decoder_latent(z, cond)
        ll = self.decoder.log_likelihood(z_dec, batch)
        if self.stereo_head is not None:
            if stereo is None:
                raise ValueError("a model with a stereo head needs the batch's stereo labels")
            ll["stereo"] = self.stereo_head.log_likelihood(z_dec, batch, stereo)
        kl_dims = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)  # (B, L)
        kl = kl_dims.sum(-1)
        out = {f"nll_{k}": -v.mean() for k, v in ll.items()}
        out["recon"] = -functools.reduce(operator.add, ll.values()).mean()
        out["kl"] = kl.mean()
        out["kl_per_dim"] = kl_dims.mean(0)  # (L,), for free-bits objectives
        return out

    def sample(self, z: torch.Tensor, **kwargs) -> GraphBatch:
        """Decode ``z (B, L)`` (or ``(B, L + P)``, see the class docstring); see
        :meth:`GraphDecoder.sample`."""
        return self.decoder.sample(self.decoder_latent(z), **kwargs)

    def noise_width(self) -> int:
        """Uniform numbers per decoding step: the decoder's, then 6 for the stereo head."""
        return self.decoder.noise_width() + (6 if self.stereo_head is not None else 0)

    @torch.no_grad()
    def search_graphs(
        self, z_dec: torch.Tensor, draws: Sequence[tuple[float, torch.Tensor | None]]
    ) -> tuple[GraphBatch, torch.Tensor]:
        """Decode the decoder inputs ``z_dec (B, D)`` once per ``(temperature, uniforms)`` of
        ``draws`` and keep, per row, the graph whose decoding path the decoder gives the
        highest log-likelihood (teacher-forced, the masks and ring bound included): a search
        for the most likely molecule beyond greedy decoding, whose choices are each the most
        likely but whose path need not be. Returns the graphs and their log-likelihoods ``(B,)``;
        ties keep the earlier draw."""
        best: GraphBatch | None = None
        score = torch.full((len(z_dec),), float("-inf"), device=z_dec.device)
        for temperature, uniforms in draws:
            graphs = self.decoder.sample(z_dec, temperature=temperature, uniforms=uniforms)
            if not len(z_dec):
                return graphs, score
            ll = functools.reduce(operator.add, self.decoder.log_likelihood(z_dec, graphs).values())
            if best is None:
                best, score = graphs, ll
                continue
            n = max(best.atoms.shape[1], graphs.atoms.shape[1])
            old, new = _pad_graphs(best, n), _pad_graphs(graphs, n)
            take = ll > score
            best = GraphBatch(
                torch.where(take[:, None], new.atoms, old.atoms),
                torch.where(take[:, None, None], new.adj, old.adj),
                torch.where(take, new.n_atoms, old.n_atoms),
            )
            score = torch.where(take, ll, score)
        if best is None:
            raise ValueError("search_graphs needs at least one draw")
        size = int(best.n_atoms.max()) if len(best.n_atoms) else 0
        return GraphBatch(best.atoms[:, :size], best.adj[:, :size, :size], best.n_atoms), score

    @torch.no_grad()
    def decode_smiles(
        self,
        z: torch.Tensor,
        vocab: Any,
        *,
        temperature: float = 1.0,
        uniforms: torch.Tensor | None = None,
        search: Sequence[tuple[float, torch.Tensor | None]] | None = None,
    ) -> list[str | None]:
        """Canonical SMILES of :meth:`sample`'s graphs (None where RDKit rejects one); with a
        stereo head, isomeric, the labels drawn from the uniforms' last 6 columns (greedy when
        they are absent or ``temperature`` is 0). ``search``: more ``(temperature, uniforms)``
        draws; each row keeps the most likely of its graphs (:meth:`search_graphs`)."""
        from medgen.molecules.graph import batch_to_mols, batch_to_smiles

        z_dec = self.decoder_latent(z)
        if search:
            graphs, _ = self.search_graphs(z_dec, [(temperature, uniforms), *search])
        else:
            graphs = self.decoder.sample(z_dec, temperature=temperature, uniforms=uniforms)
        if self.stereo_head is None:
            return batch_to_smiles(graphs, vocab)
        from medgen.molecules.stereo import batch_candidates, labelled_smiles

        mols = batch_to_mols(graphs, vocab)
        cands = batch_candidates(mols, graphs.atoms.shape[1]).to(z.device)
        width = self.decoder.noise_width()
        noise = None
        if uniforms is not None and uniforms.shape[-1] >= width + 6:
            noise = uniforms[:, :, width : width + 6]
        labels = self.stereo_head.choose(
            z_dec, graphs, cands, temperature=temperature, uniforms=noise
        )
        return labelled_smiles(mols, labels)
