"""Graph round trip on a sample of the MOSES test set (slow; needs `medgen data moses`)."""

from __future__ import annotations

import pandas as pd
import pytest
from rdkit import Chem

from medgen.molecules.graph import round_trip


@pytest.mark.slow
def test_round_trip_reproduces_moses_test_canonical_smiles():
    from medgen.datasets import moses_path

    try:
        path = moses_path("test")
    except FileNotFoundError as err:
        pytest.skip(str(err))
    smiles = pd.read_csv(path)["SMILES"].sample(n=5000, random_state=0).tolist()
    hits = sum(
        round_trip(s) == Chem.MolToSmiles(Chem.MolFromSmiles(s), isomericSmiles=False)
        for s in smiles
    )
    assert hits / len(smiles) >= 0.999
