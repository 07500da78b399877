"""Shared fixtures: compose medgen's real Hydra configs with outputs pointed at ``tmp_path``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "conf"
TEST_CONFIG_DIR = REPO_ROOT / "tests" / "spine" / "conf"


# Tests of tiny torch models: one thread is fastest for 8^3-16^3 convolutions and small GRU steps,
# and immune to cores oversubscribed by other processes.
ONE_TORCH_THREAD_DIRS = {"imaging", "sampling", "molecules"}


@pytest.fixture(autouse=True)
def _one_torch_thread(request):
    if Path(request.node.path).parent.name not in ONE_TORCH_THREAD_DIRS:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


def compose_at(
    root: Path, task: str, overrides: list[str] | None = None, *, job: bool = False
) -> DictConfig:
    """Compose ``conf/<task>.yaml`` with overrides, as the CLI would, writing under ``root``
    (run dir ``root/run``). ``job=True`` drops the ``hydra`` node, as a Hydra job sees the config
    (what the task functions are given)."""
    GlobalHydra.instance().clear()
    overrides = [f"hydra.searchpath=[file://{TEST_CONFIG_DIR}]", *(overrides or [])]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=task, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(root)
        cfg.paths.data_dir = str(root / "data")
        cfg.paths.log_dir = str(root / "outputs")
        cfg.paths.output_dir = str(root / "run")
        if job:
            del cfg["hydra"]
    return cfg


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose ``conf/<task>.yaml`` with overrides, as the CLI would, writing under ``tmp_path``."""

    def _compose(task: str, overrides: list[str] | None = None, *, job: bool = False):
        return compose_at(tmp_path, task, overrides, job=job)

    yield _compose
    GlobalHydra.instance().clear()


def run_medgen(
    args: list[str],
    *,
    cwd: Path,
    timeout: float = 300,
    env: dict | None = None,
    as_module: bool = False,
) -> subprocess.CompletedProcess:
    """Run the real ``medgen`` console script (or ``python -m medgen``) and capture its output."""
    exe = Path(sys.executable).with_name("medgen")
    use_script = exe.exists() and not as_module
    cmd = [str(exe)] if use_script else [sys.executable, "-m", "medgen"]
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MEDGEN_ROOT": str(cwd)}
    full_env.update(env or {})
    return subprocess.run(
        [*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )
