"""A dual-use screen: alerts for well-known, publicly listed classes of acutely toxic chemicals.

Each alert is a substructure pattern of a *class* of compounds as public texts define it (the
Chemical Weapons Convention's schedules, WHO and ATSDR hazard lists, the structural-alert sets
RDKit ships in its ``FilterCatalog``). A generated molecule that matches one is flagged with the
class name only: this module holds no route, precursor or quantity of anything, and reports none.

What it is for: counting, in every molecule report, how many generated molecules fall into a
listed class, so that a cohort is reviewed before it is shared. What it is not: a toxicity
predictor or a regulatory screen. It misses toxic molecules outside the listed classes and
novel scaffolds with the same effect; a match says "a person should look", not "this is a
weapon" (medicines such as cyclophosphamide, chlorambucil or fentanyl belong to listed classes
and are flagged as such). ``docs/release.md`` says the same to users.

RDKit's patterns are taken from its catalogs by name (:data:`CATALOG_ENTRIES`); the others are
written here (:data:`ALERTS`), each with its public reference. Patterns are compiled once per
process, lazily.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from rdkit import Chem

if TYPE_CHECKING:
    import numpy as np
    from rdkit.Chem.FilterCatalog import FilterCatalog

    from medgen.chem.patterns import PatternScreen

#: the column :func:`dualuse_column` fills (class names joined by ``";"``, ``""`` when none)
COLUMN = "dualuse_alerts"

CWC = "Chemical Weapons Convention, Annex on Chemicals"
CWC_1 = f"{CWC}, Schedule 1"
CWC_3 = f"{CWC}, Schedule 3"
WHO_10 = "WHO, Ten chemicals of major public health concern (2020)"


@dataclass(frozen=True)
class Alert:
    """One structural class: ``name`` (what reports show), its SMARTS and a public reference."""

    name: str
    smarts: str
    reference: str


#: the alerts written for medgen (class definitions as the references give them)
ALERTS: tuple[Alert, ...] = (
    # organophosphorus esters with a leaving group on P: the acetylcholinesterase-inhibitor
    # classes of the nerve agents (phosphonofluoridates and the fluoridate analogues,
    # phosphoramidocyanidates, S-2-aminoethyl phosphonothiolates)
    Alert("organophosphorus P-F ester (nerve-agent class)", "[PX4](=[O,S])F",
          f"{CWC_1}, A.1 (alkyl phosphonofluoridates)"),
    Alert("organophosphorus P-CN ester (nerve-agent class)", "[PX4](=[O,S])C#N",
          f"{CWC_1}, A.2 (phosphoramidocyanidates)"),
    Alert("organophosphorus P-S-aminoethyl ester (nerve-agent class)",
          "[PX4](=O)[SX2][CH2][CH2][NX3,NX4+]",
          f"{CWC_1}, A.3 (S-2-dialkylaminoethyl phosphonothiolates); Schedule 2, A.1 (amiton)"),
    Alert("nitrophenyl organophosphate (AChE-inhibitor pesticide class)",
          "[PX4](=[O,S])([OX2][#6])([OX2][#6])[OX2]c1ccc([N+](=O)[O-])cc1",
          "WHO Recommended Classification of Pesticides by Hazard (2019), class Ia (parathion)"),
    # vesicants
    Alert("sulfur mustard (2-haloethyl sulfide)", "[SX2][CH2][CH2][Cl,Br,I]",
          f"{CWC_1}, A.4 (sulfur mustards)"),
    Alert("nitrogen mustard (bis(2-haloethyl)amine)",
          "[Cl,Br,I][CH2][CH2][NX3,NX4+][CH2][CH2][Cl,Br,I]", f"{CWC_1}, A.6 (nitrogen mustards)"),
    Alert("2-chlorovinyl arsine (Lewisite class)", "[As][CH]=[CH][Cl,Br]",
          f"{CWC_1}, A.5 (Lewisites)"),
    # choking and blood agents
    Alert("carbonyl dihalide (phosgene class)", "[O,S]=C([F,Cl,Br,I])[F,Cl,Br,I]",
          f"{CWC_3}, A.1 (phosgene)"),
    Alert("trichloromethyl chloroformate or carbonate (phosgene equivalent)",
          "O=C([Cl,O])OC(Cl)(Cl)Cl", f"{CWC_3}, A.1 (phosgene); ATSDR ToxFAQs: phosgene"),
    Alert("cyanogen halide", "N#C[F,Cl,Br,I]", f"{CWC_3}, A.2 (cyanogen chloride)"),
    Alert("hydrogen cyanide or cyanide salt", "[$([CH1]#N),$([C-]#[N+0])]",
          f"{CWC_3}, A.3 (hydrogen cyanide)"),
    Alert("trihalonitromethane (chloropicrin class)",
          "[Cl,Br]C([Cl,Br])([Cl,Br])[N+](=O)[O-]", f"{CWC_3}, A.4 (chloropicrin)"),
    # metabolic poisons
    Alert("fluoroacetate ester, amide or salt", "F[CH2]C(=O)[O,N,S,F,Cl]",
          "Proudfoot et al., Sodium fluoroacetate poisoning, Toxicol Rev 25 (2006) 213-219"),
    Alert("polychlorinated dibenzo-p-dioxin", "Clc1ccc2Oc3ccccc3Oc2c1",
          f"{WHO_10}: dioxins and dioxin-like substances"),
    Alert("4-anilidopiperidine (fentanyl class)", "O=C[NX3](c1ccccc1)[CX4]1CC[NX3]CC1",
          "US DEA class-wide scheduling of fentanyl-related substances, 83 FR 5188 (2018)"),
    # toxic elements (any compound of them)
    Alert("arsenic compound", "[As]", f"{WHO_10}: arsenic"),
    Alert("mercury compound", "[Hg]", f"{WHO_10}: mercury"),
    Alert("thallium compound", "[Tl]", "ATSDR Toxicological Profile for Thallium (1992)"),
    Alert("lead compound", "[Pb]", f"{WHO_10}: lead"),
    Alert("cadmium compound", "[Cd]", f"{WHO_10}: cadmium"),
    Alert("organotin compound", "[Sn][#6]", "ATSDR Toxicological Profile for Tin (2005)"),
)  # fmt: skip

#: RDKit FilterCatalog entries used as they are: (catalog, entry description, class name)
CATALOG_ENTRIES: tuple[tuple[str, str, str], ...] = (
    ("CHEMBL_LINT", "mustards", "2-haloethyl heteroatom (mustard-like)"),
    ("CHEMBL_Inpharmatica", "Filter84_nitrogen_mustard", "2-haloethyl heteroatom (mustard-like)"),
    ("CHEMBL_SureChEMBL", "Phosphorus_Halide", "phosphorus halide"),
    ("CHEMBL_SureChEMBL", "Cyanophosphonate", "organophosphorus P-CN ester (nerve-agent class)"),
    ("NIH", "cyano_phosphonate", "organophosphorus P-CN ester (nerve-agent class)"),
    ("NIH", "monofluoroacetate", "fluoroacetate ester, amide or salt"),
    ("BRENK", "heavy_metal", "heavy-metal compound"),
)


def class_names() -> list[str]:
    """Every class name an alert can report, sorted."""
    return sorted({a.name for a in ALERTS} | {c for _, _, c in CATALOG_ENTRIES})


def references() -> dict[str, list[str]]:
    """``class name -> public references`` (RDKit entries cite their catalog)."""
    found: dict[str, list[str]] = {}
    for alert in ALERTS:
        found.setdefault(alert.name, []).append(alert.reference)
    for catalog, description, name in CATALOG_ENTRIES:
        found.setdefault(name, []).append(f"RDKit FilterCatalog {catalog}: {description}")
    return found


@cache
def _patterns() -> tuple[tuple[str, ...], PatternScreen]:
    """Alert names and their queries as one screen (compiled once per process)."""
    from medgen.chem.patterns import PatternScreen

    queries = []
    for alert in ALERTS:
        query = Chem.MolFromSmarts(alert.smarts)
        if query is None:  # a bug in this file, not the user's
            raise ValueError(f"dual-use alert {alert.name!r}: bad SMARTS {alert.smarts!r}")
        queries.append(query)
    return tuple(a.name for a in ALERTS), PatternScreen(queries)


@cache
def _catalog() -> tuple[FilterCatalog, dict[str, str]]:
    """A FilterCatalog of the :data:`CATALOG_ENTRIES` and ``description -> class name``."""
    from rdkit.Chem.FilterCatalog import FilterCatalog, FilterCatalogParams

    chosen = FilterCatalog()
    names: dict[str, str] = {}
    for catalog, description, name in CATALOG_ENTRIES:
        params = FilterCatalogParams()
        params.AddCatalog(getattr(FilterCatalogParams.FilterCatalogs, catalog))
        source = FilterCatalog(params)
        entries = [source.GetEntryWithIdx(i) for i in range(source.GetNumEntries())]
        matching = [e for e in entries if e.GetDescription() == description]
        if not matching:  # an RDKit release that renamed it: the medgen patterns still run
            continue
        for entry in matching:
            chosen.AddEntry(entry)
        names[description] = name
    return chosen, names


def dualuse_alerts(mol: Chem.Mol | None, words: np.ndarray | None = None) -> list[str]:
    """Class names of the dual-use alerts ``mol`` matches, sorted, without duplicates.

    ``[]`` for a molecule that matches none and for None (an invalid SMILES has no structure).
    ``words``: ``mol``'s :func:`medgen.chem.patterns.pattern_words`, when the caller has them.
    """
    if mol is None:
        return []
    names, screen = _patterns()
    # queries whose pattern-fingerprint bits are not all in the molecule's cannot match
    found = {names[i] for i in screen.matching(mol, words)}
    catalog, catalog_names = _catalog()
    found.update(catalog_names[m.GetDescription()] for m in catalog.GetMatches(mol))
    return sorted(found)


def dualuse_column(smiles: Iterable[str | None]) -> list[str | None]:
    """Per SMILES: matched class names joined by ``";"`` (``""`` for none, None when invalid)."""
    from medgen.chem.mol import parse_smiles

    return dualuse_column_of_mols(map(parse_smiles, smiles))


def dualuse_column_of_mols(mols: Iterable[Chem.Mol | None]) -> list[str | None]:
    """:func:`dualuse_column` of molecules already parsed (None: an invalid entry)."""
    return [None if mol is None else ";".join(dualuse_alerts(mol)) for mol in mols]


@dataclass(frozen=True)
class DualUseCounts:
    """How many molecules of a list matched a dual-use alert.

    Attributes:
        screened: valid molecules looked at (invalid SMILES have no structure to match).
        flagged: molecules matching at least one alert.
        by_class: ``class name -> molecules`` matching it (a molecule may count in several).
    """

    screened: int
    flagged: int
    by_class: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"screened": self.screened, "flagged": self.flagged,
                "by_class": dict(sorted(self.by_class.items()))}  # fmt: skip


def count_dualuse(smiles: Sequence[str | None] | Iterable[str | None]) -> DualUseCounts:
    """:class:`DualUseCounts` of ``smiles`` (each string parsed once; duplicates each count)."""
    return counts_from_column(dualuse_column(smiles))


def counts_from_column(column: Iterable[str | None]) -> DualUseCounts:
    """:class:`DualUseCounts` from values of a :data:`COLUMN` (None: an invalid molecule)."""
    screened, flagged, by_class = 0, 0, Counter[str]()
    for value in column:
        if value is None:
            continue
        screened += 1
        names = [n for n in str(value).split(";") if n]
        flagged += bool(names)
        by_class.update(names)
    return DualUseCounts(screened, flagged, dict(by_class))
