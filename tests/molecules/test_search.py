"""Decoding by likelihood search: the greedy decode plus seeded draws, each row keeping the
graph whose decoding path the model finds most likely."""

from __future__ import annotations

import pytest
import torch

from medgen.errors import UserError
from medgen.molecules.api import MoleculeVAE
from medgen.molecules.graph import batch_to_smiles, collate_graphs, encode_tokens, smiles_to_tokens
from medgen.molecules.module import GraphVAEModule
from medgen.molecules.sampling import draw_noise

from .conftest import MOLECULES
from .test_decoder import NET


def half_trained() -> MoleculeVAE:
    """A model that has seen the test molecules for a few steps: its greedy decodes are
    plausible but not yet its most likely paths."""
    neutral = [s for s in MOLECULES if "+" not in s]
    tokens = [smiles_to_tokens(s) for s in neutral]
    torch.manual_seed(0)
    module = GraphVAEModule(
        vocabulary=sorted({t for toks, _ in tokens for t in toks}), max_atoms=30, network=NET
    )
    batch = collate_graphs([encode_tokens(t, b, module.vocab) for t, b in tokens])
    opt = torch.optim.Adam(module.vae.parameters(), lr=3e-3)
    for _ in range(40):
        out = module.vae(batch)
        opt.zero_grad()
        (out["recon"] + 0.01 * out["kl"]).backward()
        opt.step()
    module.vae.eval()
    return MoleculeVAE(module)


def path_log_likelihood(vae, z_dec, graphs) -> torch.Tensor:
    with torch.no_grad():
        return sum(vae.decoder.log_likelihood(z_dec, graphs).values())


def test_search_keeps_each_rows_most_likely_graph():
    api = half_trained()
    vae = api.vae
    z_dec = vae.decoder_latent(
        torch.randn(64, api.latent_dim, generator=torch.Generator().manual_seed(1))
    )
    draws = [(0.0, None)] + [(0.7, draw_noise(vae, range(64), seed=k)[1]) for k in range(4)]
    graphs, score = vae.search_graphs(z_dec, draws)
    each, smiles = [], []
    for temperature, u in draws:
        g = vae.decoder.sample(z_dec, temperature=temperature, uniforms=u)
        each.append(path_log_likelihood(vae, z_dec, g))
        smiles.append(batch_to_smiles(g, api.vocab))
    each = torch.stack(each)  # (draws, rows)
    assert torch.allclose(score, each.max(0).values)
    assert torch.allclose(path_log_likelihood(vae, z_dec, graphs), score, atol=1e-4)
    chosen = batch_to_smiles(graphs, api.vocab)
    assert chosen == [smiles[int(k)][r] for r, k in enumerate(each.argmax(0))]
    # greedy choices are each the most likely, the path they make is often not
    assert bool((score >= each[0]).all()) and int((score > each[0] + 1e-3).sum()) >= 5
    only_greedy, _ = vae.search_graphs(z_dec, draws[:1])
    assert batch_to_smiles(only_greedy, api.vocab) == smiles[0]


def test_decode_with_search_is_seeded_per_row_and_checks_its_arguments():
    api = half_trained()
    z = torch.randn(12, api.latent_dim, generator=torch.Generator().manual_seed(2))
    searched = api.decode(z, search=3)
    assert searched == api.decode(z, search=3)
    assert api.decode(z[:5], search=3) == searched[:5]  # a row's draws do not depend on its batch
    assert api.decode(z[5:], search=3, index=5) == searched[5:]  # nor on the chunk it is in
    assert api.decode(z, search=0) == api.decode(z)
    assert searched != api.decode(z)  # it changes some decodes
    assert api.decode(z[:0], search=3) == []
    assert api.decode(z, search_temperature=0.0) == api.decode(z)  # no search, nothing to check
    with pytest.raises(UserError, match="search must be >= 0"):
        api.decode(z, search=-1)
    with pytest.raises(UserError, match="temperature"):
        api.decode(z, search=2, search_temperature=0.0)
