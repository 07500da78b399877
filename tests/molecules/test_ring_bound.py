"""The ring bound: the data's largest ring, learned from the training graphs, that no decoded
molecule exceeds, while fused systems whose decoding order closes a perimeter before its fusion
bond stay possible."""

from __future__ import annotations

import dataclasses

import torch
from rdkit import Chem

from medgen.molecules.graph import graph_to_mol
from medgen.molecules.masks import ChemistryMasks, basis_rings, closure_rings, smallest_rings
from medgen.molecules.module import GraphVAEModule
from medgen.molecules.sampling import draw_noise
from medgen.molecules.vae import GraphVAE

from .test_decoder import NET, graphs_of

FUSED = [
    "c1ccc2ccccc2c1",  # naphthalene: 6, 6 in any order
    "c1ccc2c(c1)ccc1ccccc12",  # phenanthrene: its DFS closes a 10-atom perimeter first
    "CN1C(=O)CC(=O)N(c2ccccc2)c2cc(Cl)ccc21",  # a benzodiazepinedione: 11 before the fusion
]


def rings_of(batch) -> list[list[int]]:
    return [sorted(r[r > 0].tolist()) for r in batch]


def test_basis_and_smallest_rings_known_answers():
    smiles = ["C1CC1", "C1CCCCCCC1", *FUSED, "C1CC2CCC1C2", "CCO"]
    batch, _ = graphs_of(smiles)
    assert rings_of(closure_rings(batch.adj)) == [[3], [8], [6, 6], [6, 6, 10], [6, 6, 11],
                                                  [5, 6], []]  # fmt: skip
    # nearest first, the fusion bond splits the perimeter: each ring is one of the molecule's
    assert rings_of(basis_rings(batch.adj)) == [[3], [8], [6, 6], [6, 6, 6], [6, 6, 7], [5, 6], []]
    # the smallest ring through each closure bond of the finished graph: norbornane's are 5, 5
    assert rings_of(smallest_rings(batch.adj)) == [[3], [8], [6, 6], [6, 6, 6], [6, 6, 7],
                                                   [5, 5], []]  # fmt: skip
    for k, smi in enumerate(smiles):  # never above RDKit's largest SSSR ring
        mol = Chem.MolFromSmiles(smi)  # kept: its ring info lives only as long as the molecule
        sssr = max((len(r) for r in mol.GetRingInfo().AtomRings()), default=0)
        assert int(smallest_rings(batch.adj)[k].max()) <= sssr


def test_the_ring_bound_is_learned_and_travels_in_the_plain_tables():
    batch, vocab = graphs_of(["CCO", "C1CCNC1", *FUSED])
    masks = ChemistryMasks.learn([batch], len(vocab))
    assert masks.ring_bound == 7  # the 7-membered ring; the 10 and 11 closures are perimeters
    assert int(masks.ring_sizes.nonzero().max()) == 11
    plain = masks.to_plain(vocab.tokens)
    assert plain["ring_bound"] == 7
    assert ChemistryMasks.from_plain(plain, vocab.tokens).ring_bound == 7
    del plain["ring_bound"]  # tables written before the bound: no bound
    assert ChemistryMasks.from_plain(plain, vocab.tokens).ring_bound == 0


def ring_closer(bound: int, ring_sizes: torch.Tensor | None = None):
    """A random-weight model that closes rings often, large ones included, and its vocabulary."""
    _, vocab = graphs_of(["CCO", "c1ccccc1N", "CC(=O)NC1CCCCC1S"])
    masks = dataclasses.replace(ChemistryMasks.permissive(len(vocab)), ring_bound=bound)
    if ring_sizes is not None:
        masks = dataclasses.replace(masks, ring_sizes=ring_sizes)
    torch.manual_seed(0)
    vae = GraphVAE(capacity=vocab.capacity, max_atoms=22, masks=masks, **NET).eval()
    with torch.no_grad():
        vae.decoder.closure_head.bias[1:] += 2.5
    return vae, vocab


