"""``screen`` and ``evaluate`` leave no time-stamped run folder unless asked (``keep_run=true``,
``hydra.run.dir=...``, ``$MEDGEN_RUN_DIR``; ``evaluate`` without ``out`` writes into one)."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from medgen.cli import keeps_run_folder
from tests.conftest import run_medgen

MOLS = "CCO\nc1ccccc1O\nCC(=O)Nc1ccc(O)cc1\n"


def _screen(tmp_path, *extra: str):
    (tmp_path / "mols.smi").write_text(MOLS)
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    args = ["screen", "input=mols.smi", "out=hits.csv", "n_jobs=1", "progress=false", *extra]
    return run_medgen(args, cwd=tmp_path, env={"TMPDIR": str(scratch)}), scratch


def test_screen_leaves_no_run_folder(tmp_path):
    out, scratch = _screen(tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "hits.csv").is_file()
    summary = json.loads((tmp_path / "hits.summary.json").read_text())
    assert summary["summary"]["written"] == 3
    assert not (tmp_path / "outputs").exists()
    assert list(scratch.iterdir()) == []  # the temporary run dir Hydra was given is gone
    assert "screening summary" in out.stdout + out.stderr  # the log still reaches the terminal


@pytest.mark.slow
def test_screen_keep_run_keeps_one(tmp_path):
    out, _ = _screen(tmp_path, "keep_run=true")
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "screen").iterdir()
    assert (run / "summary.json").is_file() and (run / ".hydra" / "config.yaml").is_file()


def test_which_jobs_keep_their_run_folder(monkeypatch):
    monkeypatch.delenv("MEDGEN_RUN_DIR", raising=False)
    screen = OmegaConf.create({"keep_run": False, "out": "hits.csv"})
    evaluate = OmegaConf.create({"keep_run": False, "out": "metrics.json"})
    assert not keeps_run_folder("screen", screen, [])
    assert not keeps_run_folder("evaluate", evaluate, [])
    assert keeps_run_folder("evaluate", OmegaConf.create({"keep_run": False, "out": None}), [])
    assert keeps_run_folder("screen", OmegaConf.create({"keep_run": True}), [])
    assert keeps_run_folder("screen", screen, ["hydra.run.dir=runs/mine"])
    assert keeps_run_folder("data", OmegaConf.create({}), [])  # tasks without a say keep one
    monkeypatch.setenv("MEDGEN_RUN_DIR", "runs/job")
    assert keeps_run_folder("screen", screen, [])


def test_keep_run_is_a_checked_setting(tmp_path):
    out, _ = _screen(tmp_path, "keep_run=maybe")
    assert out.returncode == 2 and "keep_run" in out.stderr
    assert not (tmp_path / "outputs").exists()
