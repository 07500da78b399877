"""ChemNet's input and forward pass: the padding-aware version against fcd-torch's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fcd_torch.utils import get_one_hot

from medgen.chem.fcd import (
    PAD_LENGTH,
    chemnet,
    chemnet_activations,
    fast_chemnet,
    one_hot_batch,
    token_columns,
)

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "chem" / "moses_test_200.smi"


@pytest.fixture(scope="module")
def smiles() -> list[str]:
    lines = FIXTURE.read_text().splitlines()
    found = [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]
    # a single atom, two-letter symbols, charges and stereo, an unknown symbol, two fragments
    # (ChemNet reads up to the first '.'), and SMILES too long for the 350 columns
    odd = ["C", "Cl", "BrCCBr", "C[Si](C)(C)C", "[NH4+].[Cl-]", "F/C=C/F", "C[C@H](N)O", "CZnC",
           "c1ccccc1" * 3, "C" * 349, "C" * 400, "CCl" * 150]  # fmt: skip
    return found + odd


def test_token_columns_are_fcd_torchs_one_hot(smiles):
    rng = np.random.default_rng(0)
    alphabet = list("CNOSFPBIclnosrir()[]=#+-@123456789%X.H")
    random = ["".join(rng.choice(alphabet, size=int(rng.integers(1, 60)))) for _ in range(300)]
    for s in smiles + [r for r in random if not r.startswith(".")]:
        want = get_one_hot(s, PAD_LENGTH)
        cols = token_columns(s)
        assert want[: len(cols)].argmax(1).tolist() == cols, s
        assert want[: len(cols)].sum() == len(cols) and not want[len(cols) :].any(), s


def test_one_hot_batch_is_fcd_torchs_input(smiles):
    width = get_one_hot("C", PAD_LENGTH).shape[1]
    want = np.stack([get_one_hot(s, PAD_LENGTH) / width for s in smiles])
    got = one_hot_batch(smiles).transpose(1, 2).numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want.astype(np.float32))


def test_empty_smiles_is_named():
    with pytest.raises(ValueError, match="non-empty"):
        token_columns("")
    with pytest.raises(ValueError, match="valid SMILES; got ''"):
        chemnet_activations([""], canonical=True)


def test_padding_aware_forward_is_chemnets(smiles):
    x = one_hot_batch(smiles)
    with torch.no_grad():
        want = chemnet()(x)
    got = fast_chemnet()(x)
    assert got.shape == want.shape == (len(smiles), 512)
    # float rounding only: activations are of order 1
    assert (got - want).abs().max().item() < 1e-4
    # the molecules filling all 88 steps, and a batch of one, go the same way
    full = one_hot_batch(["C" * 400, "C"])
    with torch.no_grad():
        np.testing.assert_allclose(fast_chemnet()(full), chemnet()(full), atol=1e-4)
        np.testing.assert_allclose(fast_chemnet()(full[1:]), chemnet()(full[1:]), atol=1e-4)


def test_activations_keep_the_input_order(smiles):
    picked = smiles[:40] + smiles[-6:]
    acts = chemnet_activations(picked, batch_size=7, canonical=True)
    shuffled = np.random.default_rng(1).permutation(len(picked))
    again = chemnet_activations([picked[i] for i in shuffled], batch_size=16, canonical=True)
    np.testing.assert_allclose(again, acts[shuffled], atol=1e-5)
    with torch.no_grad():
        want = chemnet()(one_hot_batch(picked)).numpy()
    np.testing.assert_allclose(acts, want, atol=1e-4)
