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

from medgen.errors import UserError
from medgen.imaging.cohort import VolumeCohort, sample_name
from medgen.imaging.layouts import layout_of, sample_files
from medgen.records import DataMeta, SampleSettings
from medgen.utils.logging import get_logger

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
    """
    n = len(volumes)
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    if len(indices) != n or len(set(indices)) != n:
        raise ValueError(f"indices must be {n} distinct integers, got {indices}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {len(labels)} label maps for {n} volumes")
    settings = settings or SampleSettings()
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
