from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "molecules"

# a few MOSES-like molecules: aromatic rings, [nH], nitro, sulfonamide, halogens
MOLECULES = [
    "Cc1nc2ccccc2c(=O)n1-c1ccc(Cl)cc1",
    "O=C1CCCN1S(=O)(=O)c1ccc(Cl)cc1",
    "COCC(NC(C)=O)C(=O)NCc1ccccc1",
    "O=[N+]([O-])c1ccc(NCc2ccco2)cc1",
    "c1ccc2[nH]c(CN3CCOCC3)nc2c1",
    "CC(C)Oc1ccc(C(=O)NCCF)cc1Br",
]


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(folder))
    return folder
