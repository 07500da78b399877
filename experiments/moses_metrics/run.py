"""MOSES metrics of a random sample of MOSES train (or test) against MOSES's precomputed Test and
TestSF statistics: the known answer behind medgen's metrics (compare with the "Train" row).

    python experiments/moses_metrics/run.py --source train --n 10000 --seed 0

Needs `medgen data moses` first. Appends one JSON line per run to results.jsonl beside this file and
prints a markdown row.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd

from medgen.chem.evaluation import evaluate_smiles
from medgen.chem.reference import load_moses_stats
from medgen.datasets import moses_path
from medgen.utils.logging import configure_logging

COLUMNS = ["valid", "unique@1000", "unique@10000", "FCD/Test", "SNN/Test", "Frag/Test", "Scaf/Test",
           "FCD/TestSF", "SNN/TestSF", "Frag/TestSF", "Scaf/TestSF", "IntDiv", "IntDiv2", "Filters",
           "Novelty"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["train", "test"], default="train")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    configure_logging()
    train = pd.read_csv(moses_path("train", args.data_dir))["SMILES"]
    pool = (
        train
        if args.source == "train"
        else pd.read_csv(moses_path("test", args.data_dir))["SMILES"]
    )
    sample = pool.sample(args.n, random_state=args.seed).tolist()
    references = {
        "Test": load_moses_stats(moses_path("test_stats", args.data_dir), "Test"),
        "TestSF": load_moses_stats(moses_path("test_scaffolds_stats", args.data_dir), "TestSF"),
    }
    t0 = time.perf_counter()
    metrics = evaluate_smiles(sample, references=references, train=set(train), n_jobs=args.n_jobs)
    seconds = time.perf_counter() - t0
    record = {"source": args.source, "n": args.n, "seed": args.seed, "seconds": round(seconds, 1)}
    record["metrics"] = metrics
    with open(Path(__file__).with_name("results.jsonl"), "a") as fh:
        fh.write(json.dumps(record) + "\n")
    cells = " | ".join(f"{metrics.get(c, float('nan')):.3f}" for c in COLUMNS)
    print(f"| {args.source} sample, n={args.n:,} | {cells} | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