def sample_rings(bound: int, temperature: float):
    vae, vocab = ring_closer(bound)
    z, u = draw_noise(vae, range(400), seed=1)
    graphs = vae.sample(z * 2, temperature=temperature, uniforms=u)
    sssr = []
    for k in range(len(graphs.n_atoms)):
        mol = graph_to_mol(graphs.atoms[k], graphs.adj[k], vocab)  # raises if not sanitizable
        assert len(Chem.GetMolFrags(mol)) == 1
        sssr.append(max((len(r) for r in mol.GetRingInfo().AtomRings()), default=0))
    return graphs, sssr


def test_decoding_never_exceeds_the_ring_bound_and_still_fuses_rings():
    for temperature in (1.0, 0.0):
        _, free = sample_rings(0, temperature)
        assert max(free) > 6, "without a bound these weights make larger rings"
        graphs, bounded = sample_rings(6, temperature)
        assert max(bounded) <= 6, sorted(bounded)[-5:]
        assert int(basis_rings(graphs.adj).max()) <= 6  # the basis, so the SSSR too
        assert sum(r >= 5 for r in bounded) > 20


def log_probs(logits, mask):
    return logits.masked_fill(~mask, float("-inf")).log_softmax(-1)


def pick_one(logits, mask, u):
    """One categorical draw per row from one uniform (inverse CDF), at temperature 1."""
    cdf = logits.masked_fill(~mask, float("-inf")).softmax(-1).cumsum(-1)
    return (cdf < u.unsqueeze(-1) * cdf[:, -1:]).sum(-1).clamp(max=logits.shape[-1] - 1)


def fixer_draws(bsz: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(100 + seed)
    return {"pick_one": pick_one, "g_fix": torch.rand(bsz, 8, generator=gen)}


def test_a_closure_too_large_through_the_parent_waits_for_its_fixer():
    # the closure rounds on random states: each closure's ring is small through the parent or
    # through the next closure of the same atom (its fixer), and nothing closes in between
    from .test_decoder_fast_paths import decoder, gumbel_choose, random_state

    bound, pending_fixed, changed = 6, 0, 0
    for seed in range(6):
        state = random_state(seed)
        free = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
        dec = decoder()
        dec.ring_bound = bound
        mine = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
        with torch.inference_mode():
            dec._sample_closures(gumbel_choose, **mine, **fixer_draws(len(state["t"]), seed))
            dec.ring_bound = 0
            dec._sample_closures(gumbel_choose, **free)
        j, last = state["j"], state["act"].shape[1]
        made = mine["adj"][:, j, :last]
        changed += int((made != free["adj"][:, j, :last]).any(-1).sum())
        parent_ok = state["reach"][:, :last] + 2 <= bound
        for b in range(len(made)):
            closed = made[b].nonzero().flatten().tolist()
            for k, i in enumerate(closed):
                if parent_ok[b, i]:
                    continue
                assert k + 1 < len(closed), (b, closed)  # a pending closure is never left open
                f = closed[k + 1]
                assert int(state["dist"][b, i, f]) + 2 <= bound and bool(parent_ok[b, f])
                pending_fixed += 1
    assert pending_fixed > 20 and changed > 20, (pending_fixed, changed)


def test_a_checkpoint_without_the_bound_gets_it_from_its_data(tmp_path, cache_dir, capsys):
    # checkpoints written before the bound: the tool learns it from the training file
    from medgen.molecules.masks import main
    from medgen.molecules.module import GraphVAEModule
    from medgen.utils.checkpoint import load_checkpoint

    data = tmp_path / "train.smi"
    data.write_text("SMILES\n" + "\n".join(["CCO", "C1CCNC1", *FUSED, "C1CCCCCC1"]) + "\n")
    batch, vocab = graphs_of(["CCO", *FUSED])
    plain = ChemistryMasks.learn([batch], len(vocab)).to_plain(vocab.tokens)
    del plain["ring_bound"]
    torch.manual_seed(0)
    net = {**NET, "decoder": "graph"}
    module = GraphVAEModule(vocabulary=vocab.tokens, max_atoms=24, network=net, masks=plain)
    old = tmp_path / "old.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, old)
    assert GraphVAEModule.from_checkpoint(old).vae.decoder.ring_bound == 0

    new = tmp_path / "new.ckpt"
    assert main([str(old), "--data", str(data), "--out", str(new)]) == 0
    said = capsys.readouterr().out
    assert "ring bound 7 over 6 molecules; 0 (0.00%)" in said, said
    assert load_checkpoint(new)["hyper_parameters"]["masks"]["ring_bound"] == 7
    assert GraphVAEModule.from_checkpoint(new).vae.decoder.ring_bound == 7
    # a user mistake is one line and exit code 2, and the input is never overwritten
    before = old.read_bytes()
    assert main([str(old), "--data", str(data), "--out", str(old)]) == 2
    assert "is an input" in capsys.readouterr().err and old.read_bytes() == before


def test_the_ring_bound_of_a_large_source_logs_progress(tmp_path, cache_dir, monkeypatch, caplog):
    import logging

    import medgen.molecules.featurize as featurize
    from medgen.molecules.masks import ring_bound_of

    data = tmp_path / "train.smi"
    peri = "Cn1ccc(C(=O)Nc2ccc3c4c(cccc24)CC3)cc1=O"  # an acenaphthene: rings close across atoms
    rows = ["CCO", "C1CCNC1", *FUSED, "C1CCCCCCC1", peri]
    data.write_text("SMILES\n" + "\n".join(rows) + "\n")
    source, _ = featurize.load_source(data)
    monkeypatch.setattr(featurize, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO):
        bound, beyond = ring_bound_of(source, chunk=2)
    # the cyclooctane sets the bound; the acenaphthene's basis ring through its peri bond is 11
    assert (bound, beyond) == (8, 1)
    assert ring_bound_of(source) == (8, 1)  # chunks do not change the answer
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("ring bound: 2 of 7 molecules") for m in said), said


