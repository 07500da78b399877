"""One MOSES table row, mean (sd) over seeds, from ``medgen evaluate`` result files.

    python experiments/moses_graph_vae/table.py "my model" run_s0.json run_s1.json run_s2.json

Columns as in this study's README (the MOSES paper's order); the sd (over seeds, ``ddof=1``) is
printed beside FCD/Test, FCD/TestSF and Scaf/TestSF, the columns that move from seed to seed.
Per-seed FCD values and the property distances follow the row.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

COLUMNS = [
    ("valid", 3), ("unique@10000", 4), ("Novelty", 3), ("FCD/Test", 2), ("SNN/Test", 3),
    ("Frag/Test", 3), ("Scaf/Test", 3), ("FCD/TestSF", 2), ("SNN/TestSF", 3),
    ("Frag/TestSF", 3), ("Scaf/TestSF", 3), ("Filters", 3), ("IntDiv", 3), ("IntDiv2", 3),
]  # fmt: skip
WITH_SD = {"FCD/Test", "FCD/TestSF", "Scaf/TestSF", "Scaf/Test"}
EXTRA = ["logP", "SA", "QED", "weight", "guacamol/KL_score", "guacamol/FCD_score"]


def read_metrics(path: Path) -> dict[str, float]:
    record = json.loads(path.read_text(encoding="utf-8"))
    if "metrics" not in record:
        raise SystemExit(f"{path}: no 'metrics' (not a medgen evaluate result)")
    return record["metrics"]


def cell(values: list[float], digits: int, with_sd: bool) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    text = f"{statistics.fmean(values):.{digits}f}"
    if with_sd and len(values) > 1:
        text += f" ({statistics.stdev(values):.{digits}f})"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", help="the row's model name")
    parser.add_argument("results", nargs="+", type=Path, help="medgen evaluate JSON files")
    args = parser.parse_args()
    runs = [read_metrics(p) for p in args.results]
    cells = [cell([r.get(k) for r in runs], d, k in WITH_SD) for k, d in COLUMNS]
    print("| model | " + " | ".join(k for k, _ in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    print(f"| {args.name} | " + " | ".join(cells) + " |")
    for key in ("FCD/Test", "FCD/TestSF"):
        print(f"per seed {key}: " + ", ".join(f"{r[key]:.3f}" for r in runs))
    print(", ".join(f"{k} {cell([r.get(k) for r in runs], 3, False)}" for k in EXTRA))


if __name__ == "__main__":
    main()
