"""``medgen <task> [overrides]``: one console command, one Hydra primary config per task.

Each task ``X`` maps to ``conf/X.yaml`` and to the pure function ``medgen.tasks.X.X(cfg)``.
This module only parses the command line and hands over to Hydra, which then provides
``--help``, ``--cfg job``, ``-m`` multirun sweeps and run directories.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

TASKS: dict[str, str] = {
    "train": "train a model (3D diffusion on scans, graph VAE on molecules) with Lightning",
    "sample": "draw samples from a checkpoint: NIfTI volumes or molecules, with provenance",
    "evaluate": "score generated molecules with MOSES / GuacaMol distribution metrics",
    "screen": "score and filter a SMILES/CSV/SDF file of any size (properties, rules, alerts)",
    "data": "unpack packaged data sets (medgen data moses | qm9) into the data folder",
}

# set for child processes, so that DDP ranks relaunched through `python -m medgen` know their task
RELAUNCH_ENV = "MEDGEN_TASK"

# `medgen data moses` reads better than `medgen data dataset=moses`: a bare first word after these
# tasks becomes this config key.
POSITIONAL_KEY: dict[str, str] = {"data": "dataset"}


def config_dir() -> Path:
    """The folder holding Hydra's primary configs (``MEDGEN_CONFIG_DIR`` overrides it)."""
    env = os.environ.get("MEDGEN_CONFIG_DIR")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"medgen's config folder (conf/) was not found next to {here}")


def usage() -> str:
    width = max(map(len, TASKS))
    lines = ["usage: medgen <task> [hydra overrides ...]", "", "tasks:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in TASKS.items()]
    lines += [
        "",
        "examples:",
        "  medgen train debug=fast",
        "  medgen train experiment=phantom32_ddpm",
        "  medgen train model=graph_vae data=smiles debug=fast",
        "  medgen sample ckpt=outputs/train/<run> n=8 sampler=ddim steps=50 out=synth/",
        "  medgen screen input=molecules.smi out=scored.csv rules=[lipinski,pains]",
        "  medgen <task> --help        Hydra's help for that task's config",
        "  medgen <task> --cfg job     print the composed config",
    ]
    return "\n".join(lines)


def run_task(task: str, overrides: list[str]) -> None:
    """Run ``task`` under Hydra with ``overrides`` (Hydra reads them from ``sys.argv``)."""
    import hydra

    module = importlib.import_module(f"medgen.tasks.{task}")
    task_fn = getattr(module, task)

    def _job(cfg):  # Hydra wants a function of the config alone
        return task_fn(cfg)

    _job.__name__ = task
    _job.__module__ = module.__name__
    key = POSITIONAL_KEY.get(task)
    if key and overrides and "=" not in overrides[0] and not overrides[0].startswith("-"):
        overrides = [f"{key}={overrides[0]}", *overrides[1:]]
    # argv[0] is the task's module file: for ranks > 0 Lightning's DDP launcher re-executes
    # `python argv[0] argv[1:]`, and each task module runs itself as a script.
    sys.argv = [str(Path(module.__file__).resolve()), *overrides]
    os.environ[RELAUNCH_ENV] = task
    main_fn = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=task)(_job)
    main_fn()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        from medgen import __version__

        print(f"medgen {__version__}")
        return 0
    task, overrides = args[0], args[1:]
    relaunched = os.environ.get(RELAUNCH_ENV)
    if task not in TASKS and relaunched in TASKS and "LOCAL_RANK" in os.environ:
        # a DDP rank relaunched as `python -m medgen <overrides>`: the task comes from the parent
        task, overrides = relaunched, args
    if task not in TASKS:
        print(f"medgen: unknown task {task!r}\n", file=sys.stderr)
        print(usage(), file=sys.stderr)
        return 2
    run_task(task, overrides)
    return 0


if __name__ == "__main__":  # python -m medgen.cli (also how Lightning's DDP relaunches rank > 0)
    sys.exit(main())
