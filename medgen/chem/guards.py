"""What :func:`medgen.chem.screen.screen_file` refuses: bad arguments (a :class:`UserError` naming
the argument, before any work) and rows it will not score (a reject reason each).

Library callers bypass the CLI's config checks, so the arguments are checked here again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pandas as pd

from medgen.errors import ConfigError

#: default ``max_smiles_length``: drug-like SMILES have < 200 characters, large peptides and
#: macrocycles a few hundred; scoring time per row stays about a second below this
MAX_SMILES_LENGTH = 1000

# characters that never belong in a SMILES; RDKit reads "CC\x00O" as "CC" (the text ends at NUL)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# RDKit reads what follows inner whitespace as the molecule's name ("C C" is methane), except a
# CXSMILES extension "|...|"
_INNER_SPACE = re.compile(r"\s+(?![\s|])")


def names(key: str, value: Any) -> list[str]:
    """``value`` as a list of names: one bare string is one name (not its characters)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, value, "a list of names (strings)")
    return list(value)


def _whole(key: str, value: Any, low: int, none: str | None) -> None:
    allowed = f"a whole number >= {low}" + (f", or None ({none})" if none else "")
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(key, value, allowed)


def check_args(
    *,
    dedup: Any,
    descending: Any,
    progress: Any,
    top_k: Any,
    limit: Any,
    chunk_size: Any,
    n_jobs: Any,
    max_smiles_length: Any,
    sort_by: Any,
    smiles_column: Any,
    groups: list[str] | None,
) -> None:
    """Raise :class:`ConfigError` for the first argument of the wrong type or range."""
    from medgen.chem.properties import GROUPS

    for key, value in (("dedup", dedup), ("descending", descending), ("progress", progress)):
        if not isinstance(value, bool):
            raise ConfigError(key, value, "True or False")
    _whole("top_k", top_k, 1, "keep every row")
    _whole("limit", limit, 0, "read every row")
    _whole("chunk_size", chunk_size, 1, None)
    _whole("n_jobs", n_jobs, 1, "all cores")
    _whole("max_smiles_length", max_smiles_length, 1, "no limit")
    for key, value in (("sort_by", sort_by), ("smiles_column", smiles_column)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(key, value, "a column name, or None")
    unknown = [g for g in groups or [] if g not in GROUPS]
    if unknown:
        raise ConfigError("groups", groups, f"property group names from {list(GROUPS)}")


def precheck(frame: pd.DataFrame, read_error: str, max_length: int | None) -> pd.Series:
    """Why each row of a read chunk is not scored ("" for rows to score): its read error, an
    over-long SMILES, or a control character in it."""
    reasons = frame[read_error].tolist()
    for i, smiles in enumerate(frame["smiles"].tolist()):
        if reasons[i] or not isinstance(smiles, str):
            continue
        if max_length is not None and len(smiles) > max_length:
            reasons[i] = f"SMILES longer than {max_length} characters ({len(smiles):,})"
        elif match := _CONTROL.search(smiles):
            code, where = f"U+{ord(match.group()):04X}", match.start() + 1
            reasons[i] = f"SMILES contains the control character {code} at position {where}"
    return pd.Series(reasons, index=frame.index, dtype=object)


def misread(smiles: str | None) -> str:
    """Why RDKit's reading of a valid ``smiles`` is not the whole text ("" when it is)."""
    if not isinstance(smiles, str):
        return ""
    text = smiles.strip()
    match = _INNER_SPACE.search(text)
    if match is None:
        return ""
    return (
        f"whitespace in the SMILES at position {match.start() + 1}: RDKit would read only "
        f"{text[: match.start()]!r}"
    )
