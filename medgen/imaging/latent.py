"""``LatentDiffusionModule``: stage 2 of latent diffusion, a :class:`DiffusionModule` on the latents
of a frozen stage-1 autoencoder (:mod:`medgen.imaging.autoencoder`), and a
:class:`~medgen.generation.Generator` whose samples are decoded volumes.

Rombach et al. 2022 (https://arxiv.org/abs/2112.10752), in 3D as Pinaya et al. 2022
(https://arxiv.org/abs/2209.07162) and MONAI's 3D LDM tutorial: the diffusion UNet, scheduler,
EMA, class conditioning, validation and sampling are :class:`DiffusionModule`'s, run on
``z * latent_scale`` instead of voxels; ``medgen sample`` draws, shards, resumes and exports
through the same :class:`~medgen.imaging.cohort.VolumeCohort` at the image data's geometry.

- The autoencoder is read from ``model.autoencoder`` (its checkpoint file or run dir) with
  ``weights_only`` loading, frozen, and its inference weights travel inside this module's
  checkpoint; ``hparams["autoencoder"]`` records the stage-1 file's name (never an absolute path),
  its sha256 and hyperparameters, so a shared LDM checkpoint samples without the stage-1 file.
- ``latent_scale`` = 1 / std of the first training batch's latents (the tutorial's scale
  factor), a buffer, so checkpoints carry it (the mean over ranks under DDP).
- The training loss encodes with the frozen autoencoder and runs MONAI's ``DiffusionInferer``
  on the scaled latents: what ``LatentDiffusionInferer.__call__`` does, but with the clean
  latent at hand, which the velocity (RFlow) and v-prediction targets need and MONAI's latent
  inferer does not return. Latents of items seen before are kept in memory by ``source``
  (``cache_latents``: the posterior mean and sigma; each step draws its own z from them).
- Sampling denoises latents with :func:`~medgen.imaging.samplers.reverse_process` unclamped
  (latents have unit std, not the voxels' range; the DDPM scheduler's ``clip_sample`` is off),
  every sampler included, then decodes them with the frozen autoencoder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from medgen.errors import ConfigError, InputFileError, UserError
from medgen.generation import Generated
from medgen.imaging import components as parts
from medgen.imaging.autoencoder import KIND as STAGE1_KIND
from medgen.imaging.autoencoder import AutoencoderModule
from medgen.imaging.diffusion import DiffusionModule
from medgen.records import DataMeta, SampleSettings
from medgen.utils.logging import get_logger
from medgen.utils.provenance import plain_container

log = get_logger(__name__)

KIND = "ldm3d"  # hyper_parameters.kind


def portable_name(file: Path) -> str:
    """A checkpoint's name without the folders above its run: ``<run>/checkpoints/<file>`` for
    a run's checkpoint, else the file name (nothing exported holds an absolute path)."""
    if file.parent.name == "checkpoints":
        return f"{file.parent.parent.name}/checkpoints/{file.name}"
    return file.name


def load_stage1(
    spec: Any, tiles: Mapping[str, Any] | None = None
) -> tuple[AutoencoderModule, dict[str, Any]]:
    """The frozen stage-1 module and its record for ``hparams["autoencoder"]``.

    ``spec``: a checkpoint file or run dir (``model.autoencoder``; a missing or foreign file is a
    one-line :class:`UserError` naming it), or the record a saved LDM holds (the weights then
    come from the LDM's own state dict). ``tiles``: ``tile_size``/``tile_overlap`` that replace
    the stage-1 module's own.
    """
    from medgen.utils.checkpoint import load_medgen_checkpoint
    from medgen.utils.provenance import file_sha256

    spec = plain_container(spec)
    if isinstance(spec, Mapping):
        record = dict(spec)
        if not isinstance(record.get("hparams"), Mapping):
            raise ConfigError("model.autoencoder", "{...}", "a stage-1 checkpoint file or run dir")
        module = AutoencoderModule(**{**record["hparams"], **(tiles or {})})
    else:
        if spec is None or str(spec) in ("", "???"):
            raise ConfigError(
                "model.autoencoder", spec, "a stage-1 checkpoint (medgen train model=autoencoder3d)"
            )
        file, ckpt, kind = load_medgen_checkpoint(spec)
        if kind != STAGE1_KIND:
            raise ConfigError(
                "model.autoencoder",
                str(spec),
                f"an {STAGE1_KIND} checkpoint (this one holds {kind!r})",
            )
        full = AutoencoderModule.from_dict(ckpt, file)
        hp = {k: v for k, v in full.hparams.items() if k not in ("module", "kind")}
        hp.update(discriminator=None, ema_decay=None)  # stage 2 keeps the inference weights only
        module = AutoencoderModule(**{**hp, **(tiles or {})})
        module.autoencoder.load_state_dict(full.inference_network().state_dict())
        record = {"file": portable_name(file), "sha256": file_sha256(file), "hparams": hp}
    module.requires_grad_(False).eval()
    return module, record


