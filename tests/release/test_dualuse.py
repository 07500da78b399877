"""The dual-use alerts: textbook members of each listed class fire, common drugs do not, and the
counts reach the evaluation report and the screen."""

from __future__ import annotations

import pandas as pd
import pytest
from rdkit import Chem

from medgen.chem.dualuse import (
    ALERTS,
    CATALOG_ENTRIES,
    COLUMN,
    _catalog,
    class_names,
    count_dualuse,
    dualuse_alerts,
    dualuse_column,
    references,
)

# one public textbook member per class (names as in the CWC schedules and toxicology texts)
TEXTBOOK = {
    "sarin": ("CC(C)OP(C)(=O)F", "organophosphorus P-F ester (nerve-agent class)"),
    "soman": ("CC(C(C)(C)C)OP(C)(=O)F", "organophosphorus P-F ester (nerve-agent class)"),
    "tabun": ("CCOP(=O)(C#N)N(C)C", "organophosphorus P-CN ester (nerve-agent class)"),
    "VX": ("CCOP(C)(=O)SCCN(C(C)C)C(C)C",
           "organophosphorus P-S-aminoethyl ester (nerve-agent class)"),
    "parathion": ("CCOP(=S)(OCC)Oc1ccc([N+](=O)[O-])cc1",
                  "nitrophenyl organophosphate (AChE-inhibitor pesticide class)"),
    "sulfur mustard": ("ClCCSCCCl", "sulfur mustard (2-haloethyl sulfide)"),
    "HN2": ("CN(CCCl)CCCl", "nitrogen mustard (bis(2-haloethyl)amine)"),
    "lewisite": ("Cl/C=C/[As](Cl)Cl", "2-chlorovinyl arsine (Lewisite class)"),
    "phosgene": ("O=C(Cl)Cl", "carbonyl dihalide (phosgene class)"),
    "diphosgene": ("ClC(=O)OC(Cl)(Cl)Cl",
                   "trichloromethyl chloroformate or carbonate (phosgene equivalent)"),
    "cyanogen chloride": ("ClC#N", "cyanogen halide"),
    "hydrogen cyanide": ("C#N", "hydrogen cyanide or cyanide salt"),
    "chloropicrin": ("ClC(Cl)(Cl)[N+](=O)[O-]", "trihalonitromethane (chloropicrin class)"),
    "methyl fluoroacetate": ("COC(=O)CF", "fluoroacetate ester, amide or salt"),
    "TCDD": ("Clc1cc2Oc3cc(Cl)c(Cl)cc3Oc2cc1Cl", "polychlorinated dibenzo-p-dioxin"),
    "carfentanil": ("CCC(=O)N(c1ccccc1)C1(C(=O)OC)CCN(CCc2ccccc2)CC1",
                    "4-anilidopiperidine (fentanyl class)"),
    "dimethylmercury": ("C[Hg]C", "mercury compound"),
    "thallium acetate": ("CC(=O)[O-].[Tl+]", "thallium compound"),
    "tetraethyllead": ("CC[Pb](CC)(CC)CC", "lead compound"),
    "tributyltin chloride": ("CCCC[Sn](Cl)(CCCC)CCCC", "organotin compound"),
}  # fmt: skip

COMMON_DRUGS = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "paracetamol": "CC(=O)Nc1ccc(O)cc1",
    "ibuprofen": "CC(C)Cc1ccc(C(C)C(=O)O)cc1",
    "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
    "metformin": "CN(C)C(=N)NC(=N)N",
    "atorvastatin": "CC(C)c1c(C(=O)Nc2ccccc2)c(-c2ccccc2)c(-c2ccc(F)cc2)n1CCC(O)CC(O)CC(=O)O",
    "omeprazole": "COc1ccc2[nH]c(S(=O)Cc3ncc(C)c(OC)c3C)nc2c1",
    "sertraline": "CNC1CCC(c2ccc(Cl)c(Cl)c2)c2ccccc21",
    "ciprofloxacin": "O=C(O)c1cn(C2CC2)c2cc(N3CCNCC3)c(F)cc2c1=O",
    "diazepam": "CN1C(=O)CN=C(c2ccccc2)c2cc(Cl)ccc21",
    "losartan": "CCCCc1nc(Cl)c(CO)n1Cc1ccc(-c2ccccc2-c2nn[nH]n2)cc1",
    "sildenafil": "CCCc1nn(C)c2c(=O)[nH]c(-c3cc(S(=O)(=O)N4CCN(C)CC4)ccc3OCC)nc12",
    "tenofovir": "CC(Cn1cnc2c(N)ncnc21)OCP(=O)(O)O",
    "sofosbuvir": "CC(C)OC(=O)C(C)NP(=O)(OCC1OC(n2ccc(=O)[nH]c2=O)C(C)(F)C1O)Oc1ccccc1",
    "haloperidol": "O=C(CCCN1CCC(O)(c2ccc(Cl)cc2)CC1)c1ccc(F)cc1",
    "metoclopramide": "CCN(CC)CCNC(=O)c1cc(Cl)c(N)cc1OC",
    "chlorpromazine": "CN(C)CCCN1c2ccccc2Sc2ccc(Cl)cc21",
}


