"""Chemistry benchmark: ``score`` against a bare RDKit loop computing the same columns, ``score``
throughput on 1 core vs all cores, and peak memory of streaming ``screen`` on a file prefix vs a
file many times larger (memory must not grow with file size).

    python benchmarks/chem.py                 # quick: 2,000 molecules; screen 10k vs 100k rows
    python benchmarks/chem.py --full          # screen all of MOSES train (1.58 M rows)

Molecules come from MOSES train (``medgen data moses``; ``$MEDGEN_DATA_DIR`` or ./data) or, without
it, from the 200-molecule test fixture repeated. Peak memory is the largest summed RSS of the
screening process and its workers, sampled from /proc every 50 ms.
"""

from __future__ import annotations

import argparse
import gzip
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def molecules(n: int) -> list[str]:
    """``n`` SMILES from MOSES train (the first rows) or the repeated test fixture."""
    data = Path(os.environ.get("MEDGEN_DATA_DIR") or ROOT / "data") / "moses" / "train.csv.gz"
    out: list[str] = []
    if data.is_file():
        with gzip.open(data, "rt") as fh:
            next(fh)
            for line in fh:
                out.append(line.strip())
                if len(out) >= n:
                    return out
    fixture = ROOT / "tests" / "data" / "chem" / "moses_test_200.smi"
    base = [s for s in fixture.read_text().split() if s and not s.startswith("#")]
    base = [s for s in base if not s.startswith("(")]
    while len(out) < n:
        out.extend(base)
    return out[:n]


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (from /proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


#: the property groups of the comparison with a bare RDKit loop (the columns it computes)
BARE_GROUPS = ("identity", "descriptors", "qed", "sa", "rules", "scaffold", "alerts", "moses")


def bare_rdkit(smiles: list[str], screen: bool = True) -> list[tuple]:
    """The columns of ``score(groups=BARE_GROUPS)`` in a plain RDKit loop: no error capture, no
    salt stripping, no table. The MOSES filters match every SMARTS on the molecule with explicit
    H (as MOSES does), after a pattern-fingerprint screen with ``screen`` (as medgen does)."""
    import csv
    from importlib import resources

    from rdkit import Chem, DataStructs, rdBase
    from rdkit.Chem import QED, Crippen, Descriptors, rdMolDescriptors
    from rdkit.Chem.FilterCatalog import FilterCatalog, FilterCatalogParams
    from rdkit.Chem.Scaffolds import MurckoScaffold
    from rdkit.Contrib.SA_Score import sascorer

    catalogs = []
    for which in ("PAINS", "BRENK", "NIH"):
        params = FilterCatalogParams()
        params.AddCatalog(getattr(FilterCatalogParams.FilterCatalogs, which))
        catalogs.append(FilterCatalog(params))
    text = resources.files("medgen.chem").joinpath("data/moses_filters.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    patterns = [Chem.MolFromSmarts(r["smarts"]) for r in rows]
    screens = [Chem.PatternFingerprint(p) for p in patterns]
    allowed = {"C", "N", "S", "O", "F", "Cl", "Br", "H"}
    out = []
    with rdBase.BlockLogs():
        for text in smiles:
            mol = Chem.MolFromSmiles(text)
            if mol is None:
                out.append((text, False))
                continue
            mw, logp = Descriptors.MolWt(mol), Crippen.MolLogP(mol)  # type: ignore[attr-defined]
            tpsa = rdMolDescriptors.CalcTPSA(mol)
            hbd, hba = rdMolDescriptors.CalcNumHBD(mol), rdMolDescriptors.CalcNumHBA(mol)
            rotb = rdMolDescriptors.CalcNumRotatableBonds(mol)
            passes = not any(len(r) >= 8 for r in mol.GetRingInfo().AtomRings()) and all(
                a.GetFormalCharge() == 0 and a.GetSymbol() in allowed for a in mol.GetAtoms()
            )
            if passes:
                with_h = Chem.AddHs(mol)
                fp = Chem.PatternFingerprint(with_h) if screen else None
                passes = not any(
                    (fp is None or DataStructs.AllProbeBitsMatch(q, fp))
                    and with_h.HasSubstructMatch(p)
                    for p, q in zip(patterns, screens, strict=True)
                )
            out.append((
                text, True, Chem.MolToSmiles(mol), Chem.MolToInchiKey(mol), mw, logp, tpsa,
                hbd, hba, rotb, rdMolDescriptors.CalcNumRings(mol),
                rdMolDescriptors.CalcNumAromaticRings(mol), mol.GetNumHeavyAtoms(),
                rdMolDescriptors.CalcFractionCSP3(mol), Chem.GetFormalCharge(mol), QED.qed(mol),
                sascorer.calculateScore(mol), (mw > 500) + (logp > 5) + (hbd > 5) + (hba > 10),
                rotb <= 10 and tpsa <= 140,
                Chem.MolToSmiles(MurckoScaffold.GetScaffoldForMol(mol)),
                *(";".join(sorted({m.GetDescription() for m in c.GetMatches(mol)}))
                  for c in catalogs),
                passes,
            ))  # fmt: skip
    return out


def bench_score(n: int, n_jobs: int) -> list[tuple[str, float, float, float]]:
    """Throughput of ``score`` on 1 core and on ``n_jobs`` warm workers (steady state), plus a
    cold start (pool started inside the timed call). Also the CPU seconds each case used (this
    process and its workers): on a machine shared with other jobs, wall-clock scaling cannot be
    measured, but the CPU cost of the parallel path shows its overhead."""
    from medgen.chem.parallel import worker_pool
    from medgen.chem.properties import score

    smiles = molecules(n)
    score(smiles[:50], n_jobs=1, groups=BARE_GROUPS)  # warm caches (catalogs, SA table)
    rows = []

    def timed(name: str, workers: list[int] | None = None, **kwargs) -> None:
        pids = [os.getpid(), *(workers or [])]
        cpu0, t0 = _cpu_seconds(pids), time.perf_counter()
        frame = score(smiles, groups=BARE_GROUPS, **kwargs)
        seconds = time.perf_counter() - t0
        cpu = _cpu_seconds(pids) - cpu0
        assert len(frame) == n
        rows.append((name, seconds, n / seconds, cpu))

    timed("score, 1 process", n_jobs=1)
    with worker_pool(n_jobs) as pool:
        # warm the workers (imports, catalogs, SA table), as a long screen has them
        score(
            smiles[: 50 * n_jobs], n_jobs=n_jobs, chunk_size=50, executor=pool, groups=BARE_GROUPS
        )
        workers = list(pool._processes)  # pids of the running workers
        timed(f"score, {n_jobs} workers", workers, n_jobs=n_jobs, executor=pool)
    c0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    own = _cpu_seconds([os.getpid()])
    frame = score(smiles, n_jobs=n_jobs, groups=BARE_GROUPS)
    seconds = time.perf_counter() - t0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) + _cpu_seconds([os.getpid()])
    rows.append((f"score, {n_jobs} workers, cold", seconds, n / seconds, cpu - own))
    assert len(frame) == n
    return rows


def _tree_rss(pid: int) -> int:
    """Summed RSS (bytes) of ``pid`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
        stack.extend(children.get(p, []))
    return total


def bench_screen(path: Path, rows: int, n_jobs: int, groups: str) -> tuple[float, float, float]:
    """Run ``medgen screen`` on the first ``rows`` rows of ``path``; (seconds, peak tree RSS GiB,
    peak main-process RSS GiB)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "medgen", "screen", f"input={path}", f"out={tmp}/out.csv",
            f"limit={rows}", f"n_jobs={n_jobs}", f"properties={groups}", "progress=false",
            f"hydra.run.dir={tmp}/run",
        ]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak_tree = peak_main = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak_tree, peak_main
            while not done.is_set():
                peak_tree = max(peak_tree, _tree_rss(proc.pid))
                try:
                    with open(f"/proc/{proc.pid}/statm") as fh:
                        rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                    peak_main = max(peak_main, rss)
                except OSError:
                    pass
                time.sleep(0.05)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        _, err = proc.communicate()
        done.set()
        thread.join()
        if proc.returncode != 0:
            raise RuntimeError(f"medgen screen failed:\n{err[-3000:]}")
        return time.perf_counter() - t0, peak_tree / 2**30, peak_main / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="molecules for the score timing")
    parser.add_argument("--full", action="store_true", help="screen all of MOSES train")
    parser.add_argument("--small", type=int, default=10_000, help="rows of the reference screen")
    parser.add_argument("--large", type=int, default=100_000, help="rows of the large screen")
    parser.add_argument("--groups", default="[identity,descriptors]", help="screen properties")
    parser.add_argument("--skip-score", action="store_true", help="only the screening part")
    parser.add_argument("--skip-screen", action="store_true", help="only the score timing")
    args = parser.parse_args()
    from medgen.chem.properties import default_n_jobs

    n_jobs = default_n_jobs()
    print(f"# chem benchmark: {n_jobs} cores\n")
    if not args.skip_score:
        report_score(args.n, n_jobs)
    if not args.skip_screen:
        report_screen(args, n_jobs)


