"""One run folder per job, whatever started its processes.

Hydra names a run folder after the time it starts. One process, or Lightning's own DDP launcher
(which passes the parent's folder to the ranks it starts), is fine; but processes started by
someone else each pick their own time. :func:`run_dir_overrides` fixes the folder before Hydra
makes it, in this order:

1. ``hydra.run.dir=...`` given on the command line: used as it is.
2. ``$MEDGEN_RUN_DIR``: set it before the launcher starts the processes.
3. ``medgen train ckpt_path=<run folder or its last.ckpt>``: the resumed run's own folder, so
   checkpoints and metric curves stay in one place (another checkpoint — a branch from the middle
   of a run — starts a new folder).
4. SLURM (``srun``): ``<log_dir>/<task>/slurm-<job id>[_<array task>]``; a requeued job gets the
   same folder back, which is where Lightning looks for its ``hpc_ckpt_*.ckpt``.
5. ``torchrun``: rank 0 picks the time-stamped name and hands it to the others through the
   launcher's TCP store.

Ranks other than 0 also get ``hydra.output_subdir=null`` and a log file of their own, as
Lightning's launcher gives its children.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

RUN_DIR_ENV = "MEDGEN_RUN_DIR"
STORE_TIMEOUT_S = 300
_KEEP: list[Any] = []  # a TCP store rank 0 hosts must live until the process group reuses it


def run_dir_overrides(task: str, overrides: list[str]) -> list[str]:
    """Hydra overrides that put every process of this job into one run folder (may be empty)."""
    if any(o.lstrip("+").startswith("hydra.run.dir=") for o in overrides):
        return []
    folder: str | None = None
    env = os.environ.get(RUN_DIR_ENV)
    ckpt = _value(overrides, "ckpt_path")
    if env:
        folder = _quoted(env)
    elif task == "train" and ckpt and (run := resumed_run_folder(ckpt)) is not None:
        folder = _quoted(str(run))
    elif name := slurm_job_name():
        folder = f"${{paths.log_dir}}/${{task_name}}/{name}"
    elif _torchrun_world() > 1:
        stamp = agree_with_rank_zero(time.strftime("%Y-%m-%d_%H-%M-%S"))
        folder = f"${{paths.log_dir}}/${{task_name}}/{stamp}"
    if folder is None:
        return []
    out = [f"hydra.run.dir={folder}"]
    rank = global_rank()
    if rank > 0:
        out += ["hydra.output_subdir=null", f"hydra.job.name={task}_rank{rank}"]
    return out


def resumed_run_folder(ckpt: str) -> Path | None:
    """The run folder a resume continues in: ``ckpt`` is a medgen run folder, or that folder's
    ``checkpoints/last.ckpt`` (or a Lightning ``hpc_ckpt_*.ckpt`` in it); else None."""
    path = Path(ckpt).expanduser()
    if path.is_dir():
        run = path
    elif path.name == "last.ckpt" and path.parent.name == "checkpoints":
        run = path.parent.parent
    elif path.name.startswith("hpc_ckpt_") and path.suffix == ".ckpt":
        run = path.parent
    else:
        return None
    is_run = (run / "config.yaml").is_file() or (run / ".hydra").is_dir()
    return run.resolve() if is_run else None


def slurm_job_name() -> str | None:
    """``slurm-<job>`` (``slurm-<array job>_<task>`` in an array) inside a SLURM task, else None."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if not job or "SLURM_PROCID" not in os.environ:
        return None
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"slurm-{job}" + (f"_{task}" if task else "")


def global_rank() -> int:
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def _torchrun_world() -> int:
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return 0
    return int(os.environ.get("WORLD_SIZE", "1"))


def agree_with_rank_zero(value: str) -> str:
    """Rank 0's ``value`` on every rank of a torchrun job, through the launcher's TCP store
    (``MASTER_ADDR:MASTER_PORT``), before the process group exists."""
    import torch.distributed as dist

    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    rank, world = global_rank(), int(os.environ["WORLD_SIZE"])
    timeout = timedelta(seconds=STORE_TIMEOUT_S)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":  # torchrun's agent hosts it
        store = dist.TCPStore(host, port, world_size=None, is_master=False, timeout=timeout)
    else:  # rank 0 hosts it; init_process_group later shares the server (multi-tenant)
        store = dist.TCPStore(host, port, world_size=world, is_master=rank == 0,
                              timeout=timeout, multi_tenant=True)  # fmt: skip
        if rank == 0:
            _KEEP.append(store)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    prefixed = dist.PrefixStore(f"medgen/run_dir/{attempt}", store)
    if rank == 0:
        prefixed.set("name", value)
    return prefixed.get("name").decode()


def _value(overrides: list[str], key: str) -> str | None:
    for item in reversed(overrides):
        name, sep, value = item.lstrip("+").partition("=")
        if sep and name == key and value not in ("", "null"):
            return value.strip("'\"")
    return None


def _quoted(path: str) -> str:
    """A path as a Hydra override value (quoted: it may hold ``=``, ``,`` or spaces)."""
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"