@pytest.mark.parametrize("name", sorted(TEXTBOOK))
def test_each_listed_class_fires_on_its_textbook_member(name):
    smiles, expected = TEXTBOOK[name]
    found = dualuse_alerts(Chem.MolFromSmiles(smiles))
    assert expected in found, (name, found)
    assert found == sorted(set(found))  # sorted, no duplicates


def test_common_drugs_raise_no_alert():
    hits = {k: dualuse_alerts(Chem.MolFromSmiles(s)) for k, s in COMMON_DRUGS.items()}
    assert {k: v for k, v in hits.items() if v} == {}


def test_medicines_of_a_listed_class_are_flagged_as_that_class():
    # the screen is about structure, not intent: a mustard drug is a mustard
    chlorambucil = Chem.MolFromSmiles("OC(=O)CCCc1ccc(N(CCCl)CCCl)cc1")
    assert "nitrogen mustard (bis(2-haloethyl)amine)" in dualuse_alerts(chlorambucil)


def test_every_pattern_compiles_and_cites_a_public_source():
    assert all(Chem.MolFromSmarts(a.smarts) is not None for a in ALERTS)
    assert all(a.reference.strip() for a in ALERTS)
    refs = references()
    assert set(refs) == set(class_names()) and all(refs.values())
    # every RDKit entry named exists in this RDKit
    _, found = _catalog()
    assert {d for _, d, _ in CATALOG_ENTRIES} == set(found)


def test_column_and_counts_over_a_list_with_an_invalid_smiles():
    smiles = ["CCO", "ClCCSCCCl", "not a smiles", None, "O=C(Cl)Cl", "ClCCSCCCl"]
    column = dualuse_column(smiles)
    assert column[0] == "" and column[2] is None and column[3] is None
    assert "sulfur mustard (2-haloethyl sulfide)" in column[1].split(";")
    counts = count_dualuse(smiles)
    assert counts.screened == 4 and counts.flagged == 3
    assert counts.by_class["sulfur mustard (2-haloethyl sulfide)"] == 2
    assert counts.by_class["carbonyl dihalide (phosgene class)"] == 1
    assert dualuse_alerts(None) == []


def test_the_evaluation_report_counts_dual_use_molecules():
    from medgen.chem.evaluation import evaluate_smiles

    metrics = evaluate_smiles(["CCO", "ClCCSCCCl", "C[Hg]C", "xx", "c1ccccc1"], k=[2])
    assert metrics["dualuse_alerts"] == 2.0
    assert "dualuse_alerts" not in evaluate_smiles(["CCO", "CCN"], k=[2], dualuse=False)


def test_screen_adds_the_column_when_asked_and_scores_salts_whole(tmp_path):
    from medgen.chem.screen import screen_file

    source = tmp_path / "lib.csv"
    pd.DataFrame({"smiles": ["CCO", "CC(=O)[O-].[Tl+]", "ClCCSCCCl"], "id": ["a", "b", "c"]}
                 ).to_csv(source, index=False)  # fmt: skip
    common = dict(n_jobs=1, progress=False, groups=["identity"])
    plain = screen_file(source, tmp_path / "plain.csv", **common)
    assert plain.written == 3
    assert COLUMN not in pd.read_csv(tmp_path / "plain.csv").columns  # a user's file: off
    screen_file(source, tmp_path / "flagged.csv", dualuse=True, **common)
    table = pd.read_csv(tmp_path / "flagged.csv", keep_default_na=False)
    assert table[COLUMN].tolist()[0] == ""
    assert table[COLUMN].tolist()[1] == "thallium compound"  # the counterion counts
    assert "sulfur mustard (2-haloethyl sulfide)" in table[COLUMN].tolist()[2]