def test_the_shipped_moses_model_decodes_within_its_ring_bound():
    from medgen.molecules.api import MoleculeVAE

    vae = MoleculeVAE.from_checkpoint("pretrained:moses")
    assert vae.vae.decoder.ring_bound == 7  # learned from the 1.58 M MOSES train molecules

    def largest_rings() -> list[int]:
        out = []
        for smi in vae.sample(300, seed=0):
            mol = Chem.MolFromSmiles(smi)
            out.append(max((len(r) for r in mol.GetRingInfo().AtomRings()), default=0))
        return out

    bounded = largest_rings()
    vae.vae.decoder.ring_bound = 0
    free = largest_rings()
    assert max(bounded) <= 7 and sum(r >= 8 for r in free) >= 3, sorted(free)[-5:]


def bounded_log_probs(dec, z, uniforms):
    """The sampler's log-probability of each path it drew, and teacher forcing's of the same
    graphs, both with the decoder's ring bound."""
    graphs, drawn = dec.sample_with_log_prob(z, uniforms=uniforms)
    assert torch.equal(graphs.adj, dec.sample(z, uniforms=uniforms).adj)  # the same draws
    with torch.no_grad():
        scored = sum(dec.log_likelihood(z, graphs).values())
    return graphs, drawn, scored


def test_teacher_forcing_scores_what_the_bounded_sampler_draws():
    for bound in (0, 6):
        vae, _ = ring_closer(bound)
        z, u = draw_noise(vae, range(300), seed=1)
        _, drawn, scored = bounded_log_probs(vae.decoder, vae.decoder_latent(z * 2), u)
        assert drawn.max() < 0 and torch.allclose(drawn, scored, atol=1e-3), (
            (drawn - scored).abs().max()
        )


def test_the_shipped_model_scores_its_own_fused_rings_as_it_draws_them():
    # fused systems whose decoding closes a perimeter before its fusion bond: the pending
    # closure and its fixer, drawn in one categorical, are scored the same at teacher forcing
    module = GraphVAEModule.from_checkpoint("pretrained:moses")
    dec = module.vae.eval().decoder
    z, u = draw_noise(module.vae, range(400), seed=3)
    z = module.vae.decoder_latent(z)
    graphs, drawn, scored = bounded_log_probs(dec, z, u)
    perimeters = int((closure_rings(graphs.adj) > dec.ring_bound).flatten(1).any(-1).sum())
    assert perimeters >= 20, perimeters
    assert torch.allclose(drawn, scored, atol=1e-3), (drawn - scored).abs().max()
    dec.ring_bound = 0  # teacher forcing without the bound scores another distribution
    with torch.no_grad():
        free = sum(dec.log_likelihood(z, graphs).values())
    assert int(((free - scored).abs() > 1e-3).sum()) >= 50


