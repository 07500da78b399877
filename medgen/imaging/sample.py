"""Draw synthetic volumes from a trained ``DiffusionModule``: Python API and ``medgen sample``.

This module checks the sampling settings against the model (:func:`resolve_sampling`), draws
in memory (:func:`generate`) and runs ``medgen sample`` (:func:`sample_from_config`). Sample ``i``
of a run seeded with ``s`` depends on ``(s, i)`` only. The per-sample seeded drawing and the
``Trainer.predict`` path that splits the work over devices are :mod:`medgen.imaging.predict`; its
names (``draw_samples``, ``sample_to_folder``, ``ShardSampler``, ...) are re-exported here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medgen.errors import UserError
from medgen.imaging.cohort import CohortSpec
from medgen.imaging.predict import (
    STEP_BAR_MIN_STEPS,
    IndexDataset,
    PendingSamples,
    SampleProgress,
    SampleWriter,
    SamplingModule,
    ShardSampler,
    draw_samples,
    sample_shape,
    sample_to_folder,
    shard,
)
from medgen.imaging.samplers import ALL_SAMPLERS as SAMPLERS
from medgen.imaging.samplers import DEFAULT_STEPS, resolve_sampler
from medgen.utils.checkpoint import resolve_checkpoint
from medgen.utils.provenance import file_sha256

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = [
    "DEFAULT_STEPS",
    "SAMPLERS",
    "STEP_BAR_MIN_STEPS",
    "IndexDataset",
    "PendingSamples",
    "SampleProgress",
    "SampleWriter",
    "SamplingModule",
    "ShardSampler",
    "cohort_spec",
    "draw_samples",
    "generate",
    "load_diffusion",
    "resolve_condition",
    "resolve_sampling",
    "sample_from_config",
    "sample_shape",
    "sample_to_folder",
    "shard",
    "training_config_hash",
]


def resolve_condition(condition: Any, hparams: dict[str, Any]) -> tuple[int | None, str | None]:
    """A class condition given as index or name -> ``(index, name)``; ``(None, None)`` for none."""
    if condition is None:
        return None, None
    num_classes = int(hparams.get("num_classes") or 0)
    meta = hparams.get("data_meta") or {}
    names = list(meta.get("class_names") or hparams.get("class_names") or [])
    if num_classes <= 0:
        raise UserError(
            f"condition={condition!r}: this checkpoint was trained without class conditioning "
            "(num_classes=0); leave condition=null"
        )
    if isinstance(condition, str) and not condition.lstrip("-").isdigit():
        if condition not in names:
            raise UserError(f"condition={condition!r} is not a class of this model: {names}")
        index = names.index(condition)
    else:
        index = int(condition)
        if not 0 <= index < num_classes:
            raise UserError(f"condition={condition!r} is out of range 0..{num_classes - 1}")
    return index, (names[index] if index < len(names) else None)


def resolve_sampling(
    module: Any, sampler: str | None, steps: int | None, guidance_scale: float, condition: Any
) -> tuple[str | None, int | None, int | None, str | None]:
    """Check the sampling settings against the model; fill in its defaults.

    Returns ``(sampler, steps, condition index, condition name)``; ``sampler=None`` becomes the
    model's default (DDIM for DDPM-trained, RFlow for RFlow-trained models) and ``steps=None`` its
    default step count, so that exports record what was actually run.
    """
    hparams = dict(getattr(module, "hparams", {}) or {})
    # every sampler and step count is checked here, before any output folder is prepared
    sampler, steps = resolve_sampler(
        hparams.get("objective", "ddpm"),
        sampler,
        steps,
        int(hparams.get("num_train_timesteps") or 1000),
    )
    guidance_scale = float(guidance_scale)
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise UserError(f"guidance_scale={guidance_scale!r}: must be a finite number >= 0")
    cond, cond_name = resolve_condition(condition, hparams)
    if guidance_scale != 1.0 and cond is None:
        raise UserError(
            f"guidance_scale={guidance_scale}: classifier-free guidance needs a class condition"
        )
    return sampler, (None if steps is None else int(steps)), cond, cond_name


def load_diffusion(ckpt: Any, map_location: str | torch.device = "cpu") -> Any:
    """A ``DiffusionModule`` from a checkpoint file or run dir (an instance is passed through)."""
    if isinstance(ckpt, torch.nn.Module):
        return ckpt
    from medgen.imaging.diffusion import DiffusionModule

    return DiffusionModule.load_medgen_checkpoint(resolve_checkpoint(ckpt), map_location)


def generate(
    ckpt: Any,
    n: int,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 4,
    guidance_scale: float = 1.0,
    condition: int | str | None = None,
    use_ema: bool = True,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Draw samples ``0..n-1`` of the run seeded with ``seed``: ``(n, 1, D, H, W)`` in [-1, 1], CPU.

    ``ckpt`` is a checkpoint file, a run dir, or a ``DiffusionModule``. Sample ``i`` is the same for
    any ``batch_size``. For export to NIfTI use :func:`medgen.imaging.export.export_volumes`, or
    ``medgen sample`` which also splits the work over devices.
    """
    if n < 0 or batch_size < 1:
        raise UserError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    module = load_diffusion(ckpt)
    sampler, steps, cond, _ = resolve_sampling(module, sampler, steps, guidance_scale, condition)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module = module.to(device).eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            indices = list(range(start, min(n, start + batch_size)))
            x = draw_samples(
                module,
                indices,
                seed=seed,
                sampler=sampler,
                steps=steps,
                guidance_scale=float(guidance_scale),
                condition=cond,
                use_ema=use_ema,
                progress=progress,
            )
            chunks.append(x.float().cpu())
    if not chunks:
        return torch.empty((0, *sample_shape(module)))
    return torch.cat(chunks)


