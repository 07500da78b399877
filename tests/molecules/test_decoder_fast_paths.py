"""The graph decoder's sampling fast paths against the computations they replace: ring closures
scored all at once in rounds vs one candidate at a time, and the GRU's input projection folded
into its inputs vs the GRU itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medgen.molecules.decoder import GraphStateDecoder
from medgen.molecules.graph import MAX_BOND_ORDER
from medgen.molecules.masks import MAX_RING, ChemistryMasks
from medgen.molecules.vae import MAX_REM

K, M, H, L, P = 5, 14, 32, 8, 16


def decoder(seed: int = 0) -> GraphStateDecoder:
    torch.manual_seed(seed)
    dec = GraphStateDecoder(
        n_types=K, capacity=torch.tensor([4, 3, 2, 1, 6]), max_atoms=M, hidden_dim=H,
        latent_dim=L, pair_dim=P, masks=ChemistryMasks.permissive(K),
    )  # fmt: skip
    with torch.no_grad():  # random weights that close rings often, so rows close several
        dec.closure_head.bias[1:] += 2.0
    return dec.eval()


def gumbel_choose(logits, mask, u):
    logits = logits - torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7)))
    return logits.masked_fill(~mask, float("-inf")).argmax(-1)


def one_candidate_at_a_time(
    dec, g, act, j, t, built, pre, reach, rem, rem_j, cnt, cnt_j, adj, dist
):
    """The sequential loop over candidates i = 0, 1, ... (the specification)."""
    n_clos = torch.zeros_like(t)
    for i in range(act.shape[1]):
        ring = (reach[:, i] + 2).clamp(max=MAX_RING)
        cl = dec.closure_head(F.relu(pre[:, i] + dec.pair_ring(ring)))
        cl = cl + dec.closure_rem(rem_j.clamp(0, MAX_REM))
        ok = dec._orders_ok(built[:, i], t, rem[:, i], rem_j, cnt[:, i], cnt_j)
        ok = ok & dec.ring_sizes[ring].unsqueeze(-1)
        cmask = torch.cat([torch.ones_like(ok[:, :1]), ok], -1)
        oc = gumbel_choose(cl, cmask, g[:, i]) * act[:, i]
        made = oc > 0
        adj[:, j, i] = torch.where(act[:, i], oc, adj[:, j, i])
        adj[:, i, j] = adj[:, j, i]
        rem[:, i] -= oc
        rem_j = rem_j - oc
        hot = F.one_hot((oc - 1).clamp(min=0), MAX_BOND_ORDER) * made.unsqueeze(-1)
        cnt[:, i] += hot
        cnt_j += hot
        n_clos += made.long()
        reach[:] = torch.where(made.unsqueeze(-1), torch.minimum(reach, dist[:, i, :j]), reach)
    return rem_j, n_clos


def random_state(seed: int, bsz: int = 200, j: int = 11):
    gen = torch.Generator().manual_seed(seed)

    def ints(lo, hi, *shape):
        return torch.randint(lo, hi, shape, generator=gen)

    parent = ints(0, j, bsz)
    last = int(parent.max())
    live = torch.rand(bsz, generator=gen) < 0.9
    act = live.unsqueeze(-1) & (torch.arange(last) < parent.unsqueeze(-1))
    state = dict(
        g=torch.rand(bsz, last, 4, generator=gen), act=act, j=j, t=ints(0, K, bsz),
        built=ints(0, K, bsz, j), pre=torch.randn(bsz, j, P, generator=gen),
        reach=ints(1, 9, bsz, j), rem=ints(0, 4, bsz, M), rem_j=ints(1, 5, bsz),
        cnt=ints(0, 2, bsz, M, MAX_BOND_ORDER), cnt_j=ints(0, 2, bsz, MAX_BOND_ORDER),
        adj=torch.zeros(bsz, M, M, dtype=torch.long), dist=ints(1, 9, bsz, M, M),
    )  # fmt: skip
    return state


def test_closures_in_rounds_draw_what_the_candidate_loop_draws():
    dec = decoder()
    for seed in range(4):
        state = random_state(seed)
        mine = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
        with torch.inference_mode():
            want_rem_j, want_n = one_candidate_at_a_time(dec, **state)
            rem_j, n_clos = dec._sample_closures(gumbel_choose, **mine)
        assert int(want_n.max()) >= 2, "the test must exercise several closures in a row"
        assert torch.equal(n_clos, want_n) and torch.equal(rem_j, want_rem_j)
        for key in ("adj", "rem", "cnt", "cnt_j", "reach"):
            assert torch.equal(mine[key], state[key]), key
        # rows the act mask leaves out never change
        still = ~state["act"].any(-1)
        assert not bool(mine["adj"][still].any())


def test_the_folded_gru_input_is_the_gru():
    dec = decoder(1)
    bsz, steps = 7, 5
    z = torch.randn(bsz, L)
    pooled = torch.randn(steps, bsz, P)
    tok = [torch.randint(0, n, (steps, bsz)) for n in (K, MAX_BOND_ORDER + 1, 4)]
    with torch.inference_mode():
        z_in, start_in, token_in, read_in = dec._folded_gru_input(z)
        want = h = torch.tanh(dec.init_h(z))
        got = want.clone()
        n_c = dec.in_closures.num_embeddings
        for s in range(steps):
            j = s  # atoms built before this step
            scale = max(j, 1) ** 0.5
            if s == 0:
                x, x_in = dec.start.expand(bsz, -1), start_in.expand(bsz, -1)
            else:
                t, o, c = (v[s - 1] for v in tok)
                x = dec.in_type(t) + dec.in_order(o) + dec.in_closures(c)
                x_in = token_in[(t * (MAX_BOND_ORDER + 1) + o) * n_c + c]
            x = x + dec.read_out(pooled[s] / scale)
            out, h = dec.gru(torch.cat([x, z], -1).unsqueeze(1), want.unsqueeze(0))
            want = h[0]
            got = dec._gru_step(torch.addmm(x_in + z_in, pooled[s] / scale, read_in), got)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out[:, 0], want)
