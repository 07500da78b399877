"""Known answers for per-molecule scoring (values checked by hand against RDKit 2026.09)."""

from __future__ import annotations

import pandas as pd
import pytest
from rdkit import Chem, rdBase

from medgen.chem.alerts import alerts, moses_filters_pass
from medgen.chem.properties import GROUPS, columns_for, logp, qed, sa_score, score

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
CAFFEINE = "Cn1cnc2c1c(=O)n(C)c(=O)n2C"
IBUPROFEN = "CC(C)Cc1ccc(cc1)C(C)C(=O)O"
PARACETAMOL = "CC(=O)Nc1ccc(O)cc1"

# name: (smiles, mw, clogp, tpsa, hbd, hba, rotb, rings, aromatic rings, heavy atoms, qed, sa)
KNOWN = {
    "aspirin": (ASPIRIN, 180.159, 1.3101, 63.60, 1, 3, 2, 1, 1, 13, 0.5501, 1.5800),
    "caffeine": (CAFFEINE, 194.194, -1.0293, 61.82, 0, 3, 0, 2, 2, 14, 0.5385, 2.2980),
    "ibuprofen": (IBUPROFEN, 206.285, 3.0732, 37.30, 1, 1, 4, 1, 1, 15, 0.8216, 2.1918),
    "paracetamol": (PARACETAMOL, 151.165, 1.3506, 49.33, 2, 2, 1, 1, 1, 11, 0.5950, 1.4073),
}


@pytest.fixture(scope="module")
def drugs() -> pd.DataFrame:
    return score([v[0] for v in KNOWN.values()], n_jobs=1)


@pytest.mark.parametrize("index,name", list(enumerate(KNOWN)))
def test_drug_properties_known_answers(drugs, index, name):
    smiles, mw, clogp, tpsa, hbd, hba, rotb, rings, arom, heavy, qed_, sa = KNOWN[name]
    row = drugs.iloc[index]
    assert row["input"] == smiles and row["valid"] and row["error"] == ""
    assert row["mw"] == pytest.approx(mw, abs=1e-3)
    assert row["clogp"] == pytest.approx(clogp, abs=1e-4)
    assert row["tpsa"] == pytest.approx(tpsa, abs=1e-2)
    assert (row["hbd"], row["hba"], row["rotatable_bonds"]) == (hbd, hba, rotb)
    assert (row["rings"], row["aromatic_rings"], row["heavy_atoms"]) == (rings, arom, heavy)
    assert row["qed"] == pytest.approx(qed_, abs=1e-4)
    assert row["sa"] == pytest.approx(sa, abs=1e-4)
    assert row["lipinski_violations"] == 0 and bool(row["veber"])
    assert row["formal_charge"] == 0 and not row["fragment_stripped"]


def test_identity_columns(drugs):
    aspirin = drugs.iloc[0]
    assert aspirin["inchikey"] == "BSYNRYMUTXBXSQ-UHFFFAOYSA-N"
    assert aspirin["canonical_smiles"] == "CC(=O)Oc1ccccc1C(=O)O"
    assert aspirin["scaffold"] == "c1ccccc1"
    assert aspirin["fraction_csp3"] == pytest.approx(1 / 9)
    assert drugs.iloc[1]["inchikey"] == "RYYVLZVUVIJVGH-UHFFFAOYSA-N"  # caffeine


def test_single_molecule_functions_match_score():
    mol = Chem.MolFromSmiles(ASPIRIN)
    assert qed(mol) == pytest.approx(0.5501, abs=1e-4)
    assert logp(mol) == pytest.approx(1.3101, abs=1e-4)
    assert sa_score(mol) == pytest.approx(1.58, abs=1e-3)


def test_invalid_inputs_give_rows_with_reasons_in_order():
    inputs = ["C1CC", "", "   ", None, "CC(C)(C)(C)(C)C", "c1cccc1", "Xx", "CCO"]
    df = score(inputs, n_jobs=1)
    assert len(df) == len(inputs)
    assert df["valid"].tolist() == [False] * 7 + [True]
    assert "unclosed ring" in df["error"][0]
    assert df["error"][1] == "empty SMILES" and df["error"][2] == "empty SMILES"
    assert df["error"][3].startswith("missing SMILES")
    assert "valence" in df["error"][4].lower()
    assert "kekulize" in df["error"][5].lower()
    assert "Parse Error" in df["error"][6]
    assert df["qed"][:7].isna().all() and df["hbd"][:7].isna().all()
    assert df["canonical_smiles"][7] == "CCO"  # surrounding whitespace is ignored


def test_salt_scored_on_largest_organic_fragment():
    df = score(["CC(=O)Nc1ccc(O)cc1.Cl", "[Na+].[O-]C(=O)c1ccccc1", PARACETAMOL], n_jobs=1)
    assert df["fragment_stripped"].tolist() == [True, True, False]
    assert df["canonical_smiles"][0] == df["canonical_smiles"][2] == "CC(=O)Nc1ccc(O)cc1"
    assert df["mw"][0] == pytest.approx(df["mw"][2])
    assert df["canonical_smiles"][1] == "O=C([O-])c1ccccc1" and df["formal_charge"][1] == -1


def test_charged_and_aromatic_heteroatoms():
    df = score(["O=[N+]([O-])c1ccc(cc1)C(=O)O", "C[N+](C)(C)C", "c1cc[nH]c1", "c1ccsc1"], n_jobs=1)
    assert df["valid"].all()
    nitro, quat, pyrrole, thiophene = (df.iloc[i] for i in range(4))
    assert nitro["formal_charge"] == 0 and "nitro_group" in nitro["brenk"].split(";")
    assert not nitro["moses_filters"]  # charged atoms fail the MOSES filters
    assert quat["formal_charge"] == 1 and not quat["moses_filters"]
    assert pyrrole["hbd"] == 1 and pyrrole["aromatic_rings"] == 1 and pyrrole["moses_filters"]
    assert thiophene["canonical_smiles"] == "c1ccsc1" and thiophene["aromatic_rings"] == 1


