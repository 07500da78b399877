"""Parsing SMILES with RDKit: quiet, with the reason captured, and canonical forms."""

from __future__ import annotations

import re

from rdkit import Chem, rdBase

_TIMESTAMP = re.compile(r"^\[\d\d:\d\d:\d\d\]\s*")


def parse_smiles(smiles: str | None) -> Chem.Mol | None:
    """The sanitized RDKit molecule of ``smiles``, or None (None, empty, blank or rejected input).

    RDKit's error log is blocked for the call only and restored afterwards.
    """
    if _missing(smiles):
        return None
    text = str(smiles).strip()
    if not text:
        return None
    with rdBase.BlockLogs():
        return Chem.MolFromSmiles(text)


def parse_smiles_with_reason(smiles: str | None) -> tuple[Chem.Mol | None, str]:
    """``(mol, "")`` for a valid SMILES, ``(None, reason)`` otherwise.

    The reason is RDKit's own first error message (e.g. ``"SMILES Parse Error: unclosed ring for
    input: 'C1CC'"``, ``"Explicit valence for atom # 1 C, 5, is greater than permitted"``), captured
    from its error log without printing it.
    """
    if _missing(smiles):
        return None, "missing SMILES (no value, or an SDF record RDKit could not read)"
    text = str(smiles).strip()
    if not text:
        return None, "empty SMILES"
    with rdBase.CaptureErrorLog() as capture:
        mol = Chem.MolFromSmiles(text)
    if mol is not None:
        return mol, ""
    lines = [_TIMESTAMP.sub("", line).strip() for line in capture.messages.splitlines()]
    lines = [line for line in lines if line]
    return None, (lines[0] if lines else "RDKit could not parse the SMILES")


def _missing(value: object) -> bool:
    # None, NaN and pd.NA: what pandas puts in an empty cell
    if value is None or isinstance(value, str):
        return value is None
    return str(value) in ("nan", "<NA>", "NaT")


def canonical_smiles(smiles: str | None, isomeric: bool = True) -> str | None:
    """RDKit canonical SMILES of ``smiles`` (``isomeric=False`` drops stereo), or None when it
    does not parse."""
    mol = parse_smiles(smiles)
    return Chem.MolToSmiles(mol, isomericSmiles=isomeric) if mol is not None else None


def canonical_smiles_list(smiles: list[str | None], isomeric: bool = True) -> list[str | None]:
    """:func:`canonical_smiles` of each entry (a module-level function, so that it can run over
    chunks in worker processes with :func:`medgen.chem.parallel.map_chunks`)."""
    return [canonical_smiles(s, isomeric) for s in smiles]