class LatentDiffusionModule(DiffusionModule):
    """Latent diffusion on a frozen autoencoder (see the module docstring).

    Args:
        autoencoder: the stage-1 checkpoint file or run dir (``model.autoencoder``), or the
            record a saved LDM holds.
        cache_latents: keep each item's posterior (by ``batch["source"]``) after its first
            encoding; only for data without random augmentation (medgen's sources have none).
        tile_size, tile_overlap: decode (and encode) in windows of this many image voxels;
            None: the autoencoder's own setting.
        network, scheduler, optimizer, ...: as :class:`DiffusionModule`; the UNet's
            ``in_channels``/``out_channels`` default to the autoencoder's latent channels, a
            DDPM scheduler never clips (latents are not in [-1, 1]).
    """

    default_batch_size: ClassVar[int] = 2  # each sample is decoded at full resolution

    def __init__(
        self,
        *,
        autoencoder: Any,
        cache_latents: bool = True,
        tile_size: list[int] | None = None,
        tile_overlap: float | None = None,
        network: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        tiles = {"tile_size": tile_size, "tile_overlap": tile_overlap}
        stage1, record = load_stage1(autoencoder, {k: v for k, v in tiles.items() if v is not None})
        if not isinstance(cache_latents, bool):
            raise ConfigError("model.cache_latents", cache_latents, "true or false")
        net = plain_container(network) or {}
        if "_target_" not in net:  # changes to the default UNet, its channels the latent's
            net = {**parts.UNET, "in_channels": None, "out_channels": None, **net}
        net = parts.node("network", net)
        for key in ("in_channels", "out_channels"):
            if net.get(key) is None:
                net[key] = stage1.latent_channels
            elif int(net[key]) != stage1.latent_channels:
                raise ConfigError(
                    f"model.network.{key}",
                    net[key],
                    f"null or {stage1.latent_channels}, the autoencoder's latent channels",
                )
        sched = parts.node("scheduler", scheduler)
        if "DDPM" in str(sched["_target_"]) and sched.get("clip_sample", True):
            sched["clip_sample"] = False  # x0 predictions of latents must not be clipped to [-1, 1]
        super().__init__(network=net, scheduler=sched, **kwargs)
        self.hparams["kind"] = KIND
        self.hparams["autoencoder"] = record
        self.hparams["cache_latents"] = cache_latents
        self.hparams["tile_size"] = tile_size
        self.hparams["tile_overlap"] = tile_overlap
        self.stage1 = stage1
        self.latent_scale: torch.Tensor
        self.register_buffer("latent_scale", torch.zeros(()))
        self._posteriors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._latent_shapes = False

    # -- shapes ----------------------------------------------------------------------------------
    @property
    def noise_shape(self) -> tuple[int, ...]:
        """(C_z, d, h, w) of the latents the sampler starts from (the data's size / f)."""
        meta = super()._meta_for_sampling()
        return (self.stage1.latent_channels, *self.stage1.latent_size(meta.spatial_size))

    def check_data(self, meta: DataMeta) -> None:
        """The data must fit the autoencoder (channels, sizes divisible by its compression) and
        its latents the UNet (sizes / f divisible by the UNet's levels)."""
        ae = self.stage1.hparams["network"]
        if int(ae.get("in_channels", 1)) != meta.channels:
            raise ConfigError(
                "model.autoencoder",
                self.hparams["autoencoder"]["file"],
                f"an autoencoder of {meta.channels} channels, the data's (it has "
                f"{ae.get('in_channels', 1)}): train stage 1 on the same data settings",
            )
        latent = self.stage1.latent_size(meta.spatial_size)
        factor = parts.spatial_factor(self.hparams["network"])
        if any(s % factor for s in latent):
            f = self.stage1.compression
            raise ConfigError(
                "data.spatial_size",
                list(meta.spatial_size),
                f"sizes divisible by {f * factor}: the autoencoder's compression {f} times "
                f"{factor} for a latent UNet of {len(self.hparams['network']['channels'])} levels",
            )

    def train(self, mode: bool = True) -> LatentDiffusionModule:
        super().train(mode)
        self.stage1.eval()  # frozen: always in inference mode
        return self

    # -- latents ---------------------------------------------------------------------------------
    @torch.no_grad()
    def posterior(
        self, x: torch.Tensor, sources: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_mu, z_sigma)`` of volumes ``x`` (B, C, D, H, W), unscaled; items whose ``sources``
        were encoded before come from the cache (``cache_latents``)."""
        use = bool(self.hparams["cache_latents"]) and sources is not None
        keys = [str(s) for s in sources] if use and sources is not None else []
        todo = [k for k in range(x.shape[0]) if not use or keys[k] not in self._posteriors]
        if todo:
            mu, sigma = self.stage1.encode(x[todo])
            if not use:
                return mu, sigma
            for j, k in enumerate(todo):
                self._posteriors[keys[k]] = (mu[j].cpu(), sigma[j].cpu())
        pairs = [self._posteriors[k] for k in keys]
        return (
            torch.stack([p[0] for p in pairs]).to(x.device),
            torch.stack([p[1] for p in pairs]).to(x.device),
        )

    def latents(
        self, batch: Mapping[str, Any], *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Scaled latents ``z * latent_scale`` of ``batch["image"]``, z drawn from the posterior
        (with ``generator`` when given); sets ``latent_scale`` from the first batch."""
        x = batch["image"]
        mu, sigma = self.posterior(x, batch.get("source"))
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + sigma * eps  # (B, C_z, d, h, w)
        if float(self.latent_scale) <= 0.0:
            self.set_latent_scale(z)
        return z * self.latent_scale

    @torch.no_grad()
    def set_latent_scale(self, z: torch.Tensor) -> None:
        """``latent_scale`` = 1 / std(z) (MONAI's LDM tutorial), averaged over DDP ranks."""
        std = z.float().std()
        if self._trainer is not None and self.trainer.world_size > 1:
            std = self.trainer.strategy.reduce(std, reduce_op="mean")
        if not torch.isfinite(std) or float(std) <= 0:
            raise FloatingPointError(f"latents of the first batch have std {float(std)}")
        self.latent_scale.fill_(1.0 / float(std))
        log.info("latent scale factor 1/std = %.4f", float(self.latent_scale))

    def diffusion_loss(self, batch: dict[str, Any], **kwargs: Any) -> torch.Tensor:
        """:meth:`DiffusionModule.diffusion_loss` on the scaled latents of ``batch``."""
        z = self.latents(batch, generator=kwargs.get("generator"))
        return super().diffusion_loss({**batch, "image": z}, **kwargs)

    # -- sampling --------------------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, x_T: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Volumes (B, C, D, H, W) in [-1, 1] from initial latent noise ``x_T`` (B, C_z, d, h, w):
        :meth:`DiffusionModule.denoise` on the latents, then the autoencoder's decoder."""
        if tuple(x_T.shape[1:]) != self.noise_shape:
            raise ValueError(f"x_T must be (B, *{self.noise_shape}), got {tuple(x_T.shape)}")
        if float(self.latent_scale) <= 0.0:
            raise UserError("the latent scale is unset: train the model before sampling")
        z = super().denoise(x_T, clamp=False, **kwargs)
        return self.stage1.decode(z / self.latent_scale).clamp(-1.0, 1.0)

    def generate(self, indices: Sequence[int], settings: SampleSettings) -> Generated:
        """:meth:`DiffusionModule.generate` with latent noise (``noise_shape``): ``items`` are
        the decoded volumes (B, C, D, H, W) float32, CPU, [-1, 1]."""
        self._latent_shapes = True
        try:
            return super().generate(indices, settings)
        finally:
            self._latent_shapes = False

    def _meta_for_sampling(self) -> DataMeta:
        meta = super()._meta_for_sampling()
        if not self._latent_shapes:
            return meta
        c, *size = self.noise_shape  # the shape the inherited generate draws x_T in
        return DataMeta(
            source="latent",
            spatial_size=(size[0], size[1], size[2]),
            spacing=meta.spacing,
            affine=meta.affine,
            intensity=meta.intensity,
            channels=c,
            channel_names=tuple(f"z{i}" for i in range(c)),
        )

    # -- checkpoints -----------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, map_location: str | torch.device = "cpu"
    ) -> LatentDiffusionModule:
        """Rebuild from an ``ldm3d`` checkpoint (``weights_only=True``): UNet, EMA, the frozen
        autoencoder and the latent scale, all from the one file; eval mode."""
        from medgen.utils.checkpoint import load_medgen_checkpoint, load_weights

        file, ckpt, kind = load_medgen_checkpoint(path, map_location=map_location)
        if kind != KIND:
            raise InputFileError(f"checkpoint {file} holds kind={kind!r}, not a {KIND} model")
        hp = {k: v for k, v in ckpt["hyper_parameters"].items() if k not in ("kind", "module")}
        try:
            for name in parts.DEFAULTS:  # before anything is imported
                parts.target_class(name, parts.node(name, hp.get(name)), from_checkpoint=True)
            if not isinstance(hp.get("autoencoder"), Mapping):
                raise ConfigError("model.autoencoder", hp.get("autoencoder"), "a stage-1 record")
            module = cls(**hp)
        except (UserError, TypeError) as err:
            raise InputFileError(f"checkpoint {file}: its hyper_parameters: {err}") from err
        load_weights(module, ckpt["state_dict"], file)
        if isinstance(map_location, str | torch.device):
            module.to(map_location)
        return module.eval()
