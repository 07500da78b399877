"""The real ``medgen`` console script in subprocesses: help, errors, fast runs, resume, DDP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medgen.cli import TASKS
from tests.conftest import TEST_CONFIG_DIR, run_medgen

TINY = [f"hydra.searchpath=[file://{TEST_CONFIG_DIR}]", "data=tiny", "model=tiny"]


def test_help_lists_every_task(tmp_path):
    out = run_medgen(["--help"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for task in TASKS:
        assert f"  {task} " in out.stdout


def test_unknown_task_lists_tasks_and_exits_2(tmp_path):
    out = run_medgen(["trian"], cwd=tmp_path)
    assert out.returncode == 2
    assert "unknown task 'trian'" in out.stderr
    assert "train" in out.stderr and "screen" in out.stderr


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_help_lists_the_tasks_settings(tmp_path, task):
    out = run_medgen([task, "--help"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"medgen {task}: {TASKS[task]}")
    assert "settings (key=value; ??? = required):" in out.stdout
    assert not (tmp_path / "outputs").exists()  # help runs nothing


def test_cfg_job_prints_composed_config(tmp_path):
    out = run_medgen(["train", "--cfg", "job"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for key in ("task_name: train", "seed: 42", "data:", "model:", "trainer:", "callbacks:"):
        assert key in out.stdout
    assert not (tmp_path / "outputs").exists()  # printing the config runs nothing


def test_unknown_group_option_is_named(tmp_path):
    out = run_medgen(["train", "trainer=tpu_pod", "--cfg", "job"], cwd=tmp_path)
    assert out.returncode != 0
    assert "tpu_pod" in out.stderr and "trainer" in out.stderr


def test_unknown_key_is_named(tmp_path):
    out = run_medgen(["train", "trainer.max_epochz=3", "--cfg", "job"], cwd=tmp_path)
    assert out.returncode != 0
    assert "max_epochz" in out.stderr


def test_missing_required_value_names_the_key(tmp_path):
    out = run_medgen(["sample", "out=x"], cwd=tmp_path)
    assert out.returncode == 2 and not (tmp_path / "outputs").exists()
    assert (
        out.stderr.strip()
        == "medgen sample: error: ckpt is required: set ckpt=<checkpoint file or run dir>"
    )


def test_missing_checkpoint_is_named_before_training(tmp_path):
    out = run_medgen(["train", *TINY, "ckpt_path=/no/such/run/last.ckpt"], cwd=tmp_path)
    assert out.returncode != 0
    assert "/no/such/run/last.ckpt" in out.stderr
    assert not list(tmp_path.rglob("*.ckpt"))


def _run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("metrics.json"))


def test_fast_run_writes_outputs_and_resumes(tmp_path):
    out = run_medgen(["train", *TINY, "debug=fast", "trainer.max_epochs=2"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = _run_dirs(tmp_path / "outputs" / "train")
    assert (run / "config.yaml").is_file() and (run / ".hydra" / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run / "provenance.json").read_text())["seed"] == 42
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 4  # 2 epochs x 2 batches (16 items, batch 8)
    assert "train/loss" in metrics and "val/loss" in metrics

    last = run / "checkpoints" / "last.ckpt"
    out = run_medgen(
        ["train", *TINY, "debug=fast", "trainer.max_epochs=4", f"ckpt_path={last}", "test=true"],
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # resuming from a run's last.ckpt continues in that run's folder (issue 13)
    assert _run_dirs(tmp_path / "outputs" / "train") == [run]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 8  # the step count continues from the checkpoint
    assert "test/loss" in metrics  # test=true ran the test loop on the best checkpoint


def test_multirun_sweeps(tmp_path):
    out = run_medgen(
        ["train", "-m", *TINY, "debug=fast", "trainer.max_epochs=1", "model.lr=0.01,0.1"],
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = _run_dirs(tmp_path / "outputs" / "train")
    assert len(runs) == 2
    assert {r.name for r in runs} == {"0", "1"}
    lrs = sorted(yaml.safe_load((r / "config.yaml").read_text())["model"]["lr"] for r in runs)
    assert lrs == [0.01, 0.1]


@pytest.mark.parametrize("as_module", [False, True], ids=["console-script", "python-m"])
def test_ddp_two_cpu_ranks_train_one_model(tmp_path, as_module):
    """trainer=ddp on 2 CPU processes (Gloo): Lightning relaunches rank 1 into the same run dir."""
    out = run_medgen(
        [
            "train",
            *TINY,
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "debug=fast",
            "trainer.strategy=ddp",
            "trainer.max_epochs=1",
        ],
        cwd=tmp_path,
        timeout=240,
        as_module=as_module,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = _run_dirs(tmp_path / "outputs" / "train")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 1  # 16 items, batch 8, split over 2 ranks: 1 step each
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert [p for p in (tmp_path / "outputs" / "train").iterdir()] == [run]  # one run dir, not two
