"""Screening past one machine: Dask equals local, killed runs resume, shards union to one run,
DuckDB's sort/dedup/top-k equal pandas, and the new inputs and outputs."""

from __future__ import annotations

import bz2
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medgen.chem.screen import screen_file
from medgen.errors import OutputExistsError, UserError
from tests.conftest import REPO_ROOT

DATA = Path(__file__).resolve().parents[1] / "data" / "chem"
MIXED = DATA / "mixed.csv.gz"


# ------------------------------------------------------------------------------ reference sort


def _key(value, descending: bool):
    """The documented order: numbers (also numeric text) first, then text, missing last."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return (2, 0)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return (1, tuple(-b for b in value.encode()) + (1,) if descending else value)
        if math.isnan(value):
            return (2, 0)
    return (0, -value if descending else value)


def reference_sort(frame: pd.DataFrame, column: str, descending: bool) -> pd.DataFrame:
    keys = [_key(v, descending) for v in frame[column].tolist()]
    order = sorted(range(len(frame)), key=lambda i: (keys[i], frame["line"].iat[i]))
    return frame.iloc[order].reset_index(drop=True)


def merged(folder: Path, frame: pd.DataFrame, *, parts: int, **settings) -> pd.DataFrame:
    """``frame`` written as ``parts`` partitions and merged by DuckDB into a parquet file."""
    from medgen.chem.merge import MergeSettings, merge
    from medgen.chem.partitions import ORDER, partition_name, write_table

    folder.mkdir()
    names = []
    bounds = np.linspace(0, len(frame), parts + 1).astype(int)
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        chunk = frame.iloc[lo:hi]
        chunk = chunk.assign(**{ORDER: chunk["line"].astype("int64"), "smiles": "C"})
        names.append(partition_name(0, k))
        write_table(chunk.reset_index(drop=True), folder / "scored" / f"{names[-1]}.parquet")
    out = folder / "out.parquet"
    merge(folder, names, out=out, rejects=folder / "r.csv", settings=MergeSettings(
        keep_rejects=False, memory_limit="64MB", **settings), template=[],
        spill_prefix=".out.sort-", partition_rejected=0)  # fmt: skip
    return pd.read_parquet(out)


def test_duckdb_top_k_equals_pandas_on_50k_rows(tmp_path):
    rng = np.random.default_rng(1)
    n = 50_000
    frame = pd.DataFrame(
        {"line": np.arange(2, n + 2), "qed": np.round(rng.uniform(size=n), 3)}  # many ties
    )
    frame.loc[rng.choice(n, 500, replace=False), "qed"] = np.nan
    for descending in (True, False):
        got = merged(tmp_path / f"d{descending}", frame, parts=7, sort_by="qed",
                     descending=descending, top_k=1000)  # fmt: skip
        want = frame.sort_values(["qed", "line"], ascending=[not descending, True],
                                 na_position="last", kind="stable").head(1000)  # fmt: skip
        assert got["line"].tolist() == want["line"].tolist()
        np.testing.assert_array_equal(got["qed"].to_numpy(), want["qed"].to_numpy())


def test_dedup_keeps_the_first_of_each_inchikey_across_partitions(tmp_path):
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"line": np.arange(1, 3001)})
    frame["inchikey"] = rng.choice([f"K{i}" for i in range(400)] + [None], size=len(frame))
    got = merged(tmp_path / "d", frame, parts=9, dedup=True)
    keyed = frame[frame["inchikey"].notna()]
    want = (
        sorted(keyed.drop_duplicates("inchikey")["line"])
        + frame[frame["inchikey"].isna()]["line"].tolist()
    )
    assert got["line"].tolist() == sorted(want)  # input order kept


# ------------------------------------------------------------------------------ engines agree


@pytest.fixture(scope="module")
def scheduler():
    """One 2-worker x 1-thread LocalCluster for the module's Dask runs."""
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        yield cluster.scheduler_address


def _messy(path: Path) -> Path:
    """Valid, invalid, empty, over-long, duplicate (also across partitions), a salt, bad bytes,
    ids with gaps and a numeric id column: the rows a screen must route correctly."""
    rows = [b"smiles,compound_id,pIC50"]
    smiles = _lines(59)
    for i, s in enumerate(smiles):
        rows.append(f"{s},M{i},{(i * 37) % 11}".encode())
    rows += [b"C1CC,bad1,1", b",empty,", b"C" * 1200 + b",long,2", b"CCO.Cl,salt,3"]
    rows += [b"CCO,dup,4", b"OCC,dup2,5", b"caf\xe9,latin,6", f"{smiles[3]},dup3,7".encode()]
    path.write_bytes(b"\n".join(rows) + b"\n")
    return path


