"""Per-molecule chemistry: descriptors, QED, SA score, rule sets, structural alerts, scaffolds.

:func:`score` turns SMILES into one table row each (input order kept, invalid inputs included with
the reason). It runs over a process pool in chunks; every row depends on its input only, so the
output is the same for any ``n_jobs`` and ``chunk_size``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import QED, Crippen, Descriptors, rdMolDescriptors
from rdkit.Chem.Scaffolds import MurckoScaffold

from medgen.chem.alerts import ALERT_CATALOGS, alerts, moses_filters_pass
from medgen.chem.mol import parse_smiles_with_reason
from medgen.chem.patterns import pattern_words
from medgen.errors import UserError

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    import pandas as pd

#: property groups :func:`score` can compute, each adding the columns listed
GROUPS: dict[str, tuple[str, ...]] = {
    "identity": ("canonical_smiles", "inchikey"),
    "descriptors": (
        "mw",
        "clogp",
        "tpsa",
        "hbd",
        "hba",
        "rotatable_bonds",
        "rings",
        "aromatic_rings",
        "heavy_atoms",
        "fraction_csp3",
        "formal_charge",
    ),  # fmt: skip
    "qed": ("qed",),
    "sa": ("sa",),
    "rules": ("lipinski_violations", "veber"),
    "scaffold": ("scaffold",),
    "alerts": ALERT_CATALOGS,
    "moses": ("moses_filters",),
    # dual-use alerts (medgen.chem.dualuse), on the whole input (a salt's metal counts)
    "dualuse": ("dualuse_alerts",),
}
#: groups ``medgen screen`` computes only when asked (``dualuse=true``, or a marked input)
OPT_IN_GROUPS: tuple[str, ...] = ("dualuse",)
#: :func:`score` runs inputs of at most this many molecules in-process (no pool start-up)
IN_PROCESS = 100
#: columns every table has, whatever the groups
BASE_COLUMNS: tuple[str, ...] = ("input", "valid", "error", "fragment_stripped")
_INT_COLUMNS = frozenset(
    {"hbd", "hba", "rotatable_bonds", "rings", "aromatic_rings", "heavy_atoms", "formal_charge"}
    | {"lipinski_violations"}
)
_FLOAT_COLUMNS = frozenset({"mw", "clogp", "tpsa", "fraction_csp3", "qed", "sa"})
_BOOL_NA_COLUMNS = frozenset({"veber", "moses_filters"})


def qed(mol: Chem.Mol, *, logp: float | None = None, words: np.ndarray | None = None) -> float:
    """Quantitative estimate of drug-likeness in [0, 1] (Bickerton et al. 2012; RDKit weights).

    RDKit's ``QED.qed``, the same value: its eight properties are computed as RDKit's
    ``QED.properties`` computes them, except that its 116 structural alerts are screened by
    pattern fingerprints (:mod:`medgen.chem.patterns`) before the substructure searches, and
    ``logp`` (``Crippen.MolLogP(mol)``) and ``words`` (``pattern_words(mol)``) are reused when
    the caller has them. Twice as fast as ``QED.qed``.
    """
    if mol.GetNumAtoms() != mol.GetNumHeavyAtoms():  # explicit hydrogens: RDKit removes them
        mol, logp, words = Chem.RemoveHs(mol), None, None
    props = QED.QEDproperties(
        MW=rdMolDescriptors._CalcMolWt(mol),
        ALOGP=Crippen.MolLogP(mol) if logp is None else logp,  # type: ignore[attr-defined]
        HBA=sum(
            len(mol.GetSubstructMatches(pattern))
            for pattern in QED.Acceptors
            if mol.HasSubstructMatch(pattern)
        ),
        HBD=rdMolDescriptors.CalcNumHBD(mol),
        PSA=rdMolDescriptors.CalcTPSA(mol),
        ROTB=rdMolDescriptors.CalcNumRotatableBonds(
            mol, rdMolDescriptors.NumRotatableBondsOptions.Strict
        ),
        AROM=len(Chem.GetSSSR(Chem.DeleteSubstructs(Chem.Mol(mol), QED.AliphaticRings))),
        ALERTS=len(_qed_alerts().matching(mol, words)),
    )
    return float(QED.qed(mol, qedProperties=props))


@cache
def _qed_alerts():
    from medgen.chem.patterns import PatternScreen

    return PatternScreen(QED.StructuralAlerts)


def logp(mol: Chem.Mol) -> float:
    """Wildman–Crippen cLogP (octanol/water, log10 units)."""
    # rdkit-stubs omit the descriptors RDKit builds at import time (MolLogP, MolWt)
    return float(Crippen.MolLogP(mol))  # type: ignore[attr-defined]


@cache
def _sascorer():
    from rdkit.Contrib.SA_Score import sascorer  # RDKit Contrib; reads its fragment table lazily

    return sascorer


def sa_score(mol: Chem.Mol) -> float:
    """Synthetic accessibility score in [1 (easy), 10 (hard)] (Ertl & Schuffenhauer 2009)."""
    return float(_sascorer().calculateScore(mol))


def murcko_scaffold(mol: Chem.Mol) -> str:
    """Canonical SMILES of the Bemis–Murcko scaffold ("" for acyclic molecules)."""
    return Chem.MolToSmiles(MurckoScaffold.GetScaffoldForMol(mol))


@cache
def _fragment_chooser():
    from rdkit.Chem.MolStandardize import rdMolStandardize

    return rdMolStandardize.LargestFragmentChooser(preferOrganic=True)


def largest_organic_fragment(mol: Chem.Mol) -> tuple[Chem.Mol, bool]:
    """``(fragment, stripped)``: the largest organic fragment of a multi-fragment molecule (salts,
    solvates) and True, or ``mol`` itself and False when it is one fragment."""
    if len(Chem.GetMolFrags(mol)) < 2:
        return mol, False
    return _fragment_chooser().choose(mol), True


def columns_for(groups: Iterable[str]) -> list[str]:
    """Output columns for ``groups`` (in the canonical order of :data:`GROUPS`)."""
    chosen = set(groups)
    unknown = chosen - GROUPS.keys()
    if unknown:
        raise UserError(f"unknown property groups {sorted(unknown)}; choose from {list(GROUPS)}")
    return [*BASE_COLUMNS, *(c for g, cols in GROUPS.items() if g in chosen for c in cols)]


def score_molecule(mol: Chem.Mol, groups: Iterable[str] = tuple(GROUPS)) -> dict[str, Any]:
    """Properties of one sanitized molecule, for the requested ``groups`` (see :data:`GROUPS`).

    Units: ``mw`` in g/mol (average masses), ``tpsa`` in Å², ``clogp`` log10 units.
    ``lipinski_violations`` counts MW > 500, cLogP > 5, HBD > 5, HBA > 10 (Lipinski 1997);
    ``veber`` is rotatable bonds <= 10 and TPSA <= 140 Å² (Veber 2002). Alert columns hold the
    matched alert names joined by ``";"`` ("" when none); ``dualuse_alerts`` the dual-use class
    names (:mod:`medgen.chem.dualuse`) the same way.
    """
    groups = set(groups)
    row: dict[str, Any] = {}
    if "identity" in groups:
        row["canonical_smiles"] = Chem.MolToSmiles(mol)
        with rdBase.BlockLogs():  # InChI warns about stereo and charges on stderr
            row["inchikey"] = Chem.MolToInchiKey(mol) or None
    need_desc = groups & {"descriptors", "rules"}
    if need_desc:
        # rdkit-stubs omit the descriptors RDKit builds at import time (MolWt, MolLogP)
        mw, clogp = Descriptors.MolWt(mol), Crippen.MolLogP(mol)  # type: ignore[attr-defined]
        tpsa = rdMolDescriptors.CalcTPSA(mol)
        hbd, hba = rdMolDescriptors.CalcNumHBD(mol), rdMolDescriptors.CalcNumHBA(mol)
        rotb = rdMolDescriptors.CalcNumRotatableBonds(mol)
    if "descriptors" in groups:
        row.update(
            mw=mw,
            clogp=clogp,
            tpsa=tpsa,
            hbd=hbd,
            hba=hba,
            rotatable_bonds=rotb,
            rings=rdMolDescriptors.CalcNumRings(mol),
            aromatic_rings=rdMolDescriptors.CalcNumAromaticRings(mol),
            heavy_atoms=mol.GetNumHeavyAtoms(),
            fraction_csp3=rdMolDescriptors.CalcFractionCSP3(mol),
            formal_charge=Chem.GetFormalCharge(mol),
        )
    # one pattern fingerprint screens both QED's and the dual-use alerts
    words = pattern_words(mol) if {"qed", "dualuse"} <= groups else None
    if "qed" in groups:
        row["qed"] = qed(mol, logp=clogp if need_desc else None, words=words)
    if "sa" in groups:
        row["sa"] = sa_score(mol)
    if "rules" in groups:
        row["lipinski_violations"] = (mw > 500) + (clogp > 5) + (hbd > 5) + (hba > 10)
        row["veber"] = rotb <= 10 and tpsa <= 140
    if "scaffold" in groups:
        row["scaffold"] = murcko_scaffold(mol)
    if "alerts" in groups:
        for catalog in ALERT_CATALOGS:
            row[catalog] = ";".join(alerts(mol, catalog))
    if "moses" in groups:
        row["moses_filters"] = moses_filters_pass(mol)
    if "dualuse" in groups:
        from medgen.chem.dualuse import dualuse_alerts

        row["dualuse_alerts"] = ";".join(dualuse_alerts(mol, words))
    return row


def score_rows(smiles: Sequence[str | None], groups: Sequence[str]) -> dict[str, list[Any]]:
    """Column lists for ``smiles`` (the work of one chunk; runs in worker processes)."""
    columns = columns_for(groups)
    out: dict[str, list[Any]] = {c: [] for c in columns}
    for text in smiles:
        mol, error = parse_smiles_with_reason(text)
        row: dict[str, Any] = {"input": text, "valid": mol is not None, "error": error}
        row["fragment_stripped"] = False
        if mol is not None:
            try:
                whole = mol
                mol, row["fragment_stripped"] = largest_organic_fragment(mol)
                row.update(score_molecule(mol, groups))
                if "dualuse" in groups and row["fragment_stripped"]:  # the counterions count too
                    row.update(score_molecule(whole, ["dualuse"]))
            except Exception as err:  # a descriptor failing on an odd molecule must not stop a run
                row = {"input": text, "valid": False, "fragment_stripped": False}
                row["error"] = f"scoring failed: {type(err).__name__}: {err}"
        for c in columns:
            out[c].append(row.get(c))
    return out


def to_frame(columns: dict[str, list[Any]]) -> pd.DataFrame:
    """A DataFrame with stable dtypes (nullable ints and booleans, so invalid rows stay NA)."""
    import pandas as pd  # lazy: worker processes only need RDKit

    frame = pd.DataFrame(columns)
    for name in frame.columns:
        if name in _INT_COLUMNS:
            frame[name] = frame[name].astype("Int64")
        elif name in _FLOAT_COLUMNS:
            frame[name] = frame[name].astype("float64")
        elif name in _BOOL_NA_COLUMNS:
            frame[name] = frame[name].astype("boolean")
        elif name in ("valid", "fragment_stripped"):
            frame[name] = frame[name].astype(bool)
    return frame


def default_n_jobs() -> int:
    """Cores this process may use (CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def score(
    smiles: Iterable[str | None],
    *,
    n_jobs: int | None = None,
    chunk_size: int = 2000,
    groups: Sequence[str] | None = None,
    executor: ProcessPoolExecutor | None = None,
) -> pd.DataFrame:
    """Score ``smiles``: one row per input, in input order.

    Args:
        smiles: SMILES strings (None, empty and unparsable entries give ``valid=False`` rows with
            the reason in ``error``; they never raise).
        n_jobs: worker processes (None: all cores). Up to :data:`IN_PROCESS` inputs run
            in-process (a pool costs ~2 s to start). Workers are spawned, so a script calling
            this with ``n_jobs > 1`` needs the usual ``if __name__ == "__main__":`` guard.
        chunk_size: at most this many molecules per task sent to a worker (fewer when that
            gives each worker under 4 tasks, so that no worker idles while the last one ends).
        groups: property groups (keys of :data:`GROUPS`); None computes all.
        executor: a running pool (:func:`medgen.chem.parallel.worker_pool`) to reuse across calls.

    Returns:
        DataFrame with :data:`BASE_COLUMNS` then the group columns. Multi-fragment inputs are
        scored on their largest organic fragment (``fragment_stripped=True``); ``canonical_smiles``
        is then that fragment's.
    """
    from medgen.chem.parallel import map_chunks

    groups = tuple(GROUPS) if groups is None else tuple(groups)
    columns_for(groups)  # validate before any work
    items = list(smiles)
    n_jobs = default_n_jobs() if n_jobs is None else max(1, int(n_jobs))
    if executor is None and len(items) <= IN_PROCESS:
        n_jobs = 1
    if n_jobs > 1 or executor is not None:  # balanced tasks: ~4 per worker at least
        workers = n_jobs if executor is None else getattr(executor, "_max_workers", n_jobs)
        chunk_size = max(1, min(chunk_size, -(-len(items) // (4 * workers))))
    chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
    parts = list(map_chunks(score_rows, chunks, n_jobs=n_jobs, args=(groups,), executor=executor))
    merged: dict[str, list[Any]] = {c: [] for c in columns_for(groups)}
    for part in parts:
        for c, values in part.items():
            merged[c].extend(values)
    return to_frame(merged)
