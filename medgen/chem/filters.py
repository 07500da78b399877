"""Screening filters: named rule sets and property ranges such as ``qed>=0.5`` or ``sa<=4``.

Each filter turns a scored chunk (:func:`medgen.chem.properties.score` columns) into a boolean
pass mask; invalid molecules fail every filter.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd

from medgen.errors import UserError

#: rule name -> (property group it needs, pass test on a scored frame)
RULES: dict[str, tuple[str, Callable[[pd.DataFrame], pd.Series]]] = {
    # Lipinski's rule of five tolerates one violation (Lipinski et al. 1997)
    "lipinski": ("rules", lambda f: f["lipinski_violations"].fillna(99) <= 1),
    "veber": ("rules", lambda f: f["veber"].fillna(False).astype(bool)),
    "pains": ("alerts", lambda f: f["pains"].fillna("x") == ""),
    "brenk": ("alerts", lambda f: f["brenk"].fillna("x") == ""),
    "nih": ("alerts", lambda f: f["nih"].fillna("x") == ""),
    "moses": ("moses", lambda f: f["moses_filters"].fillna(False).astype(bool)),
}

#: short names accepted in range filters -> score() column
ALIASES: dict[str, str] = {
    "logp": "clogp",
    "sa_score": "sa",
    "weight": "mw",
    "molwt": "mw",
    "rotb": "rotatable_bonds",
    "fsp3": "fraction_csp3",
    "charge": "formal_charge",
}

#: score() column -> property group that computes it
COLUMN_GROUP: dict[str, str] = {}

_OPS: dict[str, Callable] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_RANGE = re.compile(
    r"^\s*([A-Za-z_][\w]*)\s*(>=|<=|==|!=|>|<)\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?)\s*$"
)


@dataclass(frozen=True)
class Filter:
    """One named test; ``name`` is what the summary and the rejects file report."""

    name: str
    group: str | None
    test: Callable[[pd.DataFrame], pd.Series]

    def mask(self, frame: pd.DataFrame) -> pd.Series:
        """Boolean pass mask (False for invalid rows and missing values)."""
        passed = self.test(frame).fillna(False).astype(bool)
        return passed & frame["valid"].astype(bool)


def _column_groups() -> dict[str, str]:
    if not COLUMN_GROUP:
        from medgen.chem.properties import GROUPS

        COLUMN_GROUP.update({c: g for g, cols in GROUPS.items() for c in cols})
    return COLUMN_GROUP


def rule_filter(name: str) -> Filter:
    """The :data:`RULES` filter ``name`` (case-insensitive)."""
    key = str(name).strip().lower()
    if key not in RULES:
        raise UserError(f"unknown rule {name!r}; choose from {sorted(RULES)}")
    group, test = RULES[key]
    return Filter(key, group, test)


def range_filter(expression: str, extra_columns: Iterable[str] = ()) -> Filter:
    """A filter from ``"<column> <op> <number>"`` (ops ``>= <= > < == !=``), e.g. ``"qed>=0.5"``.

    ``column`` is a :func:`~medgen.chem.properties.score` column, an alias from :data:`ALIASES`,
    or one of ``extra_columns`` (columns carried from the input file, compared as numbers).
    """
    match = _RANGE.match(str(expression))
    if not match:
        raise UserError(
            f"range filter {expression!r} is not '<property> <op> <number>' (e.g. 'qed>=0.5')"
        )
    column, op, value = match.groups()
    column = ALIASES.get(column.lower(), column)
    groups = _column_groups()
    if column not in groups and column not in set(extra_columns):
        raise UserError(
            f"range filter {expression!r}: unknown property {column!r}; "
            f"choose from {sorted(groups)} or aliases {sorted(ALIASES)}"
        )
    number, compare = float(value), _OPS[op]

    def test(frame: pd.DataFrame) -> pd.Series:
        return compare(pd.to_numeric(frame[column], errors="coerce"), number)

    return Filter(expression.replace(" ", ""), groups.get(column), test)


def build_filters(
    rules: Iterable[str] = (), ranges: Iterable[str] = (), extra_columns: Iterable[str] = ()
) -> list[Filter]:
    """Rule filters then range filters, validated up front (bad names raise ``ValueError``)."""
    extra = list(extra_columns)
    return [rule_filter(r) for r in rules or ()] + [range_filter(r, extra) for r in ranges or ()]
