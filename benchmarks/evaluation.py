"""Evaluation benchmark: ``medgen evaluate``'s MOSES table at 30,000 samples, 1 and 2 workers.

    python benchmarks/evaluation.py                      # 30,000 samples; SNN subset 1,000
    python benchmarks/evaluation.py --n 5000 --jobs 1    # a shorter run
    python benchmarks/evaluation.py --skip-full          # only the SNN and per-stage tables

The "generated" samples are the first ``--n`` MOSES test-scaffold molecules (``--source train``:
MOSES train), scored against MOSES's Test and TestSF statistics with novelty against MOSES train
and GuacaMol's KL score (``medgen data moses`` first). Four tables, each with its reference
measured in the same run:

1. SNN on a subset: the dense float32 matrix product of the first implementation (kept here
   as the reference) vs the popcount-grouped search with sparse-times-dense integer bit counts,
   and their largest difference.
2. ChemNet on five times the SNN subset: fcd-torch's forward pass (the reference) vs the
   padding-aware one that does the padding's repeated work once, and their largest difference.
3. The stages of one evaluation in one process (wall and CPU seconds).
4. The full ``evaluate_smiles`` wall time with 1 and 2 workers, each in a fresh process (pool
   start-up included), and the ratio to 1 worker.

Timings on a machine shared with other jobs vary with its load: the load average is printed with
every row, and CPU seconds (which the load barely changes) are given beside wall seconds.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("MEDGEN_DATA_DIR") or ROOT / "data")


def first(split: str, n: int) -> list[str]:
    with gzip.open(data_dir() / "moses" / f"{split}.csv.gz", "rt") as fh:
        next(fh)
        out = []
        for line in fh:
            out.append(line.strip())
            if len(out) >= n:
                break
    return out


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def inputs(kl: bool = True):
    from medgen.chem.reference import cached_kl_reference, load_moses_stats

    moses = data_dir() / "moses"
    references = {
        "Test": load_moses_stats(moses / "test_stats.npz", "Test"),
        "TestSF": load_moses_stats(moses / "test_scaffolds_stats.npz", "TestSF"),
    }
    kl_reference = None
    if kl:
        kl_reference = cached_kl_reference(
            moses / "test.csv.gz", data_dir() / "cache" / "reference"
        )
    train = set(first("train", 10**8))
    return references, kl_reference, train


def dense_snn(fps: np.ndarray, reference: np.ndarray, batch_size: int = 5000) -> np.ndarray:
    """The previous SNN: blockwise float32 matrix products of 0/1 fingerprints (torch)."""
    import torch

    gen_all = torch.from_numpy(np.ascontiguousarray(fps)).float()
    out = torch.zeros(len(gen_all), dtype=torch.float64)
    for j in range(0, len(reference), batch_size):
        ref = torch.from_numpy(np.ascontiguousarray(reference[j : j + batch_size])).float()
        ref_bits = ref.sum(1, keepdim=True)
        for i in range(0, len(gen_all), batch_size):
            gen = gen_all[i : i + batch_size].T
            both = ref @ gen
            sim = torch.nan_to_num(both / (ref_bits + gen.sum(0, keepdim=True) - both), nan=1.0)
            out[i : i + batch_size] = torch.maximum(out[i : i + batch_size], sim.max(0).values)
    return out.numpy()


def snn_table(smiles: list[str], references) -> None:
    from medgen.chem.metrics import nearest_similarities
    from medgen.chem.reference import evaluation_features, reference_index

    feats = evaluation_features(smiles, fcd=False)
    packed = feats["fps"]
    fps = np.unpackbits(packed, axis=1)
    ref = references["Test"]
    t0 = time.perf_counter()
    index = reference_index(ref)
    prep = time.perf_counter() - t0
    rows = []
    t0, c0 = time.perf_counter(), cpu_seconds()
    old = dense_snn(fps, ref.fps)
    rows.append(("dense float32 product (before)", time.perf_counter() - t0, cpu_seconds() - c0))
    t0, c0 = time.perf_counter(), cpu_seconds()
    new = nearest_similarities(packed, index)
    rows.append(("popcount-grouped, sparse (now)", time.perf_counter() - t0, cpu_seconds() - c0))
    pairs = len(smiles) * len(ref.fps)
    print(f"SNN/Test of {len(smiles):,} molecules against {len(ref.fps):,} reference fingerprints"
          f" ({len(index.bits):,} distinct; index ready in {prep:.2f} s)\n")  # fmt: skip
    print(f"| {'SNN':<32} | {'wall s':>7} | {'CPU s':>7} | {'pairs/s':>9} | {'speed-up':>8} |")
    print(f"|{'-' * 34}|{'-' * 9}|{'-' * 9}|{'-' * 11}|{'-' * 10}|")
    for name, wall, cpu in rows:
        print(f"| {name:<32} | {wall:7.2f} | {cpu:7.2f} | {pairs / wall:9.2e} | "
              f"{rows[0][1] / wall:8.1f} |")  # fmt: skip
    print(
        f"\nlargest difference per molecule: {np.abs(old - new).max():.1e}; SNN before "
        f"{old.mean():.12f}, now {new.mean():.12f}; load {os.getloadavg()[0]:.1f}\n"
    )


def chemnet_table(smiles: list[str]) -> None:
    """ChemNet activations: fcd-torch's forward pass (the reference) vs the padding-aware one,
    on the same one-hot batches of 512, the same thread."""
    import torch

    from medgen.chem.fcd import chemnet, fast_chemnet, one_hot_batch

    model, fast = chemnet(), fast_chemnet()
    batches = [one_hot_batch(smiles[i : i + 512]) for i in range(0, len(smiles), 512)]
    rows, outs = [], {}
    for name, forward in (("fcd-torch forward (reference)", model),
                          ("padding-aware forward (now)", fast)):  # fmt: skip
        t0, c0 = time.perf_counter(), cpu_seconds()
        with torch.no_grad():
            outs[name] = torch.cat([forward(x) for x in batches])
        rows.append((name, time.perf_counter() - t0, cpu_seconds() - c0))
    print(f"ChemNet on {len(smiles):,} molecules, batches of 512, 1 thread\n")
    print(f"| {'forward':<32} | {'wall s':>7} | {'CPU s':>7} | {'ms/mol':>7} | {'speed-up':>8} |")
    print(f"|{'-' * 34}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 10}|")
    for name, wall, cpu in rows:
        print(f"| {name:<32} | {wall:7.2f} | {cpu:7.2f} | {1000 * wall / len(smiles):7.2f} | "
              f"{rows[0][1] / wall:8.2f} |")  # fmt: skip
    first, second = outs.values()
    print(f"\nlargest activation difference: {(first - second).abs().max().item():.1e}; "
          f"load {os.getloadavg()[0]:.1f}\n")  # fmt: skip


def stage_table(smiles: list[str], references, kl_reference, train) -> None:
    """One evaluation's stages, in this process (1 worker)."""
    from scipy.stats import wasserstein_distance

    from medgen.chem.evaluation import _guacamol_kl
    from medgen.chem.fcd import activation_statistics, chemnet_activations, frechet_distance
    from medgen.chem.metrics import internal_diversities, nearest_similarities, novelty
    from medgen.chem.reference import PROPERTY_NAMES, evaluation_features, reference_index
    from medgen.chem.similarity import cosine_similarity_counts

    rows = []

    def stage(name, fn):
        t0, c0 = time.perf_counter(), cpu_seconds()
        out = fn()
        rows.append((name, time.perf_counter() - t0, cpu_seconds() - c0, os.getloadavg()[0]))
        return out

    feats = stage(
        "features, no ChemNet (parse once)", lambda: evaluation_features(smiles, fcd=False)
    )
    stage("ChemNet + FCD statistics", lambda: activation_statistics(
        chemnet_activations(feats["fcd_smiles"], canonical=True)
    ))  # fmt: skip
    canon = [c for c in feats["canonical"] if c is not None]
    for name, ref in references.items():
        stage(
            f"SNN/{name}", lambda ref=ref: nearest_similarities(feats["fps"], reference_index(ref))
        )
    frags = Counter(f for fr in feats["fragments"] for f in fr)
    scafs = Counter(s for s in feats["scaffolds"] if s)
    stage("Frag + Scaf (both references)", lambda: [
        (cosine_similarity_counts(r.fragments, frags), cosine_similarity_counts(r.scaffolds, scafs))
        for r in references.values()
    ])  # fmt: skip
    stage("IntDiv + IntDiv2", lambda: internal_diversities(feats["fps"]))
    first_ref = next(iter(references.values()))
    stage("property distances (W1)", lambda: [
        wasserstein_distance(first_ref.properties[p], feats[p]) for p in PROPERTY_NAMES
    ])  # fmt: skip
    stage("novelty", lambda: novelty(canon, train, canonical=True))
    workers = {"n_jobs": 1, "executor": None}
    stage("GuacaMol KL", lambda: _guacamol_kl(feats["flat"], kl_reference, size=10_000,
                                              workers=workers))  # fmt: skip
    stage(
        "FCD distance (eigh)",
        lambda: frechet_distance(
            first_ref.fcd_mu, first_ref.fcd_sigma, first_ref.fcd_mu, first_ref.fcd_sigma
        ),
    )
    print(
        f"stages of one evaluation of {len(smiles):,} molecules, 1 process "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}); the features row includes "
        "parsing, fingerprints, BRICS fragments, scaffolds, MOSES filters and properties\n"
    )
    print(f"| {'stage':<36} | {'wall s':>7} | {'CPU s':>7} | {'load':>5} |")
    print(f"|{'-' * 38}|{'-' * 9}|{'-' * 9}|{'-' * 7}|")
    for name, wall, cpu, load in rows:
        print(f"| {name:<36} | {wall:7.1f} | {cpu:7.1f} | {load:5.1f} |")
    total = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"| {'total':<36} | {total[0]:7.1f} | {total[1]:7.1f} | {'':>5} |\n")


