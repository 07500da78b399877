"""Every launcher writes one run folder per job with the right metrics: torchrun, srun, a
resume, Hydra multirun with ddp_spawn; sweeps get their metric; array jobs fill one cohort.

DDP runs are subprocesses with a timeout (inside pytest, Lightning's ddp would re-run pytest).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medgen.utils.launch import resumed_run_folder, run_dir_overrides
from tests.conftest import REPO_ROOT, TEST_CONFIG_DIR, run_medgen

TINY = [f"hydra.searchpath=[file://{TEST_CONFIG_DIR}]", "data=tiny", "model=tiny", "debug=fast"]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MEDGEN_ROOT": str(tmp_path)}
    env["OMP_NUM_THREADS"] = "1"
    for key in [k for k in env if k.startswith(("SLURM_", "TORCHELASTIC_"))]:
        del env[key]
    return {**env, **extra}


def _runs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("metrics.json"))


# ------------------------------------------------------------------ which folder, decided up front


@pytest.fixture
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith(("SLURM_", "TORCHELASTIC_")) or key in ("RANK", "MEDGEN_RUN_DIR"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_one_process_keeps_hydras_own_folder(clean_env):
    assert run_dir_overrides("train", ["seed=1"]) == []


def test_slurm_tasks_share_the_job_folder_and_an_array_task_has_its_own(clean_env):
    clean_env.setenv("SLURM_JOB_ID", "4242")
    clean_env.setenv("SLURM_PROCID", "3")
    got = run_dir_overrides("train", [])
    assert got[0] == "hydra.run.dir=${paths.log_dir}/${task_name}/slurm-4242"
    assert got[1:] == ["hydra.output_subdir=null", "hydra.job.name=train_rank3"]
    clean_env.setenv("SLURM_ARRAY_JOB_ID", "4240")
    clean_env.setenv("SLURM_ARRAY_TASK_ID", "2")
    clean_env.setenv("SLURM_PROCID", "0")
    assert run_dir_overrides("sample", []) == [
        "hydra.run.dir=${paths.log_dir}/${task_name}/slurm-4240_2"
    ]


def test_explicit_folder_and_env_var_win(clean_env, tmp_path):
    clean_env.setenv("SLURM_JOB_ID", "1")
    clean_env.setenv("SLURM_PROCID", "0")
    assert run_dir_overrides("train", ["hydra.run.dir=x"]) == []
    clean_env.setenv("MEDGEN_RUN_DIR", str(tmp_path / "it's here"))
    assert run_dir_overrides("train", []) == [f"hydra.run.dir='{tmp_path}/it\\'s here'"]


def test_resume_of_a_run_continues_in_it_and_a_branch_does_not(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 1\n")
    for name in ("last.ckpt", "epoch_001.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"x")
    assert resumed_run_folder(str(run)) == run.resolve()
    assert resumed_run_folder(str(run / "checkpoints" / "last.ckpt")) == run.resolve()
    assert resumed_run_folder(str(run / "checkpoints" / "epoch_001.ckpt")) is None
    assert resumed_run_folder(str(tmp_path)) is None  # not a run folder


# ------------------------------------------------------------------ real launches


def test_torchrun_with_two_cpu_ranks_writes_one_run_folder(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "medgen", "train", *TINY, *DDP, "trainer.max_epochs=1"]  # fmt: skip
    out = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "terminate called" not in out.stderr
    (run,) = list((tmp_path / "outputs" / "train").iterdir())  # not one per rank
    assert (run / "metrics.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 1
    assert {"train.log", "train_rank1.log"} <= {p.name for p in run.iterdir()}


def test_resume_into_the_run_folder_keeps_both_runs_curves(tmp_path):
    out = run_medgen(["train", *TINY, "trainer.max_epochs=1"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = _runs(tmp_path / "outputs")
    out = run_medgen(["train", *TINY, "trainer.max_epochs=2", f"ckpt_path={run}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _runs(tmp_path / "outputs") == [run]  # no second folder
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 4
    assert (run / "config.yaml").is_file() and (run / "config.resume-1.yaml").is_file()
    first = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    second = list(csv.DictReader((run / "csv" / "resume-1" / "metrics.csv").open()))
    assert max(int(r["step"]) for r in first) < min(int(r["step"]) for r in second)


def test_ddp_spawn_sweep_reports_the_steps_its_checkpoint_holds(tmp_path):
    args = ["train", "-m", *TINY, *DDP, "trainer.strategy=ddp_spawn", "trainer.max_epochs=2"]
    out = run_medgen([*args, "seed=1"], cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = _runs(tmp_path / "outputs")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert json.loads((run / "metrics.json").read_text())["global_step"] == ckpt["global_step"] == 2


def test_hydras_submitit_launcher_writes_one_folder_per_job(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = ["train", "-m", *TINY, "hydra/launcher=submitit_local", "seed=1,2"]
    out = run_medgen(args, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = _runs(tmp_path / "outputs")
    assert [r.name for r in runs] == ["0", "1"]
    assert all(json.loads((r / "metrics.json").read_text())["global_step"] == 4 for r in runs)


def test_a_sweep_with_plain_ddp_is_refused(tmp_path):
    out = run_medgen(["train", "-m", *TINY, *DDP, "trainer.strategy=ddp", "seed=1"],
                     cwd=tmp_path, timeout=120)  # fmt: skip
    assert out.returncode == 2
    assert "use trainer.strategy=ddp_spawn" in out.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_twenty_two_process_ddp_runs_all_exit_cleanly(tmp_path):
    for i in range(20):
        root = tmp_path / str(i)
        root.mkdir()
        out = run_medgen(["train", *TINY, *DDP, "trainer.max_epochs=1"], cwd=root, timeout=240)
        assert out.returncode == 0, (i, out.stderr[-3000:])
        assert "terminate called" not in out.stderr, i


# ------------------------------------------------------------------ sweeps


def test_train_returns_the_optimized_metric_as_its_value(compose_cfg):
    from medgen.errors import UserError
    from medgen.tasks.train import train

    cfg = compose_cfg("train", [*TINY[1:], "optimized_metric=val/loss", "logger=csv"], job=True)
    metrics = train(cfg)
    assert float(metrics) == metrics["val/loss"] and metrics["global_step"] == 4
    cfg = compose_cfg("train", [*TINY[1:], "optimized_metric=val/acc"], job=True)
    with pytest.raises(UserError, match=r"optimized_metric='val/acc' was not logged"):
        train(cfg)


@pytest.mark.parametrize("search", ["ddpm3d_optuna", "graph_vae_optuna"])
def test_every_model_has_an_optuna_search_that_composes(compose_cfg, search):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    experiment = "phantom32_ddpm" if search.startswith("ddpm") else "smiles_graph_vae_quick"
    cfg = compose_cfg("train", [f"experiment={experiment}", f"hparams_search={search}"])
    assert cfg.optimized_metric == "val/loss"
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    for key in cfg.hydra.sweeper.params:  # every searched key exists in the model's config
        node = cfg
        for part in str(key).split("."):
            assert part in node, key
            node = node[part]


def test_an_optuna_sweep_drives_train(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    out = run_medgen(["train", *TINY, "hparams_search=tiny_optuna"], cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (results,) = list(tmp_path.rglob("optimization_results.yaml"))
    assert "best_value" in results.read_text() and len(_runs(tmp_path / "outputs")) == 2


# ------------------------------------------------------------------ array jobs fill one cohort


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as fh:
        return [{k: r[k] for k in ("file", "sha256", "index", "seed")} for r in csv.DictReader(fh)]


def test_indices_array_jobs_plus_finalize_equal_one_job(tmp_path):
    from medgen.errors import UserError
    from medgen.generation import finalize_cohort, sample_to
    from medgen.utils.locks import ArrayLock
    from tests.sampling.helpers import StandIn, settings

    module, s, ckpt = StandIn(), settings(seed=4, steps=2), tmp_path / "ckpt"
    sample_to(module, s, out=tmp_path / "one", checkpoint=ckpt, n=7, batch_size=2)
    out = tmp_path / "array"
    for a, b in ((4, 7), (0, 2)):  # any order; index 2 and 3 still missing
        summary = sample_to(module, s, out=out, checkpoint=ckpt, n=7, batch_size=2,
                            indices=range(a, b))  # fmt: skip
        assert summary["written"] == b - a and "manifest" not in summary
    assert not (out / "manifest.csv").exists()
    with pytest.raises(UserError, match=r"lacks 2 of n=7 samples \(2:4\)"):
        finalize_cohort(module, s, out=out, checkpoint=ckpt, n=7)
    sample_to(module, s, out=out, checkpoint=ckpt, n=7, batch_size=3, indices=range(2, 4))
    running = ArrayLock(out)  # another job still drawing
    running.share()
    try:
        with pytest.raises(UserError, match="still writing"):
            finalize_cohort(module, s, out=out, checkpoint=ckpt, n=7)
    finally:
        running.close()
    summary = finalize_cohort(module, s, out=out, checkpoint=ckpt, n=7, preview=False)
    assert summary["count"] == 7 and _manifest(out) == _manifest(tmp_path / "one")
    one = json.loads((tmp_path / "one" / "dataset.json").read_text())
    assert json.loads((out / "dataset.json").read_text())["training"] == one["training"]


def test_concurrent_array_jobs_through_the_cli_fill_one_cohort(tmp_path, monkeypatch, capfd):
    from medgen.cli import main
    from tests.sampling.helpers import tiny

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    module = tiny()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)},
               ckpt)  # fmt: skip
    base = ["sample", f"ckpt={ckpt}", f"out={tmp_path / 'synth'}", "n=6", "batch_size=1",
            "sampler=ddim", "steps=2", "preview=false"]  # fmt: skip
    exe = Path(sys.executable).with_name("medgen")
    jobs = [
        subprocess.Popen([str(exe), *base, f"indices={a}:{b}"], cwd=tmp_path, env=_env(tmp_path),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for a, b in ((0, 3), (3, 6))
    ]  # fmt: skip
    for job in jobs:
        _, err = job.communicate(timeout=300)
        assert job.returncode == 0, err[-3000:]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDGEN_ROOT", str(tmp_path))
    assert main([*base, "finalize_only=true"]) == 0
    rows = _manifest(tmp_path / "synth")
    assert [int(r["index"]) for r in rows] == list(range(6))
    assert not [p for p in (tmp_path / "synth").rglob("*") if ".tmp-" in p.name]
    capfd.readouterr()
    assert main([*base, "indices=4:9"]) == 2
    assert "indices='4:9'" in capfd.readouterr().err