def _table(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


SETTINGS = {"rules": ["lipinski"], "ranges": ["qed>=0.3"], "dedup": True, "sort_by": "qed",
            "partition_size": 9, "progress": False}  # fmt: skip


def test_dask_engine_equals_local_engine_on_a_messy_input(tmp_path, scheduler):
    source = _messy(tmp_path / "lib.csv")
    local = screen_file(source, tmp_path / "local.parquet", n_jobs=1, **SETTINGS)
    dask = screen_file(source, tmp_path / "dask.parquet", engine="dask", scheduler=scheduler,
                       **SETTINGS)  # fmt: skip
    pd.testing.assert_frame_equal(_table(tmp_path / "local.parquet"),
                                  _table(tmp_path / "dask.parquet"))  # fmt: skip
    a, b = (
        pd.read_csv(tmp_path / f"{n}.rejects.csv", keep_default_na=False) for n in ("local", "dask")
    )
    pd.testing.assert_frame_equal(a, b)
    assert local.duplicates == dask.duplicates >= 2 and local.rows == dask.rows == 67
    assert local.written + local.rejected == local.rows
    out = _table(tmp_path / "local.parquet")
    assert out["qed"].is_monotonic_decreasing and out["line"].is_unique
    reasons = a.set_index("compound_id")["reason"]
    assert reasons["dup"].startswith("duplicate InChIKey") and reasons["long"].startswith(
        "SMILES longer"
    )
    assert reasons["latin"] == "undecodable bytes (not UTF-8) at line 67"  # 1 header + 59 + 7


def test_a_killed_dask_screen_resumes_with_no_row_lost_or_repeated(tmp_path):
    pytest.importorskip("dask.distributed")
    source = _messy(tmp_path / "lib.csv")
    args = [f"input={source}", "n_jobs=2", "partition_size=4", "progress=false",
            "rules=[lipinski]", "dedup=true", "sort_by=qed"]  # fmt: skip
    out = tmp_path / "hits.parquet"
    done = tmp_path / ".hits.parquet.parts" / "done"
    cmd = [sys.executable, "-m", "medgen", "screen", *args, f"out={out}", "engine=dask"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MEDGEN_ROOT": str(tmp_path),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if done.is_dir() and len(list(done.iterdir())) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the screen ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its LocalCluster, mid-run
    proc.wait(timeout=30)
    kept = len(list(done.iterdir()))
    assert kept >= 3 and not out.exists()
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed" in again.stdout + again.stderr
    screen_file(source, tmp_path / "one.parquet", engine="local", n_jobs=1, progress=False,
                rules=["lipinski"], dedup=True, sort_by="qed", partition_size=4)  # fmt: skip
    pd.testing.assert_frame_equal(_table(out), _table(tmp_path / "one.parquet"))
    a, b = (
        pd.read_csv(tmp_path / f"{n}.rejects.csv", keep_default_na=False) for n in ("hits", "one")
    )
    pd.testing.assert_frame_equal(a, b)
    assert not (tmp_path / ".hits.parquet.parts").exists()


def test_a_crashed_local_screen_resumes_from_its_finished_partitions(tmp_path, monkeypatch):
    from medgen.chem import engines

    source = _messy(tmp_path / "lib.csv")
    real, calls = engines.write_partition, []

    def crash_after_three(work, name, result):
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if killed while scoring the fourth partition
        calls.append(name)
        return real(work, name, result)

    monkeypatch.setattr(engines, "write_partition", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        screen_file(source, tmp_path / "o.csv", n_jobs=1, **SETTINGS)
    monkeypatch.setattr(engines, "write_partition", real)
    summary = screen_file(source, tmp_path / "o.csv", n_jobs=1, **SETTINGS)
    assert summary.resumed_partitions == 3 and summary.partitions == 8
    screen_file(source, tmp_path / "clean.csv", n_jobs=1, **SETTINGS)
    assert (tmp_path / "o.csv").read_text() == (tmp_path / "clean.csv").read_text()


def test_a_changed_setting_does_not_resume_foreign_partitions(tmp_path, monkeypatch):
    from medgen.chem import engines

    source = _messy(tmp_path / "lib.csv")
    real = engines.write_partition

    def crash_after_one(work, name, result):
        real(work, name, result)
        raise KeyboardInterrupt

    monkeypatch.setattr(engines, "write_partition", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        screen_file(source, tmp_path / "o.csv", n_jobs=1, progress=False, partition_size=9)
    monkeypatch.setattr(engines, "write_partition", real)
    with pytest.raises(OutputExistsError, match=r"other settings \(changed: rules\)"):
        screen_file(source, tmp_path / "o.csv", n_jobs=1, progress=False, partition_size=9,
                    rules=["pains"])  # fmt: skip
    summary = screen_file(source, tmp_path / "o.csv", n_jobs=1, progress=False,
                          partition_size=9, rules=["pains"], overwrite=True)  # fmt: skip
    assert summary.resumed_partitions == 0 and summary.rows == 67


def test_shards_union_to_exactly_the_single_run(tmp_path):
    source = _messy(tmp_path / "lib.csv")
    single = screen_file(source, tmp_path / "one.csv", n_jobs=1, **SETTINGS)
    rows = 0
    for i in range(3):
        part = screen_file(source, tmp_path / "hits.csv", n_jobs=1, shard=f"{i}/3", **SETTINGS)
        assert part.partitions == len(range(i, single.partitions, 3))
        rows += part.rows
        assert not (tmp_path / "hits.csv").exists()
    assert rows == single.rows
    done = sorted(p.stem for p in (tmp_path / ".hits.csv.parts" / "done").iterdir())
    assert len(done) == single.partitions
    merged_run = screen_file(source, tmp_path / "hits.csv", n_jobs=1, **SETTINGS)
    assert merged_run.resumed_partitions == single.partitions
    assert (tmp_path / "hits.csv").read_text() == (tmp_path / "one.csv").read_text()
    assert (tmp_path / "hits.rejects.csv").read_text() == (tmp_path / "one.rejects.csv").read_text()
    with pytest.raises(UserError, match="shard"):
        screen_file(source, tmp_path / "x.csv", shard="3/3", progress=False)


# ------------------------------------------------------------------------------ inputs


def _lines(n: int) -> list[str]:
    smiles = [s.strip() for s in (DATA / "moses_test_200.smi").read_text().splitlines()]
    return [s for s in smiles if s and not s.startswith("#")][:n]


def test_compressed_cxsmiles_enamine_tables_folders_and_globs(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    lib = tmp_path / "lib"
    lib.mkdir()
    smiles = _lines(12)
    enamine = "smiles\tidnumber\tMW\n" + "".join(
        f"{s}\tZ{i}\t1.{i}\n" for i, s in enumerate(smiles[:4])
    )
    (lib / "a.cxsmiles.bz2").write_bytes(bz2.compress(enamine.encode()))
    cx = "C[C@H](N)C(=O)O |&1:1| alanine\n" + "".join(
        f"{s} X{i}\n" for i, s in enumerate(smiles[4:8])
    )
    (lib / "b.cxsmiles").write_text(cx)
    (lib / "c.smi.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(f"{s} Y{i}\n" for i, s in enumerate(smiles[8:])).encode()))  # fmt: skip
    (lib / "notes.md").write_text("not molecules")
    summary = screen_file(lib, tmp_path / "all.csv", n_jobs=1, progress=False, groups=["identity"])
    out = pd.read_csv(tmp_path / "all.csv")
    assert summary.rows == summary.written == 13
    assert out["source"].tolist() == ["a.cxsmiles.bz2"] * 4 + ["b.cxsmiles"] * 5 + ["c.smi.zst"] * 4
    assert out["smiles"].iloc[4] == "C[C@H](N)C(=O)O |&1:1|"  # the extension belongs to it
    assert out["idnumber"].iloc[0] == "Z0" and out["name"].iloc[4] == "alanine"
    globbed = screen_file(f"{lib}/*.cxsmiles*", tmp_path / "cx.sdf", n_jobs=1, progress=False)
    assert globbed.rows == 9
    from rdkit import Chem

    names = [m.GetProp("_Name") for m in Chem.SDMolSupplier(str(tmp_path / "cx.sdf"))]
    assert names[:4] == ["Z0", "Z1", "Z2", "Z3"]  # Enamine's id is the SDF title
    with pytest.raises(UserError, match="inside input="):
        screen_file(lib, lib / "hits.csv", progress=False)
    with pytest.raises(UserError, match="no molecule files"):
        screen_file(f"{lib}/*.xyz", tmp_path / "none.csv", progress=False)


# ------------------------------------------------------------------------------ outputs


def test_outputs_round_floats_write_real_nulls_and_refuse_to_overwrite(tmp_path):
    source = tmp_path / "lib.csv"
    source.write_text("smiles,id,note\nCCO,a,\nc1ccccc1,b,x\nC1CC,c,y\n")
    out = tmp_path / "o.parquet"
    screen_file(source, out, n_jobs=1, progress=False)
    table = pd.read_parquet(out)
    assert table["error"].isna().all() and table["note"].isna().tolist() == [True, False]
    assert table["mw"].tolist() == [46.069, 78.114] and table["qed"].tolist()[0] == 0.4068
    assert {"smiles", "id", "canonical_smiles"} <= set(table.columns)
    with pytest.raises(OutputExistsError, match="out=.*o.parquet exists; pass overwrite=true"):
        screen_file(source, out, n_jobs=1, progress=False)
    screen_file(source, out, n_jobs=1, progress=False, overwrite=True, ranges=["mw<50"])
    assert pd.read_parquet(out)["id"].tolist() == ["a"]


def test_dataset_outputs_and_counted_rejects(tmp_path):
    source = _messy(tmp_path / "lib.csv")
    summary = screen_file(source, tmp_path / "hits", n_jobs=1, progress=False,
                          partition_size=9, rules=["lipinski"], keep_rejects=False)  # fmt: skip
    assert (tmp_path / "hits").is_dir() and not (tmp_path / "hits_rejects").exists()
    table = pd.read_parquet(tmp_path / "hits")
    assert len(table) == summary.written and summary.written + summary.rejected == 67
    assert table["line"].is_monotonic_increasing
    screen_file(source, tmp_path / "ds", n_jobs=1, progress=False, partition_size=9,
                dedup=True, sort_by="mw", descending=False)  # fmt: skip
    kept, rejected = pd.read_parquet(tmp_path / "ds"), pd.read_parquet(tmp_path / "ds_rejects")
    assert kept["mw"].is_monotonic_increasing and len(kept) + len(rejected) == 67
    assert sorted([*kept["line"], *rejected["line"]]) == list(range(2, 69))


# ------------------------------------------------------------------------------ the command


CLI_CASES = [
    ("engine=spark", "engine='spark'"),
    ("shard=3/3", "shard='3/3'"),
    ("shard=abc", "shard='abc'"),
    ("shard=0/2 overwrite=true", "overwrite"),
    ("partition_size=0", "partition_size=0"),
    ("memory_limit=lots", "memory_limit='lots'"),
    ("keep_rejects=maybe", "keep_rejects='maybe'"),
    ("scheduler=tcp://x:1", "engine='local'"),
    ("out={tmp}/exists.csv", "exists.csv exists"),
    ("input={tmp}/*.nope", "no molecule files"),
]


@pytest.mark.parametrize(("override", "needle"), CLI_CASES, ids=[c for c, _ in CLI_CASES])
def test_screen_mistakes_are_one_line_and_exit_2(tmp_path, monkeypatch, capfd, override, needle):
    from medgen.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDGEN_ROOT", str(tmp_path))
    (tmp_path / "in.smi").write_text("CCO\n")
    (tmp_path / "exists.csv").write_text("x\n")
    args = [f"input={tmp_path}/in.smi", f"out={tmp_path}/o.csv"]
    args += [a.format(tmp=tmp_path) for a in override.split()]
    assert main(["screen", *args]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "o.csv").exists()


def test_the_local_engine_needs_no_dask(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "dask" or m.startswith("dask.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "dask", None)  # import dask now fails
    source = tmp_path / "lib.smi"
    source.write_text("CCO a\nCCN b\n")
    assert screen_file(source, tmp_path / "o.csv", n_jobs=1, progress=False).written == 2
    with pytest.raises(UserError, match=r"medgen\[distributed\]"):
        screen_file(source, tmp_path / "p.csv", engine="dask", progress=False)


def test_the_slurm_cluster_config_builds_a_job_script(compose_cfg):
    pytest.importorskip("dask_jobqueue")
    import hydra
    from omegaconf import OmegaConf

    cfg = compose_cfg("screen", ["input=x.smi", "out=y.csv", "cluster=slurm", "cluster.queue=cpu"])
    assert cfg.engine == "dask" and cfg.cluster.jobs == 10
    node = OmegaConf.to_container(cfg.cluster)
    node.pop("jobs")  # medgen's own key: how many jobs to start
    cluster = hydra.utils.instantiate(node)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p cpu" in script and "--cpus-per-task=32" in script
    assert "--nthreads 1" in script and "--nworkers 32" in script


def test_progress_reports_partitions_rate_and_eta():
    from medgen.chem.engines import Progress

    progress = Progress("lib.smi", bar=False)
    progress.set_total(1000)
    progress.update(100, skipped=True)  # a resumed partition: not counted in the rate
    time.sleep(0.01)
    progress.update(200)
    line = progress.line()
    assert "2 partitions (1 resumed)" in line and "300 of ~1,000 molecules" in line
    assert " mol/s, ETA 0:" in line