def run_full(n: int, n_jobs: int, source: str) -> dict:
    """``evaluate_smiles`` in a fresh process (what ``medgen evaluate`` runs)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--child", str(n), str(n_jobs), source]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(n: int, n_jobs: int, source: str) -> None:
    from medgen.chem.evaluation import evaluate_smiles

    smiles = first(source, n)
    references, kl_reference, train = inputs()
    load0, t0, c0 = os.getloadavg()[0], time.perf_counter(), cpu_seconds()
    metrics = evaluate_smiles(
        smiles, references=references, train=train, kl_reference=kl_reference, n_jobs=n_jobs
    )
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    record = {"wall": wall, "cpu": cpu, "load_before": load0, "load_after": os.getloadavg()[0]}
    print(json.dumps(record | {"metrics": metrics}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30_000, help="generated molecules")
    parser.add_argument("--subset", type=int, default=1000, help="molecules of the SNN table")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="worker counts")
    parser.add_argument("--source", default="test_scaffolds", choices=["test_scaffolds", "train"])
    parser.add_argument("--skip-snn", action="store_true")
    parser.add_argument("--skip-stages", action="store_true")
    parser.add_argument("--skip-chemnet", action="store_true")
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), int(args.child[1]), args.child[2])
        return
    print(f"# evaluation benchmark: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}\n")
    if not (args.skip_snn and args.skip_stages and args.skip_chemnet):
        import torch

        torch.set_num_threads(1)
        references, kl_reference, train = inputs()
        smiles = first(args.source, args.n)
        if not args.skip_snn:
            snn_table(smiles[: args.subset], references)
        if not args.skip_chemnet:
            chemnet_table(smiles[: args.subset * 5])
        if not args.skip_stages:
            stage_table(smiles, references, kl_reference, train)
    if not args.skip_full:
        print(f"full table (every metric, GuacaMol KL and novelty included) of {args.n:,} "
              f"MOSES {args.source} molecules, a fresh process each\n")  # fmt: skip
        print(f"| {'workers':>7} | {'wall s':>7} | {'CPU s':>7} | {'ratio vs 1':>10} | "
              f"{'load before/after':>17} |")  # fmt: skip
        print(f"|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 12}|{'-' * 19}|")
        base = None
        for jobs in args.jobs:
            rec = run_full(args.n, jobs, args.source)
            base = base or rec["wall"]
            load = f"{rec['load_before']:.1f}/{rec['load_after']:.1f}"
            print(f"| {jobs:>7} | {rec['wall']:7.1f} | {rec['cpu']:7.1f} | "
                  f"{base / rec['wall']:10.2f} | {load:>17} |", flush=True)  # fmt: skip
        print("\ntarget: the full table at 30,000 samples in <= 180 s on 2 cores")


if __name__ == "__main__":
    main()