# ------------------------------------------------------------------------------ medgen sample


def cohort_spec(
    ckpt_file: str | os.PathLike,
    module: Any,
    *,
    seed: int,
    sampler: str | None,
    steps: int | None,
    guidance_scale: float,
    condition: Any,
    use_ema: bool,
) -> CohortSpec:
    """The export settings for a checkpoint: geometry and intensity from its ``data_meta``."""
    from medgen.imaging.intensity import IntensityMapping

    hparams = dict(getattr(module, "hparams", {}) or {})
    meta = hparams.get("data_meta") or {}
    missing = [k for k in ("affine", "intensity", "spatial_size") if k not in meta]
    if missing:
        raise UserError(
            f"checkpoint {ckpt_file}: hyper_parameters.data_meta lacks {missing}; "
            "was it written by medgen train?"
        )
    sampler, steps, cond, cond_name = resolve_sampling(
        module, sampler, steps, guidance_scale, condition
    )
    return CohortSpec(
        affine=meta["affine"],
        intensity=IntensityMapping.from_dict(dict(meta["intensity"])),
        modality=str(meta.get("modality", "CT")),
        seed=int(seed),
        sampler=sampler,
        steps=steps,
        guidance_scale=float(guidance_scale),
        condition=cond,
        condition_name=cond_name,
        use_ema=bool(use_ema),
        checkpoint_sha256=file_sha256(ckpt_file),
        config_hash=training_config_hash(ckpt_file, hparams),
        name=f"medgen-{meta.get('source', 'synthetic')}",
        source=meta.get("source"),
    )


def training_config_hash(ckpt_file: str | os.PathLike, hparams: dict[str, Any]) -> str:
    """The training run's config hash (its ``provenance.json``), else a hash of the hparams."""
    import json

    from medgen.utils.provenance import config_hash

    for folder in Path(ckpt_file).resolve().parents[:2]:
        prov = folder / "provenance.json"
        if prov.is_file():
            try:
                value = json.loads(prov.read_text()).get("config_hash")
            except ValueError:
                value = None
            if value:
                return str(value)
    return config_hash(hparams)


def sample_from_config(cfg: DictConfig, ckpt_file: str | os.PathLike) -> dict[str, Any]:
    """``medgen sample`` for a ``diffusion3d`` checkpoint: ``cfg.n`` volumes into ``cfg.out``."""
    from omegaconf import OmegaConf

    diffusion = load_diffusion(ckpt_file)
    sampler = cfg.get("sampler")
    steps = cfg.get("steps")
    spec = cohort_spec(
        ckpt_file,
        diffusion,
        seed=int(cfg.seed),
        sampler=None if sampler is None else str(sampler),
        steps=steps,
        guidance_scale=float(cfg.get("guidance_scale", 1.0)),
        condition=cfg.get("condition"),
        use_ema=bool(cfg.get("use_ema", True)),
    )
    # the trainer group's settings (accelerator, devices, strategy, precision, ...); the callbacks,
    # loggers and sampler handling are the sampler's own
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_kwargs.pop("_target_", None)
    return sample_to_folder(
        diffusion,
        spec,
        out=cfg.out,
        n=int(cfg.n),
        batch_size=int(cfg.get("batch_size", 4)),
        overwrite=bool(cfg.get("overwrite", False)),
        preview=bool(cfg.get("preview", True)),
        trainer_kwargs=trainer_kwargs,
    )
