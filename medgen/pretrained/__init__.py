"""Trained models that ship inside the package: ``ckpt=pretrained:<name>``.

``registry.json`` in this folder lists each shipped model: its file (``<name>.ckpt`` beside it),
sha256 and size, what it is, and how it was made (the experiment under ``experiments/``, commit,
hardware, wall time, headline metrics, the data's licence). :func:`resolve` turns a name into the
file after checking its sha256 against the registry, on every load;
:func:`medgen.utils.checkpoint.resolve_checkpoint` calls it for any ``pretrained:<name>``, so the
name works wherever a checkpoint path does (``medgen sample ckpt=``, ``load_generator``,
``MoleculeVAE.from_checkpoint``, ``model.autoencoder=`` of a latent diffusion model).

Shipped files are *slimmed* training checkpoints (:mod:`medgen.pretrained.slim`): weights and
hyperparameters only, the EMA weights stored once as the network's own. They load with
``torch.load(weights_only=True)`` like any medgen checkpoint.

``$MEDGEN_PRETRAINED_DIR`` names another folder (its own ``registry.json`` and files) to use
instead of this one: a site's model store, or a test's temporary registry.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from medgen.errors import ConfigError, InputFileError, MissingFileError

#: a checkpoint argument that starts with this names a shipped model
PREFIX = "pretrained:"
#: ``$MEDGEN_PRETRAINED_DIR``: a folder with ``registry.json`` used instead of the shipped one
DIR_ENV = "MEDGEN_PRETRAINED_DIR"
REGISTRY = "registry.json"
FORMAT = 1
NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


@dataclass(frozen=True)
class Entry:
    """One shipped model, as ``registry.json`` records it."""

    name: str
    file: str  # "<name>.ckpt", in the registry's folder
    sha256: str
    size_bytes: int
    description: str
    kind: str  # the checkpoint's hyper_parameters.kind (diffusion3d, graph_vae, ...)
    module: str  # the generator class the checkpoint names
    output: str  # "volumes" or "molecules"
    experiment: str  # the recipe and results, a folder under experiments/
    commit: str | None  # the commit the training ran at
    hardware: str
    wall_time_s: float | None  # training time (train + validation loops), seconds
    data_licence: str
    metrics: dict[str, float] = field(default_factory=dict)  # headline metrics, e.g. {"FCD": 1.2}
    parameters: int = 0  # stored weights (the EMA copy is not stored twice)
    storage_dtype: str = "float32"  # float16: weights stored in half precision
    global_step: int | None = None
    source_sha256: str | None = None  # the training checkpoint it was slimmed from

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: size, what it is and its headline metrics."""
        metrics = ", ".join(f"{k}={_number(v)}" for k, v in self.metrics.items())
        mb = self.size_bytes / 1e6
        return f"{self.description} ({mb:.1f} MB)" + (f"; {metrics}" if metrics else "")


def registry_dir() -> Path:
    """The folder of ``registry.json`` and the model files (``$MEDGEN_PRETRAINED_DIR`` or this
    package's own)."""
    env = os.environ.get(DIR_ENV)
    return Path(env).expanduser() if env else Path(__file__).resolve().parent


def registry_file() -> Path:
    return registry_dir() / REGISTRY


def read_registry(folder: Path | None = None) -> dict[str, Entry]:
    """The entries of ``folder``'s ``registry.json`` by name (none when the file is absent)."""
    path = (folder or registry_dir()) / REGISTRY
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputFileError(f"pretrained model registry {path} does not read: {err}") from err
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict) or data.get("format") != FORMAT:
        raise InputFileError(
            f"pretrained model registry {path} is not a format-{FORMAT} registry "
            '({"format": 1, "models": {...}})'
        )
    known = {f.name for f in fields(Entry)}
    entries = {}
    for name, record in models.items():
        try:
            entries[name] = Entry(**{k: v for k, v in record.items() if k in known})
        except TypeError as err:
            raise InputFileError(
                f"pretrained model registry {path}: entry {name!r}: {err}"
            ) from err
        if entries[name].name != name:
            raise InputFileError(f"pretrained model registry {path}: entry {name!r} names "
                                 f"itself {entries[name].name!r}")  # fmt: skip
    return entries


def write_registry(entries: dict[str, Entry], folder: Path | None = None) -> Path:
    """Write ``registry.json`` (sorted, atomically) into ``folder``."""
    from medgen.utils.atomic import atomic_write_json

    path = (folder or registry_dir()) / REGISTRY
    models = {name: entries[name].to_json() for name in sorted(entries)}
    return atomic_write_json(path, {"format": FORMAT, "models": models})


def available() -> list[Entry]:
    """The shipped models, by name."""
    entries = read_registry()
    return [entries[name] for name in sorted(entries)]


def is_pretrained(spec: str | os.PathLike) -> bool:
    """Whether a checkpoint argument names a shipped model (``pretrained:<name>``)."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def entry(name: str) -> Entry:
    """The registry entry of ``name`` (with or without the ``pretrained:`` prefix); an unknown
    name is a :class:`~medgen.errors.ConfigError` listing the available ones."""
    name = name.removeprefix(PREFIX)
    entries = read_registry()
    if name not in entries:
        choices = ", ".join(sorted(entries)) or "none: this medgen ships no trained models yet"
        raise ConfigError("pretrained", name, f"a shipped model name ({choices})")
    return entries[name]


def resolve(name: str) -> Path:
    """The file of shipped model ``name``, after checking its sha256 against the registry.

    An unknown name is a :class:`~medgen.errors.ConfigError` listing the available ones; a
    missing file a :class:`~medgen.errors.MissingFileError`; a file whose sha256 differs from the
    registry's an :class:`~medgen.errors.InputFileError` naming the file and both hashes.
    """
    from medgen.utils.provenance import file_sha256

    found = entry(name)
    path = registry_dir() / found.file
    if not path.is_file():
        raise MissingFileError(
            f"pretrained model {found.name}: its file {path} is missing (listed in "
            f"{registry_file()}); reinstall medgen"
        )
    digest = file_sha256(path)
    if digest != found.sha256:
        raise InputFileError(
            f"pretrained model {found.name}: {path} has sha256 {digest}, but {registry_file()} "
            f"records {found.sha256}: the file is damaged or was replaced; reinstall medgen"
        )
    return path


def help_lines() -> list[str]:
    """What ``medgen sample --help`` says about the shipped models."""
    lines = ["pretrained models (ckpt=pretrained:<name>; docs/pretrained.md):"]
    try:
        models = available()
    except InputFileError as err:
        return [*lines, f"  (unreadable: {err})"]
    if not models:
        return [
            *lines,
            "  none ship with this version (python -m medgen.pretrained.slim makes one)",
        ]
    width = max(len(m.name) for m in models)
    return lines + [f"  {m.name:<{width}}  {m.summary()}" for m in models]


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
