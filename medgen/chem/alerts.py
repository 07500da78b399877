"""Structural alerts (RDKit FilterCatalog: PAINS A/B/C, Brenk, NIH) and the MOSES filters.

Catalogs are built lazily on first use and cached per process (building PAINS + Brenk + NIH takes
a fraction of a second; worker processes build their own once).
"""

from __future__ import annotations

import csv
from functools import cache
from importlib import resources

from rdkit import Chem

from medgen.chem.patterns import PatternScreen
from medgen.errors import UserError

#: alert families reported by :func:`alerts`, each a column of :func:`medgen.chem.properties.score`
ALERT_CATALOGS: tuple[str, ...] = ("pains", "brenk", "nih")

#: atoms a molecule may contain to pass the MOSES filters
MOSES_ALLOWED_ATOMS = frozenset({"C", "N", "S", "O", "F", "Cl", "Br", "H"})


@cache
def filter_catalog(name: str):
    """The RDKit ``FilterCatalog`` for ``name`` (``pains`` = PAINS A+B+C, ``brenk``, ``nih``)."""
    from rdkit.Chem.FilterCatalog import FilterCatalog, FilterCatalogParams

    choices = {
        "pains": FilterCatalogParams.FilterCatalogs.PAINS,
        "brenk": FilterCatalogParams.FilterCatalogs.BRENK,
        "nih": FilterCatalogParams.FilterCatalogs.NIH,
    }
    if name not in choices:
        raise UserError(f"unknown alert catalog {name!r}; choose from {sorted(choices)}")
    params = FilterCatalogParams()
    params.AddCatalog(choices[name])
    return FilterCatalog(params)


def alerts(mol: Chem.Mol, catalog: str) -> list[str]:
    """Names of the ``catalog`` alerts that ``mol`` matches, sorted, without duplicates.

    PAINS names carry their family as RDKit reports them (e.g. ``"ene_five_het_A(201)"``).
    """
    matches = filter_catalog(catalog).GetMatches(mol)
    return sorted({m.GetDescription() for m in matches})


@cache
def moses_filter_patterns() -> tuple[tuple[str, Chem.Mol], ...]:
    """(name, query) for the MOSES MCF and WEHI PAINS SMARTS shipped in ``medgen/chem/data``."""
    text = resources.files("medgen.chem").joinpath("data/moses_filters.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    patterns = []
    for lineno, row in enumerate(rows, start=2):
        query = Chem.MolFromSmarts(row["smarts"])
        if query is None:
            raise ValueError(f"moses_filters.csv row {lineno}: bad SMARTS {row['smarts']!r}")
        patterns.append((row["name"], query))
    return tuple(patterns)


@cache
def moses_filter_screen() -> PatternScreen:
    """:func:`moses_filter_patterns` as one :class:`~medgen.chem.patterns.PatternScreen`."""
    return PatternScreen([query for _, query in moses_filter_patterns()])


@cache
def _charged_or_disallowed() -> Chem.Mol:
    """One atom with a formal charge, or of an element outside :data:`MOSES_ALLOWED_ATOMS`."""
    allowed = "&".join(f"!#{Chem.GetPeriodicTable().GetAtomicNumber(s)}"
                       for s in sorted(MOSES_ALLOWED_ATOMS))  # fmt: skip
    return Chem.MolFromSmarts(f"[!+0,{allowed}]")


def moses_filters_pass(mol: Chem.Mol) -> bool:
    """MOSES ``mol_passes_filters``: no ring of 8+ atoms, no charged atom, only C N S O F Cl Br H,
    and no MCF or PAINS pattern (matched on the molecule with explicit hydrogens).

    Reference: Polykovskiy et al. 2020, section "Metrics" (Filters).
    """
    if any(len(ring) >= 8 for ring in mol.GetRingInfo().AtomRings()):
        return False
    if mol.HasSubstructMatch(_charged_or_disallowed()):  # one search, not a Python atom loop
        return False
    # pattern fingerprints screen out most of the 502 queries before the substructure searches
    return not moses_filter_screen().any_match(Chem.AddHs(mol))
