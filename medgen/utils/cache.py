"""Where medgen keeps what it can recompute: featurized graphs, reference statistics, features.

Every cache lives below one folder, never beside a user's data files (a data folder may be
read-only, shared, or under version control):

- ``medgen <task>`` uses ``paths.cache_dir`` (``conf/paths/default.yaml``: ``$MEDGEN_CACHE_DIR``,
  else ``<paths.data_dir>/cache``);
- the Python API uses :func:`cache_root` (``$MEDGEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/medgen``,
  else ``~/.cache/medgen``) unless it is given a folder.

Each kind of cache has its own subfolder (:data:`KINDS`); deleting any of them only costs the time
to recompute it.
"""

from __future__ import annotations

import os
from pathlib import Path

from medgen.errors import ConfigError
from medgen.utils.logging import get_logger

log = get_logger(__name__)

CACHE_ENV = "MEDGEN_CACHE_DIR"
# subfolder -> what it holds
KINDS: dict[str, str] = {
    "graphs": "featurized molecular graphs of SMILES sources (<name>.graphs-<key>.pt)",
    "reference": "reference statistics for `medgen evaluate` on molecules (.npz)",
    "evaluation": "scan evaluation features and encoder weights (.pt)",
    "nifti": "MONAI PersistentDataset items of NIfTI data (data.cache=disk)",
    "phantoms": "generated phantoms (data.disk_cache=${paths.cache_dir}/phantoms)",
}


def cache_root(root: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``root`` when given (``~`` expanded), else ``$MEDGEN_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/medgen``, else ``~/.cache/medgen``. Nothing is created."""
    if root is not None and str(root) not in ("", "None", "null"):
        return Path(root).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "medgen"


def cache_folder(
    kind: str, root: str | os.PathLike | None = None, *, folder: str | os.PathLike | None = None
) -> Path:
    """``<cache root>/<kind>`` (see :func:`cache_root`), or ``folder`` when given, created. When
    it cannot be created or written (a read-only shared data folder), the per-user default
    (``~/.cache/medgen/<kind>``) is used instead and said so in the log."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; known: {', '.join(KINDS)}")
    if folder is not None and str(folder) not in ("", "None", "null"):
        folder = Path(folder).expanduser()
    else:
        folder = cache_root(root) / kind
    if _writable(folder):
        return folder
    fallback = cache_root(Path.home() / ".cache" / "medgen") / kind
    if fallback != folder and _writable(fallback):
        log.info("cache folder %s is not writable; using %s", folder, fallback)
        return fallback
    raise ConfigError("paths.cache_dir", str(folder), f"a writable folder (or set ${CACHE_ENV})")


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)