def bench_bare(n: int, repeats: int = 3) -> dict[str, float]:
    """CPU seconds (best of ``repeats``, interleaved) of ``score(groups=BARE_GROUPS)`` in this
    process and of :func:`bare_rdkit` with and without the pattern-fingerprint screen."""
    from medgen.chem.properties import score

    smiles = molecules(n)
    score(smiles[:20], n_jobs=1, groups=BARE_GROUPS)
    bare_rdkit(smiles[:20])
    best = {"score": float("inf"), "bare": float("inf"), "bare, no screen": float("inf")}
    runs = {
        "score": lambda: score(smiles, n_jobs=1, groups=BARE_GROUPS),
        "bare": lambda: bare_rdkit(smiles),
        "bare, no screen": lambda: bare_rdkit(smiles, screen=False),
    }
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.process_time()
            run()
            best[name] = min(best[name], time.process_time() - t0)
    return best


def report_score(n: int, n_jobs: int) -> None:
    bare = bench_bare(min(n, 500))
    print(f"score() vs a bare RDKit loop computing the same columns ({min(n, 500)} molecules, "
          "one process, CPU seconds, best of 3 interleaved runs)\n")  # fmt: skip
    print(f"| {'case':<44} | {'CPU s':>6} | {'speed vs bare loop':>18} |")
    print(f"|{'-' * 46}|{'-' * 8}|{'-' * 20}|")
    for name, label in [("bare", "bare loop (MOSES filters screened, as medgen)"),
                        ("bare, no screen", "bare loop (every MOSES SMARTS matched)"),
                        ("score", "score(groups=BARE_GROUPS), 1 process")]:  # fmt: skip
        print(f"| {label:<44} | {bare[name]:6.2f} | {bare['bare'] / bare[name]:18.2f} |")
    print(f"\nload average now: {os.getloadavg()[0]:.1f}\n")
    rows = bench_score(n, n_jobs)
    (_, _, r1, cpu1), (_, _, rn, cpun), (_, _, rc, cpuc) = rows
    print(f"| {'case':<28} | {'seconds':>8} | {'mol/s':>7} | {'ratio vs 1 core':>15} | "
          f"{'CPU s':>7} | {'CPU ratio':>9} |")  # fmt: skip
    print(f"|{'-' * 30}|{'-' * 10}|{'-' * 9}|{'-' * 17}|{'-' * 9}|{'-' * 11}|")
    for name, seconds, rate, cpu in rows:
        print(f"| {name:<28} | {seconds:8.2f} | {rate:7.0f} | {rate / r1:15.2f} | {cpu:7.1f} | "
              f"{cpu1 / cpu:9.2f} |")  # fmt: skip
    print(
        f"\nparallel efficiency on {n_jobs} cores, wall clock (warm workers): "
        f"{(rn / r1) / n_jobs:.2f}; cold start included: {(rc / r1) / n_jobs:.2f} (target >= 0.85)"
    )
    print(
        f"CPU efficiency (1-process CPU / parallel CPU, warm workers): {cpu1 / cpun:.2f}; "
        f"cold: {cpu1 / cpuc:.2f}"
    )
    print(
        f"load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
        "(wall-clock scaling is only meaningful on idle cores)\n"
    )