def test_structural_alerts_by_name():
    rhodanine = Chem.MolFromSmiles("O=C1C(=Cc2ccccc2)SC(=S)N1")
    assert alerts(rhodanine, "pains") == ["ene_rhod_A(235)"]
    assert "Michael_acceptor_1" in alerts(rhodanine, "brenk")
    assert alerts(rhodanine, "nih") == ["rhodanine"]
    assert not moses_filters_pass(rhodanine)
    assert alerts(Chem.MolFromSmiles(IBUPROFEN), "pains") == []
    with pytest.raises(ValueError, match="unknown alert catalog 'foo'"):
        alerts(rhodanine, "foo")


def test_groups_select_columns_and_unknown_group_is_named():
    df = score([ASPIRIN], n_jobs=1, groups=["qed"])
    assert list(df.columns) == columns_for(["qed"]) == ["input", "valid", "error",
                                                         "fragment_stripped", "qed"]  # fmt: skip
    assert set(columns_for(GROUPS)) == set(score([ASPIRIN], n_jobs=1).columns)
    with pytest.raises(ValueError, match="unknown property groups \\['qde'\\]"):
        score([ASPIRIN], groups=["qde"])


def test_rdkit_logging_is_restored_after_scoring(capfd):
    score(["C1CC"], n_jobs=1)
    assert "unclosed ring" not in capfd.readouterr().err  # silenced while scoring
    with rdBase.CaptureErrorLog() as capture:  # ...and RDKit still logs afterwards
        Chem.MolFromSmiles("C1CC")
    assert "unclosed ring" in capture.messages


@pytest.fixture(scope="module")
def moses_200() -> list[Chem.Mol]:
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "data" / "chem" / "moses_test_200.smi"
    lines = path.read_text().splitlines()
    smiles = [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]
    # and molecules that hit the screened alerts, explicit hydrogens, charges, a metal
    extra = ["O=C(Cl)Cl", "[H]OC([H])([H])C=O", "C[N+](C)(C)C.[Cl-]", "CC(=O)OO", "[Na+].[O-]C=O",
             "O=[N+]([O-])c1ccc(cc1)N=Nc1ccccc1", "S=C=Nc1ccccc1", "C1=CC(=O)C=CC1=O"]  # fmt: skip
    return [Chem.MolFromSmiles(s) for s in smiles + extra]


def test_pattern_screen_finds_what_searching_every_query_finds(moses_200):
    """The stacked-fingerprint screen keeps exactly the queries RDKit's one-by-one
    AllProbeBitsMatch keeps, and its matches are those of searching every query."""
    from rdkit import DataStructs
    from rdkit.Chem import QED

    from medgen.chem.alerts import moses_filter_patterns, moses_filter_screen
    from medgen.chem.patterns import PatternScreen, pattern_words

    screens = [(moses_filter_screen(), True), (PatternScreen(QED.StructuralAlerts), False)]
    total = 0
    for screen, with_h in screens:
        query_fps = [Chem.PatternFingerprint(q) for q in screen.queries]
        for mol in moses_200:
            mol = Chem.AddHs(mol) if with_h else mol
            words, fp = pattern_words(mol), Chem.PatternFingerprint(mol)
            kept = [i for i, q in enumerate(query_fps) if DataStructs.AllProbeBitsMatch(q, fp)]
            assert screen.candidates(words).tolist() == kept
            every = [i for i, q in enumerate(screen.queries) if mol.HasSubstructMatch(q)]
            assert screen.matching(mol, words) == every
            assert screen.any_match(mol) == bool(every)
            total += len(every)
    assert total > 20  # the set does hit alerts of both screens
    assert len(moses_filter_patterns()) == len(moses_filter_screen()) == 502


def test_qed_is_rdkits_value(moses_200):
    """medgen's QED (screened alerts, reused logP) equals RDKit's QED.qed bit for bit, explicit
    hydrogens included."""
    from rdkit.Chem import QED, Crippen

    from medgen.chem.patterns import pattern_words

    mols = moses_200 + [Chem.AddHs(m) for m in moses_200[:20]]
    for mol in mols:
        expected = QED.qed(mol)
        assert qed(mol) == expected
        assert qed(mol, logp=Crippen.MolLogP(mol), words=pattern_words(mol)) == expected


def test_moses_filters_equal_the_straightforward_definition(moses_200):
    """Ring sizes, charges, elements, then every MCF/PAINS pattern on the molecule with
    hydrogens, checked the long way (an atom loop, no screen)."""
    from medgen.chem.alerts import MOSES_ALLOWED_ATOMS, moses_filter_patterns

    odd = ["C1CCCCCCC1", "CC[Si](C)C", "C*", "[13CH3]CO", "[2H]OC", "CC(=O)[O-].[Na+]"]
    outcomes = set()
    for mol in moses_200 + [Chem.MolFromSmiles(s) for s in odd]:
        with_h = Chem.AddHs(mol)
        expected = (
            all(len(ring) < 8 for ring in mol.GetRingInfo().AtomRings())
            and all(a.GetFormalCharge() == 0 and a.GetSymbol() in MOSES_ALLOWED_ATOMS
                    for a in mol.GetAtoms())
            and not any(with_h.HasSubstructMatch(q) for _, q in moses_filter_patterns())
        )  # fmt: skip
        assert moses_filters_pass(mol) == expected, Chem.MolToSmiles(mol)
        outcomes.add(expected)
    assert outcomes == {True, False}
