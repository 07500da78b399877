"""The imaging Python API: draw volumes in memory, write volumes as a cohort folder.

    from medgen.imaging.api import export_volumes, generate_volumes
    from medgen.records import DataMeta, Sampler, SampleSettings

    settings = SampleSettings(seed=0, sampler=Sampler.DDIM, steps=50)
    x = generate_volumes("outputs/train/<run>", 8, settings)      # (8, C, D, H, W) in [-1, 1]

``medgen sample`` does both at once, sharded over devices (:func:`medgen.generation.sample_to`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medgen.errors import ConfigError, MissingFileError, UserError
from medgen.imaging.cohort import VolumeCohort, sample_name
from medgen.imaging.layouts import layout_of, sample_files
from medgen.marking import ReleaseOptions, release_options, with_release
from medgen.records import DataMeta, SampleSettings
from medgen.utils.logging import get_logger
from medgen.utils.provenance import file_sha256

log = get_logger(__name__)


def generate_volumes(
    model: Any,
    n: int,
    settings: SampleSettings | None = None,
    *,
    batch_size: int = 4,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Samples ``0..n-1`` of ``settings`` in memory: ``(n, C, D, H, W)`` in [-1, 1], CPU.

    ``model`` is a checkpoint file, a run dir, or a volume :class:`~medgen.generation.Generator`.
    Sample ``i`` is the same for any ``batch_size``. To write a cohort folder (and split the work
    over devices) use ``medgen sample`` / :func:`medgen.generation.sample_to`; to write volumes
    you have, :func:`export_volumes`.
    """
    if n < 0 or batch_size < 1:
        raise UserError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    if isinstance(model, str | os.PathLike):
        from medgen.generation import Output, load_generator

        model, file = load_generator(model)
        if model.output != Output.VOLUMES:
            raise UserError(f"checkpoint {file} holds a {type(model).__name__}, not volumes")
    settings = model.resolve_settings(settings or SampleSettings())
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            indices = list(range(start, min(n, start + batch_size)))
            chunks.append(model.generate(indices, settings).items)
    return torch.cat(chunks) if chunks else model.generate([], settings).items


def export_volumes(
    volumes: Any,
    out: str | os.PathLike,
    *,
    meta: DataMeta,
    settings: SampleSettings | None = None,
    indices: Sequence[int] | None = None,
    labels: Any = None,
    label_names: Mapping[int, str] | None = None,
    checkpoint_sha256: str | None = None,
    config_hash: str | None = None,
    name: str = "medgen-synthetic",
    overwrite: bool = False,
    preview: bool = True,
    layout: str = "decathlon",
    share: bool | None = None,
    audit: bool | None = None,
    allow_memorized: bool | None = None,
    audit_train: str | os.PathLike | None = None,
    evaluation: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    generator: str | None = None,
) -> list[Path]:
    """Write ``volumes`` (N, C, D, H, W) in [-1, 1] as a cohort in ``out``; return image paths.

    ``meta`` gives geometry, intensity mapping and channels (e.g. a checkpoint's
    ``DataMeta.from_dict(hparams["data_meta"])``), ``settings`` what drew the volumes (recorded
    as given). ``indices`` (default 0..N-1) name the samples; ``labels`` (N, 1, D, H, W) integer
    maps go to ``out/labels`` (a joint model's volumes carry their own label channels, decoded
    when ``labels`` is None). ``layout``: ``decathlon`` or ``nnunet``
    (:mod:`medgen.imaging.layouts`; nnU-Net needs label maps and ``label_names``). Samples
    already in ``out`` and intact are not rewritten; samples of the same cohort that ``out``
    holds beyond ``indices`` stay and are listed (logged).

    The release keys are those of ``medgen sample`` (``docs/release.md``); None keeps what
    ``settings`` carries (:func:`medgen.marking.release_options`, all off by default).
    ``share``: no host or absolute path in anything written, checked at the end. ``audit``:
    compare every sample with its nearest training volume before the index files are written
    and raise a ``UserError`` naming the memorized ones unless ``allow_memorized``; the
    training volumes come from ``audit_train`` (a training run folder, NIfTI folder, datalist or
    data config name), else the training run folder of ``checkpoint``, else ``meta.source``.
    ``evaluation``: an ``evaluation.json`` the card quotes. ``checkpoint`` (local, never
    written) also gives ``checkpoint_sha256`` when that is None; ``generator``: the class path
    the marking names. Settings mistakes raise before anything is written.
    """
    n = len(volumes)
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    if len(indices) != n or len(set(indices)) != n:
        raise ValueError(f"indices must be {n} distinct integers, got {indices}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {len(labels)} label maps for {n} volumes")
    settings = settings or SampleSettings()
    given = dict(share=share, audit=audit, allow_memorized=allow_memorized,
                 audit_train=audit_train, evaluation=evaluation, checkpoint=checkpoint,
                 generator=generator)  # fmt: skip
    settings = with_release(settings, _release(settings, given))
    if checkpoint_sha256 is None and checkpoint is not None:
        checkpoint_sha256 = file_sha256(Path(checkpoint).expanduser())
    kind = layout_of(layout)
    if kind != "decathlon":
        settings = settings.replace(extra={**settings.extra, "layout": str(kind)})
    cohort = VolumeCohort(
        out,
        meta,
        settings,
        checkpoint_sha256=checkpoint_sha256,
        config_hash=config_hash,
        name=name,
        label_names=label_names,
    )
    cohort.prepare(overwrite=overwrite)
    done, written = cohort.done(), 0
    for k, index in enumerate(indices):
        if index not in done:
            cohort.write_sample(index, volumes[k], label=None if labels is None else labels[k])
            written += 1
    summary = cohort.finalize(preview=preview)
    log.info(
        "%s holds %d samples; %d given, %d written (%d already there)",
        out,
        summary["count"],
        n,
        written,
        n - written,
    )
    return [Path(out) / sample_files(kind, sample_name(i)).image for i in indices]


def _release(settings: SampleSettings, given: Mapping[str, Any]) -> ReleaseOptions:
    """The release options of :func:`export_volumes`: its keyword values where given, else what
    ``settings`` carries; checked as ``medgen sample`` checks them."""
    from dataclasses import replace

    options = release_options(settings)
    changes: dict[str, Any] = {}
    for key, value in given.items():
        if value is None:
            continue
        if key in ("share", "audit", "allow_memorized"):
            if not isinstance(value, bool):
                raise ConfigError(key, value, "True or False")
            changes[key] = value
        elif key == "checkpoint":  # local: only its sha256 is written
            if not Path(value).expanduser().is_file():
                raise MissingFileError(f"checkpoint={value}: no such file")
            changes[key] = str(Path(value).expanduser().resolve())
        else:
            changes[key] = os.fspath(value)
    return replace(options, **changes).checked()
