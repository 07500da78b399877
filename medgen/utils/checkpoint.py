"""Checkpoint lookup and safe loading (``weights_only=True``: no pickled code is ever executed).

Every way a file can fail to be a medgen checkpoint is an :class:`~medgen.errors.InputFileError`
that names the file and says which it is: truncated or corrupt, not a PyTorch checkpoint, refuses
to load (needs pickled code), not a medgen checkpoint, or weights that do not fit the model.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from medgen.errors import InputFileError, MissingFileError

#: how many candidates an "ambiguous folder" error lists before it only counts the rest
MAX_LISTED = 10
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive (since torch 1.6)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Return the checkpoint file for ``path``: a ``.ckpt`` file, or a folder holding one.

    A run dir resolves to ``<dir>/checkpoints/last.ckpt`` (or ``<dir>/last.ckpt``). Any other
    folder resolves to the one checkpoint below it: the one ``last.ckpt`` (one run), else the one
    ``*.ckpt``. A folder holding several runs or checkpoints raises :class:`InputFileError`
    listing them; a missing path raises :class:`MissingFileError` (a ``FileNotFoundError``).
    ``pretrained:<name>`` is a model shipped with medgen (:func:`medgen.pretrained.resolve`:
    its sha256 is checked against the registry each time).
    """
    if isinstance(path, str) and path.startswith("pretrained:"):
        from medgen.pretrained import resolve

        return resolve(path)
    p = Path(path).expanduser()
    if p.is_dir():
        for candidate in (p / "checkpoints" / "last.ckpt", p / "last.ckpt"):
            if candidate.is_file():
                return candidate
        ckpts = sorted(c for c in p.rglob("*.ckpt") if c.is_file())
        candidates = [c for c in ckpts if c.name == "last.ckpt"] or ckpts
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise MissingFileError(f"no checkpoint (*.ckpt) found in run dir {p}")
        listed = [f"  {c}" for c in candidates[:MAX_LISTED]]
        if len(candidates) > MAX_LISTED:
            listed.append(f"  ... and {len(candidates) - MAX_LISTED} more")
        what = "runs" if candidates[0].name == "last.ckpt" else "checkpoints"
        raise InputFileError(
            f"{p} holds {len(candidates)} {what}; pass one run dir or .ckpt file:\n"
            + "\n".join(listed)
        )
    if not p.is_file():
        raise MissingFileError(f"checkpoint not found: {p}")
    return p


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint dict with ``torch.load(weights_only=True)``.

    medgen's modules save only state dicts and plain hyperparameters, so this never needs pickle.
    Raises :class:`InputFileError` naming the file when it is truncated or corrupt, not a PyTorch
    checkpoint, or refuses to load because it needs pickled code.
    """
    p = resolve_checkpoint(path)
    with open(p, "rb") as fh:
        head = fh.read(len(_ZIP_MAGIC))
    if not head:
        raise InputFileError(f"checkpoint {p} is truncated or corrupt: the file is empty")
    if head != _ZIP_MAGIC:  # text, random bytes, a bare pickle, torch's pre-1.6 format
        raise InputFileError(f"checkpoint {p} is not a PyTorch checkpoint (not a torch.save zip)")
    if not zipfile.is_zipfile(p):
        raise InputFileError(f"checkpoint {p} is truncated or corrupt (its zip archive is cut off)")
    with zipfile.ZipFile(p) as archive:
        if not any(name.endswith("/data.pkl") for name in archive.namelist()):
            raise InputFileError(
                f"checkpoint {p} is not a PyTorch checkpoint (a zip archive without data.pkl)"
            )
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        if found is None:
            raise InputFileError(
                f"checkpoint {p} is truncated or corrupt: {_first_line(err)}"
            ) from err
        detail = found.group(1).split(" was not an allowed global")[0].strip()
        raise InputFileError(
            f"checkpoint {p} refuses to load: needs pickled code ({detail}), which medgen never "
            "runs (torch.load with weights_only=True); save plain tensors and values instead"
        ) from err
    except Exception as err:  # noqa: BLE001 - missing zip member, bad CRC, short read, ...
        raise InputFileError(f"checkpoint {p} is truncated or corrupt: {_first_line(err)}") from err


def load_medgen_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[Path, dict[str, Any], str]:
    """``(file, checkpoint dict, kind)`` of the medgen checkpoint at ``path`` (file, run dir or
    ``pretrained:<name>``); a slimmed (shipped) file comes back expanded, EMA copies included.

    Raises :class:`InputFileError` naming the file for every :func:`load_checkpoint` case and
    when it is not a medgen checkpoint: no ``hyper_parameters.kind`` or no ``state_dict``.
    """
    p = resolve_checkpoint(path)
    ckpt = load_checkpoint(p, map_location=map_location)
    if isinstance(ckpt, Mapping) and "medgen_pretrained" in ckpt:  # a shipped, slimmed file
        from medgen.pretrained.slim import expand

        ckpt = expand(ckpt, p)
    is_dict = isinstance(ckpt, Mapping)
    kind = checkpoint_kind(ckpt)
    missing = [] if kind else ["hyper_parameters.kind"]
    if not (is_dict and isinstance(ckpt.get("state_dict"), Mapping)):
        missing.append("state_dict")
    if missing:
        holds = f"keys {sorted(map(str, ckpt))[:8]}" if is_dict else f"a {type(ckpt).__name__}"
        raise InputFileError(
            f"checkpoint {p} is not a medgen checkpoint (no {' and no '.join(missing)}; it "
            f"holds {holds}): pass a checkpoint written by `medgen train`"
        )
    assert kind is not None  # else "hyper_parameters.kind" is missing, raised above
    return p, ckpt, kind


def checkpoint_kind(ckpt: Any) -> str | None:
    """The model family a checkpoint holds (``hyper_parameters['kind']``), if recorded."""
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, Mapping) else None
    kind = hparams.get("kind") if isinstance(hparams, Mapping) else None
    return kind if isinstance(kind, str) else None


def load_weights(
    module: torch.nn.Module, state_dict: Mapping[str, Any], path: str | os.PathLike
) -> None:
    """``module.load_state_dict(state_dict)`` (strict); weights that do not fit the module
    rebuilt from the checkpoint's hyperparameters raise :class:`InputFileError` naming the file
    ``path`` and the first mismatching keys."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as err:
        own = module.state_dict()
        problems = [
            f"{k}: {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
            for k, v in state_dict.items()
            if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
        ]
        problems += [f"missing {k}" for k in own if k not in state_dict]
        problems += [f"unexpected {k}" for k in state_dict if k not in own]
        shown = "; ".join(problems[:5]) or _first_line(err)
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise InputFileError(
            f"checkpoint {path}: its weights do not fit the {type(module).__name__} rebuilt "
            f"from its hyper_parameters: {shown}{more}"
        ) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