def report_screen(args: argparse.Namespace, n_jobs: int) -> None:
    data = Path(os.environ.get("MEDGEN_DATA_DIR") or ROOT / "data") / "moses" / "train.csv.gz"
    if not data.is_file():
        data = Path(tempfile.mkdtemp()) / "mols.smi"
        data.write_text("\n".join(molecules(args.large)) + "\n")
    large = 10**9 if args.full else args.large
    print(f"screening {data} (properties={args.groups}, n_jobs={n_jobs})\n")
    print(
        f"| {'rows':>10} | {'SMILES MB':>9} | {'seconds':>8} | {'rows/s':>7} | "
        f"{'peak RSS, all procs':>19} | {'peak RSS, main':>14} | {'ratio vs small':>14} |"
    )
    print(f"|{'-' * 12}|{'-' * 11}|{'-' * 10}|{'-' * 9}|{'-' * 21}|{'-' * 16}|{'-' * 16}|")
    reference = None
    for limit in (args.small, large):
        seconds, tree, main_rss = bench_screen(data, limit, n_jobs, args.groups)
        n_rows, n_bytes = _prefix_size(data, limit)
        reference = reference or tree
        print(
            f"| {n_rows:>10,} | {n_bytes / 1e6:9.1f} | {seconds:8.1f} | {n_rows / seconds:7.0f} | "
            f"{tree:15.2f} GiB | {main_rss:10.2f} GiB | {tree / reference:14.2f} |"
        )
    print("\ntarget: peak memory < 1 GiB whatever the file size (ratio ~1)")


def _prefix_size(path: Path, limit: int) -> tuple[int, int]:
    """(rows, uncompressed bytes) of the first ``limit`` rows of a SMILES file."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = n_bytes = 0
    with opener(path, "rb") as fh:
        if path.name.endswith((".csv", ".csv.gz")):
            next(fh)
        for line in fh:
            if rows >= limit:
                break
            rows += 1
            n_bytes += len(line)
    return rows, n_bytes


if __name__ == "__main__":
    main()