def test_a_molecule_beyond_the_bound_keeps_a_finite_loss_and_gradient():
    batch, vocab = graphs_of(["C1CCCCCCC1", *FUSED, "CCO"])
    masks = dataclasses.replace(ChemistryMasks.learn([batch], len(vocab)), ring_bound=6)
    torch.manual_seed(0)
    vae = GraphVAE(capacity=vocab.capacity, max_atoms=22, masks=masks, **NET)
    out = vae(batch)
    out["recon"].backward()
    grads = [p.grad for p in vae.parameters() if p.grad is not None]
    assert torch.isfinite(out["recon"]) and all(bool(torch.isfinite(g).all()) for g in grads)
    # the bound changes the loss of the molecules whose closures it restricts (z = mu)
    vae.eval()
    with torch.no_grad():
        bounded = vae(batch)["recon"]
        vae.decoder.ring_bound = 0
        free = vae(batch)["recon"]
    assert torch.isfinite(bounded) and not torch.allclose(free, bounded)


def test_a_pending_closure_always_has_a_fixer_the_ring_sizes_allow():
    # masks that forbid small rings: a fixer whose own ring the masks forbid is no fixer, so no
    # closure may become pending on it (it would stay pending, and its ring exceed the bound)
    sizes = torch.ones(13, dtype=torch.bool)
    sizes[[3, 4, 5]] = False
    vae, _ = ring_closer(6, sizes)
    z, u = draw_noise(vae, range(1500), seed=1)
    graphs, drawn, scored = bounded_log_probs(vae.decoder, vae.decoder_latent(z * 2), u)
    rings = basis_rings(graphs.adj)
    assert int(rings.max()) <= 6  # before the fixer's own ring was checked: 5 rows above
    assert int((rings == 6).flatten(1).any(-1).sum()) >= 50
    assert torch.allclose(drawn, scored, atol=1e-3), (drawn - scored).abs().max()


def test_the_fixer_draw_leaves_the_later_candidates_their_own_distribution():
    # one state with a pending closure, decoded 300,000 times: the outcomes (which closures,
    # which orders) come as often as the probabilities the sampler reports for them. A fixer
    # drawn by Gumbel-max over the closure uniforms biased the candidates above it toward "no
    # closure" (total variation 0.017 here); its own uniform leaves them unbiased (0.002)
    from .test_decoder_fast_paths import decoder, gumbel_choose, random_state

    dec = decoder()
    dec.ring_bound = 6
    state = random_state(0)
    first = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
    with torch.inference_mode():
        dec._sample_closures(gumbel_choose, **first, **fixer_draws(200, 0))
    j, last = state["j"], state["act"].shape[1]
    parent_ok = state["reach"][:, :last] + 2 <= 6
    pending = (first["adj"][:, j, :last] > 0) & ~parent_ok
    b = int(pending.any(-1).nonzero()[1])
    n = 300_000
    rows = {k: v[b : b + 1].expand(n, *v.shape[1:]).clone() if torch.is_tensor(v) else v
            for k, v in state.items()}  # fmt: skip
    gen = torch.Generator().manual_seed(7)
    rows["g"] = torch.rand(n, last, 4, generator=gen)
    lp = torch.zeros(n)
    with torch.inference_mode():
        dec._sample_closures(gumbel_choose, **rows, lp=lp, log_probs=log_probs, pick_one=pick_one,
                             g_fix=torch.rand(n, 8, generator=gen))  # fmt: skip
    outcomes, which, counts = torch.unique(
        rows["adj"][:, j, :last], dim=0, return_inverse=True, return_counts=True
    )
    prob = torch.zeros(len(outcomes)).scatter_(0, which, lp.exp())
    top = torch.zeros(len(outcomes)).scatter_reduce(0, which, lp, "amax", include_self=False)
    low = torch.zeros(len(outcomes)).scatter_reduce(0, which, lp, "amin", include_self=False)
    spread = top - low
    assert float(spread.abs().max()) < 1e-4  # one probability per outcome
    assert len(outcomes) >= 5 and bool(((outcomes > 0) & ~parent_ok[b]).any())
    tv = 0.5 * (float((counts / n - prob).abs().sum()) + max(0.0, 1 - float(prob.sum())))
    assert tv < 0.008, tv
