"""Scaling benchmark: screening throughput on 1 vs 2 workers (local and Dask engines) with peak
memory per worker, the reading rate of one driver, DuckDB's dedup + sort rate, and DDP training
throughput on 1 vs 2 CPU processes; parallel efficiency, and the projected wall time of a
10^9-molecule screen on 1,000 cores.

    python benchmarks/scaling.py                       # 2,000 molecules, all properties
    python benchmarks/scaling.py --n 1584663 --input data/moses/train.csv.gz   # all MOSES train

Molecules come from ``--input`` (default: MOSES test, ``medgen data moses``), else the
200-molecule test fixture repeated. Efficiency = rate(k workers) / (k x rate(1 worker)). On a
machine shared with other jobs the 2-worker rows measure the machine too: read the CPU-seconds
column (the cost per molecule, which parallelism must not raise) next to the wall clock.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = ROOT / "data" / "moses" / "test.csv.gz"


def molecules(path: Path, n: int, out: Path) -> Path:
    """The first ``n`` SMILES of ``path`` (or the repeated test fixture) as a ``.smi`` file."""
    smiles: list[str] = []
    if path.is_file():
        with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as fh:
            next(fh)  # header
            for line in fh:
                smiles.append(line.split(",")[0].strip())
                if len(smiles) >= n:
                    break
    fixture = ROOT / "tests" / "data" / "chem" / "moses_test_200.smi"
    base = [s for s in fixture.read_text().split("\n") if s and not s.startswith("#")]
    while len(smiles) < n:
        smiles.extend(base)
    out.write_text("\n".join(smiles[:n]) + "\n")
    return out


class TreeMonitor:
    """Peak RSS of a process and of each descendant, and their CPU seconds, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peaks, self.cpu = pid, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        pids, children = [self.pid], {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    continue
                children.setdefault(ppid, []).append(int(entry))
        i = 0
        while i < len(pids):
            pids += children.get(pids[i], [])
            i += 1
        return pids

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self._tree():
                try:
                    with open(f"/proc/{pid}/statm") as fh:
                        rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                    with open(f"/proc/{pid}/stat") as fh:
                        fields = fh.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                self.peaks[pid] = max(self.peaks.get(pid, 0), rss)
                ticks = int(fields[11]) + int(fields[12])  # utime, stime (not the children's)
                self.cpu[pid] = ticks / os.sysconf("SC_CLK_TCK")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def screen_case(source: Path, engine: str, workers: int, partition: int) -> dict:
    """One ``medgen screen`` (all properties) in a subprocess: rate, peak RSS, CPU seconds."""
    with tempfile.TemporaryDirectory(dir=ROOT / "outputs") as tmp:
        out = Path(tmp) / "hits.parquet"
        code = (
            "from medgen.chem.screen import screen_file; import sys, json\n"
            f"s = screen_file({str(source)!r}, {str(out)!r}, engine={engine!r}, n_jobs={workers},"
            f" partition_size={partition}, chunk_size=100, progress=False)\n"
            "print(json.dumps({'rows': s.rows, 'seconds': s.seconds}))"
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env,
                                text=True, cwd=tmp)  # fmt: skip
        monitor = TreeMonitor(proc.pid)
        stdout, _ = proc.communicate()
        monitor.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"screen failed: {engine} x {workers}")
    result = json.loads(stdout.strip().splitlines()[-1])
    others = {pid: rss for pid, rss in monitor.peaks.items() if pid != proc.pid}
    workers_rss = sorted(others.values())[-workers:] if others else [0]
    main_cpu = monitor.cpu.get(proc.pid, 0.0)
    total_cpu = sum(monitor.cpu.values())
    # CPU seconds of the processes that score (this process itself for local x 1)
    scoring_cpu = total_cpu - main_cpu if workers > 1 or engine == "dask" else main_cpu
    return {
        "case": f"screen, {engine}, {workers} worker(s)",
        "rows": result["rows"],
        "seconds": result["seconds"],
        "rate": result["rows"] / result["seconds"],
        "cpu_s": total_cpu,
        "scoring_cpu_s": scoring_cpu,
        "peak_worker_gib": max(workers_rss) / 2**30,
        "peak_main_gib": monitor.peaks.get(proc.pid, 0) / 2**30,
    }


def read_rate(source: Path) -> float:
    """Rows/s one driver reads and cuts into partitions (what feeds every worker)."""
    from medgen.chem.readers import read_molecules

    start, rows = time.perf_counter(), 0
    for chunk in read_molecules(source, chunk_size=50_000, with_errors=True):
        rows += len(chunk)
    return rows / (time.perf_counter() - start)


def duckdb_rate(rows: int) -> dict:
    """Dedup + sort + top-k of ``rows`` synthetic scored rows through the screen's merge."""
    import numpy as np
    import pandas as pd

    from medgen.chem.merge import MergeSettings, merge
    from medgen.chem.partitions import ORDER, partition_name, write_table

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=ROOT / "outputs") as tmp:
        work, names = Path(tmp), []
        per = 100_000
        for k, lo in enumerate(range(0, rows, per)):
            n = min(per, rows - lo)
            frame = pd.DataFrame({
                "line": np.arange(lo + 1, lo + n + 1), "smiles": "CCO",
                "inchikey": rng.integers(0, rows // 2, n).astype(str), "qed": rng.uniform(size=n),
                "mw": rng.uniform(100, 600, n), "note": "x" * 20,
            })  # fmt: skip
            frame[ORDER] = frame["line"]
            names.append(partition_name(0, k))
            write_table(frame, work / "scored" / f"{names[-1]}.parquet")
        start = time.perf_counter()
        settings = MergeSettings(dedup=True, sort_by="qed", keep_rejects=False,
                                 memory_limit="1GB", threads=1)  # fmt: skip
        counts = merge(work, names, out=work / "out.parquet", rejects=work / "r.csv",
                       settings=settings, template=[], spill_prefix=".out.sort-",
                       partition_rejected=0)  # fmt: skip
        seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "rate": rows / seconds, "kept": counts.written}


