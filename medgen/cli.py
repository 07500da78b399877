"""``medgen <task> [overrides]``: one console command, one Hydra primary config per task.

Each task ``X`` maps to ``conf/X.yaml`` and to the pure function ``medgen.tasks.X.X(cfg)``.
This module only parses the command line and hands over to Hydra, which then provides
``--help``, ``--cfg job``, ``-m`` multirun sweeps and run directories.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from medgen.errors import UserError

TASKS: dict[str, str] = {
    "train": "train a model (3D diffusion on scans, graph VAE on molecules) with Lightning",
    "sample": "draw samples from a checkpoint: NIfTI volumes or molecules, with provenance",
    "evaluate": "judge generated molecules (MOSES, GuacaMol) or scan cohorts (fidelity, ...)",
    "screen": "score and filter a SMILES/CSV/SDF file of any size (properties, rules, alerts)",
    "data": "unpack packaged data sets (medgen data moses | qm9 | qm9_stereo) into the data folder",
    "inspect": "say whether medgen made a file (NIfTI, CSV, SDF, ...), from which checkpoint",
}

# set for child processes, so that DDP ranks relaunched through `python -m medgen` know their task
RELAUNCH_ENV = "MEDGEN_TASK"

# `medgen data moses` reads better than `medgen data dataset=moses`: a bare first word after these
# tasks becomes this config key.
POSITIONAL_KEY: dict[str, str] = {"data": "dataset", "inspect": "path"}
# read-only tasks: run on the composed config without a Hydra run folder
NO_RUN_DIR = ("inspect",)
# task -> module under medgen.tasks, where the names differ (a module named ``inspect`` would
# shadow the standard library's when a task module runs as a script, e.g. a relaunched DDP rank)
TASK_MODULES: dict[str, str] = {"inspect": "inspection"}


def task_module(task: str) -> str:
    """The module that holds task ``task`` (a function of the same name)."""
    return f"medgen.tasks.{TASK_MODULES.get(task, task)}"


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
        "  medgen sample ckpt=pretrained:<name> n=8 out=synth/   (medgen sample --help lists them)",
        "  medgen screen input=molecules.smi out=scored.csv rules=[lipinski,pains]",
        "  medgen <task> --help        that task's config groups and settings, with comments",
        "  medgen <task> --cfg job     print the composed config",
    ]
    return "\n".join(lines)


def run_task(task: str, overrides: list[str]) -> None:
    """Run ``task`` under Hydra with ``overrides`` (Hydra reads them from ``sys.argv``).

    A :class:`~medgen.errors.UserError` raised by the task is re-raised here, outside Hydra (which
    would print a traceback), after the run folder Hydra made for it is removed again when it holds
    nothing but Hydra's own files.
    """
    import hydra

    module = importlib.import_module(task_module(task))
    task_fn = getattr(module, task)
    failed: list[tuple[UserError, Path | None]] = []

    def _job(cfg):  # Hydra wants a function of the config alone
        try:
            return task_fn(cfg)
        except UserError as err:
            failed.append((err, _hydra_run_dir()))
            return None

    _job.__name__ = task
    _job.__module__ = module.__name__
    # argv[0] is the task's module file: for ranks > 0 Lightning's DDP launcher re-executes
    # `python argv[0] argv[1:]`, and each task module runs itself as a script.
    assert module.__file__ is not None  # a task is a module loaded from its .py file
    sys.argv = [str(Path(module.__file__).resolve()), *overrides]
    os.environ[RELAUNCH_ENV] = task
    main_fn = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=task)(_job)
    main_fn()
    if failed:
        err, run_dir = failed[0]
        if run_dir is not None:
            _remove_if_only_hydra(run_dir)
        raise err


def _hydra_run_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not inside a Hydra job
        return None


def _remove_if_only_hydra(run_dir: Path) -> None:
    """Delete ``run_dir`` (and its parents up to the log folder) when it holds only what Hydra
    writes itself (``.hydra/`` and the job log): a refused run leaves no folder behind."""
    import shutil

    if not run_dir.is_dir():
        return
    if any(p.name != ".hydra" and p.suffix != ".log" for p in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in list(run_dir.parents)[:2]:  # outputs/<task>/ and outputs/, when left empty
        if parent in _EXISTED_BEFORE or not parent.is_dir() or any(parent.iterdir()):
            break
        parent.rmdir()


# folders that existed before this process ran a task: never removed by the cleanup above
_EXISTED_BEFORE: set[Path] = set()


def check_task(task: str, overrides: list[str]) -> Any:
    """Compose ``task``'s config with ``overrides`` and run the task's own ``check(cfg)``, before
    Hydra makes a run folder. Composition problems (unknown key or group, bad override syntax)
    become a :class:`~medgen.errors.UserError` of one line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    module = importlib.import_module(task_module(task))
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3", job_name=task):
            cfg = compose(config_name=task, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        text = " ".join(str(err).split())
        raise UserError(f"bad override: {text}") from err
    root = Path(str(cfg.paths.get("log_dir", "outputs"))).expanduser().resolve()
    _EXISTED_BEFORE.update(p for p in (root, root / task) if p.exists())
    check = getattr(module, "check", None)
    if check is not None:
        check(cfg)
    return cfg


# ---- `medgen <task> --help`: the groups this task composes and each key's comment from its YAML

HELP_FLAGS = ("-h", "--help")
_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w@.-]*|'[^']*'|\"[^\"]*\"):(?:\s|$)")