# ------------------------------------------------------------------------------ DDP training


def ddp_case(devices: int, steps: int) -> dict:
    """Graph VAE training steps/s on ``devices`` CPU processes (Gloo), after 3 warm-up steps."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(dir=ROOT / "outputs") as tmp:
        out = Path(tmp) / "rate.json"
        cmd = [sys.executable, __file__, "--ddp-worker", str(devices), str(steps), str(out)]
        subprocess.run(cmd, check=True, env=env, cwd=tmp, timeout=1800,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        return json.loads(out.read_text())


def ddp_worker(devices: int, steps: int, out: Path) -> None:
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", ["experiment=smiles_graph_vae_quick", "paths.output_dir=.",
                                "hydra.run.dir=.", "data.num_workers=0"])  # fmt: skip
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)

    class Rate(pl.Callback):
        def on_train_batch_start(self, trainer, *args) -> None:
            if trainer.global_step == 3:
                self.start = time.perf_counter()

        def on_train_end(self, trainer, *args) -> None:
            seconds = time.perf_counter() - self.start
            if trainer.is_global_zero:
                per_step = cfg.data.batch_size * trainer.world_size
                out.write_text(json.dumps({"devices": trainer.world_size, "seconds": seconds,
                                           "steps": steps - 3,
                                           "rate": (steps - 3) * per_step / seconds}))  # fmt: skip

    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[Rate()],
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    from medgen.utils.distributed import end_distributed

    end_distributed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--n", type=int, default=2000, help="molecules to screen per case")
    parser.add_argument("--partition", type=int, default=250)
    parser.add_argument("--duckdb-rows", type=int, default=1_000_000)
    parser.add_argument("--train-steps", type=int, default=23)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--ddp-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ddp_worker:
        ddp_worker(int(args.ddp_worker[0]), int(args.ddp_worker[1]), Path(args.ddp_worker[2]))
        return
    (ROOT / "outputs").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "outputs") as tmp:
        source = molecules(args.input, args.n, Path(tmp) / "mols.smi")
        big = molecules(args.input, 200_000, Path(tmp) / "all.smi")  # for the reading rate
        reading = read_rate(big)
        rows = []
        for engine in ("local", "dask"):
            for workers in (1, 2):
                rows.append(screen_case(source, engine, workers, args.partition))
    print(f"\nscreening {args.n:,} molecules, all properties (OMP_NUM_THREADS=1)")
    print("| case | time | mol/s | efficiency (wall) | CPU-s all | CPU-s scoring | ms/mol/core |"
          " peak RSS per worker | main |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    base = {r["case"].split(",")[1]: r["rate"] for r in rows if r["case"].endswith("1 worker(s)")}
    for r in rows:
        k = int(r["case"].split(", ")[2].split()[0])
        eff = r["rate"] / (k * base[r["case"].split(",")[1]])
        memory = f"{r['peak_worker_gib']:.2f} GiB | {r['peak_main_gib']:.2f} GiB"
        ms = 1000 * r["scoring_cpu_s"] / r["rows"]
        print(f"| {r['case']} | {r['seconds']:.1f} s | {r['rate']:.0f} | {eff:.2f} | "
              f"{r['cpu_s']:.0f} | {r['scoring_cpu_s']:.0f} | {ms:.1f} | {memory} |")  # fmt: skip
    print(f"\none driver reads {reading:,.0f} rows/s (read_molecules, .smi)")
    db = duckdb_rate(args.duckdb_rows)
    print(f"DuckDB dedup + sort of {db['rows']:,} rows: {db['seconds']:.1f} s "
          f"({db['rate']:,.0f} rows/s, 1 thread, memory_limit 1GB)")  # fmt: skip
    # per-core cost from CPU time (wall clock on a shared machine measures the other jobs too);
    # the parallel path's overhead as the ratio of CPU per molecule, 1 worker vs 2 (dask)
    cost = {r["case"]: r["scoring_cpu_s"] / r["rows"] for r in rows}
    per_core = 1 / cost["screen, local, 1 worker(s)"]
    overhead = cost["screen, dask, 1 worker(s)"] / cost["screen, dask, 2 worker(s)"]
    cores, total = 1000, 1e9
    scoring = total / (cores * per_core * min(overhead, 1.0))
    merge_h = total / db["rate"] / 3600
    print(f"\nprojection, 10^9 molecules on {cores:,} cores: {per_core:.0f} mol/s per core "
          f"(CPU time) x CPU efficiency {min(overhead, 1.0):.2f} (dask 2 vs 1 worker) -> scoring "
          f"{scoring / 3600:.1f} h; one driver reads them in {total / reading / 3600:.1f} h, "
          f"so >= {max(1, int(cores * per_core / reading) + 1)} drivers (shard=i/N) keep "
          f"{cores:,} cores fed; merge ~{merge_h:.1f} h on 1 DuckDB thread")  # fmt: skip
    if not args.skip_train:
        print("\nDDP training throughput (graph VAE, smiles_graph_vae_quick, CPU, Gloo)")
        print("| processes | molecules/s | efficiency |")
        print("|---|---|---|")
        one = ddp_case(1, args.train_steps)
        for r in (one, ddp_case(2, args.train_steps)):
            eff = r["rate"] / (r["devices"] * one["rate"])
            print(f"| {r['devices']} | {r['rate']:.0f} | {eff:.2f} |")


if __name__ == "__main__":
    main()