def yaml_comments(text: str) -> tuple[str, dict[str, str]]:
    """The leading comment block of a YAML config (its description) and the comment lines
    right above each key, by dotted key path (``{"n": "how many samples", "a.b": ...}``).
    A leading block directly above ``defaults:`` or ``_target_:`` describes the file, not the key.
    """
    header: list[str] = []
    comments: dict[str, str] = {}
    pending: list[str] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    in_header = True
    owner: str | None = None  # a commented key the next uncommented line may share it with
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            body = stripped.lstrip("#").strip()
            if not body.startswith("@package"):
                pending.append(body)
            continue
        if in_header:
            in_header = False
            match = _KEY_LINE.match(line)
            if not stripped or (match and match["key"] in ("defaults", "_target_")):
                header, pending = pending, []
        match = _KEY_LINE.match(line)
        if not stripped or stripped.startswith("-") or match is None:
            if not stripped:
                pending, owner = [], None
            continue
        indent, key = len(match["indent"]), match["key"].strip("'\"")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([*(k for _, k in stack), key])
        stack.append((indent, key))
        if pending:
            comments[path], owner = " ".join(pending), path
        elif owner is not None and re.search(rf"\b{re.escape(key)}\b", comments[owner]):
            comments[path] = f"(see {owner.rpartition('.')[2]})"  # one comment over two keys
        pending = []
    return "\n".join(header), comments


def task_help(task: str, overrides: list[str]) -> str:
    """``medgen <task> --help``: what the task does, the config groups it composes (its options,
    the chosen one marked ``*``) and every setting with its value and its comment from the YAML
    files the task's config is made of. ``overrides`` (e.g. ``model=graph_vae``) are applied."""
    import textwrap

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    root = config_dir()
    try:
        with initialize_config_dir(str(root), version_base="1.3", job_name=task):
            cfg = compose(config_name=task, overrides=overrides, return_hydra_config=True)
            loader = GlobalHydra.instance().config_loader()
            defaults = loader.compute_defaults_list(task, overrides, RunMode.RUN).defaults
            choices = {
                str(group): choice
                for group, choice in cfg.hydra.runtime.choices.items()
                if not str(group).startswith("hydra") and "@" not in str(group)
            }
            options = {group: loader.get_group_options(group) for group in choices}
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(f"bad override: {' '.join(str(err).split())}") from err

    description, comments = "", {}
    for entry in defaults:  # later files override earlier ones, as in the composed config
        file = root / f"{entry.config_path}.yaml"
        if str(entry.config_path).startswith("hydra") or not file.is_file():
            continue
        text = file.read_text(encoding="utf-8")
        if text.lstrip().startswith("# @package _global_"):
            continue  # an experiment or debug file overrides keys; it does not define them
        header, found = yaml_comments(text)
        prefix = f"{entry.package}." if entry.package else ""
        comments.update({prefix + key: note for key, note in found.items()})
        if entry.primary:
            description = header

    def wrap(text: str, indent: str) -> list[str]:
        return textwrap.wrap(text, 100, initial_indent=indent, subsequent_indent=indent) or [indent]

    lines = [f"medgen {task}: {TASKS[task]}"]
    lines.append(f"usage: medgen {task} [key=value ...] [group=option ...]")
    if description:
        lines += ["", *(f"  {line}" for line in description.splitlines())]
    if choices:
        lines += ["", "config groups (group=option; * = chosen):"]
        width = max(map(len, choices))
        for group, choice in choices.items():
            names = [f"*{o}" if o == choice else o for o in options[group]]
            chosen = "" if choice is not None else "  (none chosen)"
            text = f"{group + ':':<{width + 1}} {', '.join(names)}{chosen}"
            lines += textwrap.wrap(
                text, 100, initial_indent="  ", subsequent_indent=" " * (width + 4)
            )
    lines += ["", "settings (key=value; ??? = required):"]
    plain = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    for key, value in _leaves(plain):
        shown = "???" if value == "???" else OmegaConf.to_yaml({"v": value}).strip()[3:]
        lines.append(f"  {key}={shown}")
        note = comments.get(key)
        if note:
            lines += wrap(note, "      ")
    if task == "sample":  # what ckpt=pretrained:<name> can name
        from medgen.pretrained import help_lines

        lines += ["", *help_lines()]
    lines += [
        "",
        f"medgen {task} --cfg job   prints the composed config; --hydra-help: Hydra's own flags",
    ]
    return "\n".join(lines)


def _leaves(node: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in node.items():
        if key == "task_name":
            continue
        if isinstance(value, dict) and value:
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def report(task: str, err: BaseException, verbose: bool) -> None:
    """One line on stderr for a user's mistake; the traceback too when asked for."""
    if verbose:
        import traceback

        traceback.print_exception(err, file=sys.stderr)
    text = " ".join(str(err).split()) or type(err).__name__
    print(f"medgen {task}: error: {text}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        from medgen import __version__

        print(f"medgen {__version__}")
        return 0
    from medgen.utils.warnings import quiet_third_party

    quiet_third_party()  # known notices of other libraries, not on every run
    task, overrides = args[0], args[1:]
    relaunched = os.environ.get(RELAUNCH_ENV)
    if task not in TASKS and relaunched in TASKS and "LOCAL_RANK" in os.environ:
        # a DDP rank relaunched as `python -m medgen <overrides>`: the task comes from the parent
        task, overrides = relaunched, args
    if task not in TASKS:
        print(f"medgen: unknown task {task!r}\n", file=sys.stderr)
        print(usage(), file=sys.stderr)
        return 2
    key = POSITIONAL_KEY.get(task)
    if key and overrides and "=" not in overrides[0] and not overrides[0].startswith("-"):
        overrides = [f"{key}={overrides[0]}", *overrides[1:]]
    verbose = os.environ.get("HYDRA_FULL_ERROR") == "1"
    for flag in ("verbose=true", "verbose=false"):
        while flag in overrides:  # not a config key: how errors are shown
            overrides.remove(flag)
            verbose = flag == "verbose=true"
    scratch: Path | None = None
    try:
        if any(flag in overrides for flag in HELP_FLAGS):
            text = task_help(task, [o for o in overrides if o not in HELP_FLAGS])
            with contextlib.suppress(BrokenPipeError):  # `medgen train --help | head`
                print(text, flush=True)
            return 0
        # Hydra's own flags (--cfg, --hydra-help, -m sweeps) go straight to Hydra; a sweep's jobs
        # are still checked one by one by their task
        if not any(arg.startswith("-") for arg in overrides):
            cfg = check_task(task, overrides)
            if task in NO_RUN_DIR:
                getattr(importlib.import_module(task_module(task)), task)(cfg)
                return 0
            scratch = None if keeps_run_folder(task, cfg, overrides) else scratch_run_dir(task)
            if scratch is not None:  # Hydra needs a run dir: a temporary one, removed below
                from medgen.utils.launch import _quoted

                overrides = [*overrides, f"hydra.run.dir={_quoted(str(scratch))}"]
            # every process of one job (torchrun, srun, a resume) agrees on one run folder
            from medgen.utils.launch import run_dir_overrides

            overrides = [*overrides, *run_dir_overrides(task, overrides)]
        run_task(task, overrides)
    except UserError as err:
        report(task, err, verbose)
        return 2
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


def keeps_run_folder(task: str, cfg: Any, overrides: list[str]) -> bool:
    """Whether this job leaves its run folder under ``paths.log_dir``: always when asked for
    (``hydra.run.dir=...`` or ``$MEDGEN_RUN_DIR``), else as the task's ``keeps_run_folder(cfg)``
    says (``screen`` and ``evaluate`` only with ``keep_run=true``); tasks without one keep it."""
    from medgen.utils.launch import RUN_DIR_ENV

    if os.environ.get(RUN_DIR_ENV) or any(
        o.lstrip("+").startswith("hydra.run.dir=") for o in overrides
    ):
        return True
    decide = getattr(importlib.import_module(task_module(task)), "keeps_run_folder", None)
    return True if decide is None else bool(decide(cfg))


def scratch_run_dir(task: str) -> Path:
    """A fresh temporary folder to be Hydra's run dir of a job that keeps none."""
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix=f"medgen-{task}-"))
    _EXISTED_BEFORE.add(scratch.parent)  # never removed by a refused run's cleanup
    return scratch


if __name__ == "__main__":  # python -m medgen.cli (also how Lightning's DDP relaunches rank > 0)
    sys.exit(main())
