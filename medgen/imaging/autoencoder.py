"""``AutoencoderModule``: stage 1 of latent diffusion, a KL-regularised 3D autoencoder in Lightning.

The network is MONAI's ``AutoencoderKL`` (Rombach et al. 2022, https://arxiv.org/abs/2112.10752;
Pinaya et al. 2022, https://arxiv.org/abs/2209.07162), built from the ``model.network`` node. It is
trained with offline losses only (no pretrained perceptual network):

- L1 reconstruction, plus ``kl_weight`` times the KL divergence of the posterior
  ``N(mu, sigma^2)`` from ``N(0, 1)``, summed over latent voxels and averaged over the batch
  (as MONAI's LDM tutorial);
- optional: ``ssim_weight`` * (1 - SSIM) (``monai.losses.SSIMLoss``), ``spectral_weight`` * the
  FFT-magnitude loss (``monai.losses.JukeboxLoss``), and an adversarial term from a
  ``PatchDiscriminator`` with ``PatchAdversarialLoss`` (least squares, Isola et al. 2017,
  https://arxiv.org/abs/1611.07004) after ``adv_start_step`` steps.

Validation logs ``val/loss`` (L1 of the posterior-mean reconstruction), ``val/psnr``,
``val/ssim`` and, for CT data with label maps in the batch (phantoms), the mean |HU error|
overall and per tissue (``val/hu_mae/<tissue>``); for a joint image + label model
(``data.labels=true``) these are the image channels', and ``val/label_dice`` is the mean Dice of
the label map decoded from the reconstruction. :meth:`encode` and :meth:`decode` run through
overlapping tiles when ``tile_size`` is set (:mod:`medgen.imaging.tiling`), so large volumes keep
memory bounded. The frozen network is what stage 2 (:mod:`medgen.imaging.latent`) reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar, cast

import pytorch_lightning as pl
import torch
from torch import nn

from medgen.errors import ConfigError, InputFileError, UserError
from medgen.imaging import components as parts
from medgen.imaging.ema import EMA
from medgen.imaging.labels import LabelCodec, codec_of, image_channels
from medgen.imaging.tiling import check_tile, tiled
from medgen.records import DataMeta
from medgen.utils.provenance import plain_container
from medgen.utils.validate import check_arguments

KIND = "autoencoder3d"  # hyper_parameters.kind
AUTOENCODER: dict[str, Any] = {
    "_target_": "monai.networks.nets.AutoencoderKL",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 1,
    "channels": [16, 32, 32],
    "attention_levels": [False, False, False],
    "latent_channels": 3,
    "num_res_blocks": 1,
    "norm_num_groups": 8,
    "with_encoder_nonlocal_attn": False,
    "with_decoder_nonlocal_attn": False,
    "use_flash_attention": False,
}
DISCRIMINATOR: dict[str, Any] = {
    "_target_": "monai.networks.nets.PatchDiscriminator",
    "spatial_dims": 3,
    "in_channels": 1,
    "channels": 16,
    "num_layers_d": 3,
    "norm": "INSTANCE",  # batch norm is unstable at the batch sizes 3D volumes allow
}
ADAMW: dict[str, Any] = {**parts.ADAMW, "lr": 1e-4}
_LIMITS: dict[str, dict[str, float]] = {
    "kl_weight": {"ge": 0.0},
    "adv_weight": {"ge": 0.0},
    "adv_start_step": {"ge": 0},
    "ssim_weight": {"ge": 0.0},
    "spectral_weight": {"ge": 0.0},
    "warmup_steps": {"ge": 0},
    "ema_decay": {"ge": 0.0, "lt": 1.0},
    "gradient_clip": {"gt": 0.0},
}


def network_node(value: Any) -> dict[str, Any]:
    """``model.network`` as a plain dict: an ``AutoencoderKL`` node (a ``_target_``-less one is
    read as changes to the default), checked enough to name the key that is wrong."""
    value = plain_container(value)
    spec = dict(AUTOENCODER) if value is None else dict(value)
    if "_target_" not in spec:
        spec = {**AUTOENCODER, **spec}
    if spec["_target_"] != AUTOENCODER["_target_"]:
        raise ConfigError("model.network._target_", spec["_target_"], AUTOENCODER["_target_"])
    channels = list(spec.get("channels") or [])
    groups = int(spec.get("norm_num_groups", 32))
    if not channels or any(int(c) % groups for c in channels):
        raise ConfigError("model.network.channels", channels, f"multiples of {groups} (groups)")
    if len(spec.get("attention_levels") or []) != len(channels):
        raise ConfigError(
            "model.network.attention_levels",
            spec.get("attention_levels"),
            f"one entry per level of model.network.channels={channels}",
        )
    if int(spec.get("latent_channels", 3)) < 1:
        raise ConfigError("model.network.latent_channels", spec["latent_channels"], ">= 1")
    return spec


def compression_of(network: Mapping[str, Any]) -> int:
    """Spatial compression of an ``AutoencoderKL`` node: one halving per level after the first."""
    return 2 ** (len(network["channels"]) - 1)


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent voxels, averaged over the batch."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1.0)
    return kl.flatten(1).sum(dim=1).mean()


class AutoencoderModule(pl.LightningModule):
    """Stage-1 autoencoder for volumes in [-1, 1] (see the module docstring).

    Args:
        network: ``AutoencoderKL`` node; compression ``2^(len(channels)-1)``, ``latent_channels``.
        optimizer: ``_partial_`` optimizer node (AdamW), also used for the discriminator.
        discriminator: ``PatchDiscriminator`` node; None: no adversarial loss.
        kl_weight: weight of the KL term (small: the latent must stay informative).
        adv_weight: weight of the generator's adversarial loss (and the discriminator's).
        adv_start_step: optimizer steps before the adversarial terms start.
        ssim_weight: weight of 1 - SSIM (0: off).
        spectral_weight: weight of the FFT-magnitude loss (0: off).
        warmup_steps: linear learning-rate warmup.
        ema_decay: keep EMA weights (used for validation and by stage 2); None: none.
        gradient_clip: clip the gradient norm (adversarial training, where Lightning's own
            ``trainer.gradient_clip_val`` does not apply); None: none.
        tile_size: encode/decode windows in image voxels (multiples of the compression); None:
            whole volumes at once.
        tile_overlap: overlap share of neighbouring tiles.
        patch_size: train on random crops of this many voxels per axis (the network is fully
            convolutional: it encodes whole volumes afterwards); None: whole volumes. At 128^3
            a CPU step on whole volumes takes ~100 s, on 48^3 crops ~6 s.
        data_meta: the data's :class:`~medgen.records.DataMeta` (set in :meth:`setup`).
    """

    data_kind: ClassVar[str] = "scans"  # what it trains on (checked against the data's)

    def __init__(
        self,
        *,
        network: dict[str, Any] | None = None,
        optimizer: dict[str, Any] | None = None,
        discriminator: dict[str, Any] | None = None,
        kl_weight: float = 1e-6,
        adv_weight: float = 0.01,
        adv_start_step: int = 0,
        ssim_weight: float = 0.0,
        spectral_weight: float = 0.0,
        warmup_steps: int = 100,
        ema_decay: float | None = None,
        gradient_clip: float | None = None,
        tile_size: list[int] | None = None,
        tile_overlap: float = 0.25,
        patch_size: list[int] | None = None,
        data_meta: DataMeta | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        args["network"] = network_node(network)
        args["optimizer"] = parts.node("optimizer", optimizer)
        args["discriminator"] = None if discriminator is None else _disc_node(discriminator)
        for key in ("tile_size", "patch_size"):
            args[key] = None if args[key] is None else list(plain_container(args[key]))
        typed = {k: v for k, v in args.items() if k not in ("data_meta", "network")}
        check_arguments(AutoencoderModule.__init__, typed, prefix="model.", limits=_LIMITS)
        parts.target_class("optimizer", args["optimizer"])
        self.compression = compression_of(args["network"])
        self.tile = check_tile(args["tile_size"], float(tile_overlap), self.compression)
        self.patch = check_tile(args["patch_size"], 0.0, self.compression, key="model.patch_size")
        if isinstance(data_meta, DataMeta):
            args["data_meta"] = data_meta.to_dict()
        elif data_meta is not None:
            args["data_meta"] = DataMeta.from_dict(plain_container(data_meta)).to_dict()
        self.save_hyperparameters({"module": f"{__name__}.AutoencoderModule", "kind": KIND, **args})
        self.autoencoder: nn.Module = parts.build("network", args["network"])
        self.ema = EMA(self.autoencoder, decay=ema_decay) if ema_decay is not None else None
        self.discriminator: nn.Module | None = None
        if args["discriminator"] is not None:
            self.discriminator = parts.build("discriminator", args["discriminator"])
        # two optimizers (generator, discriminator) need Lightning's manual optimization
        self.automatic_optimization = self.discriminator is None
        self._losses: dict[str, nn.Module] = {}

    # -- properties ------------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        return int(self.hparams["network"].get("latent_channels", 3))

    @property
    def data_meta(self) -> DataMeta | None:
        meta = self.hparams.get("data_meta")
        return None if meta is None else DataMeta.from_dict(meta)

    def latent_size(self, spatial_size: tuple[int, ...]) -> tuple[int, int, int]:
        """The latent grid (d, h, w) of a volume of ``spatial_size`` voxels; a size that the
        compression does not divide is a :class:`ConfigError` naming ``data.spatial_size``."""
        f, size = self.compression, [int(s) for s in spatial_size]
        if any(s % f for s in size):
            raise ConfigError(
                "data.spatial_size",
                size,
                f"sizes divisible by the autoencoder's compression {f} "
                f"(model.network.channels={list(self.hparams['network']['channels'])})",
            )
        return size[0] // f, size[1] // f, size[2] // f

    def inference_network(self) -> nn.Module:
        """The weights stage 2 and validation use: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.autoencoder

    # -- encode / decode (tiled) -----------------------------------------------------------------
    def encode(
        self, x: torch.Tensor, *, network: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_mu, z_sigma)``, each (B, latent_channels, D/f, H/f, W/f), of ``x`` (B, C, D, H, W)
        in [-1, 1], tile by tile when ``tile_size`` is set."""
        net: Any = network if network is not None else self.inference_network()
        k = self.latent_channels

        def both(v: torch.Tensor) -> torch.Tensor:
            mu, sigma = net.encode(v)
            return torch.cat([mu, sigma], dim=1)

        out = tiled(both, x, roi=self.tile, overlap=float(self.hparams["tile_overlap"]))
        return out[:, :k], out[:, k:]

    def decode(self, z: torch.Tensor, *, network: nn.Module | None = None) -> torch.Tensor:
        """Volumes (B, C, D, H, W) decoded from latents ``z`` (B, latent_channels, d, h, w), tile
        by tile (windows of ``tile_size / f`` latent voxels) when ``tile_size`` is set."""
        net: Any = network if network is not None else self.inference_network()
        roi = None if self.tile is None else [t // self.compression for t in self.tile]
        return tiled(net.decode, z, roi=roi, overlap=float(self.hparams["tile_overlap"]))

    def reconstruct(self, x: torch.Tensor, *, network: nn.Module | None = None) -> torch.Tensor:
        """Decode the posterior mean of ``x``: the deterministic reconstruction."""
        return self.decode(self.encode(x, network=network)[0], network=network)

    # -- Lightning hooks -------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        meta = getattr(dm, "data_meta", None)
        if isinstance(meta, DataMeta):
            self.hparams["data_meta"] = meta.to_dict()
        meta = self.data_meta
        if meta is not None:
            self.check_data(meta)

    def check_data(self, meta: DataMeta) -> None:
        """Refuse data the networks cannot take (also called before a run folder exists, see
        :func:`medgen.tasks.checks.check_train`): the autoencoder's ``in_channels`` and
        ``out_channels`` and the discriminator's ``in_channels`` must be the data's channel
        count (a joint image + label model: 1 + the label code channels), sizes divisible by
        the compression, ``patch_size`` within the volume."""
        nodes = [("network", k, self.hparams["network"]) for k in ("in_channels", "out_channels")]
        if self.hparams["discriminator"] is not None:
            nodes.append(("discriminator", "in_channels", self.hparams["discriminator"]))
        for name, key, node in nodes:
            if int(node.get(key, 1)) != meta.channels:
                what = str(list(meta.channel_names))
                if meta.label_names:  # name the parts, not 16 channel names
                    codes = meta.channels - image_channels(meta)
                    what = f"the image and {codes} label-map channels ({meta.label_encoding})"
                fix = " ".join(f"model.{n}.{k}={meta.channels}" for n, k, _ in nodes)
                raise ConfigError(
                    f"model.{name}.{key}",
                    node.get(key, 1),
                    f"{meta.channels}, the data's channel count ({what}): set {fix}",
                )
        self.latent_size(meta.spatial_size)
        if self.patch is not None and any(
            p > s for p, s in zip(self.patch, meta.spatial_size, strict=True)
        ):
            raise ConfigError(
                "model.patch_size", list(self.patch), f"<= {list(meta.spatial_size)} (data)"
            )

    def on_fit_start(self) -> None:
        if not self.automatic_optimization and self.trainer.gradient_clip_val:
            raise ConfigError(
                "trainer.gradient_clip_val",
                self.trainer.gradient_clip_val,
                "null with a discriminator (two optimizers): set model.gradient_clip instead",
            )

    def configure_optimizers(self):
        factory = parts.build("optimizer", self.hparams["optimizer"])
        warm = max(1, int(self.hparams["warmup_steps"]))

        def schedule(opt):
            lr = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
            return {"scheduler": lr, "interval": "step"}

        opt_g = factory(self.autoencoder.parameters())
        if self.discriminator is None:
            return {"optimizer": opt_g, "lr_scheduler": schedule(opt_g)}
        opt_d = factory(self.discriminator.parameters())
        return [opt_g, opt_d], [schedule(opt_g), schedule(opt_d)]

    def loss(self, name: str) -> nn.Module:
        """MONAI's loss modules, built once when first needed."""
        if name not in self._losses:
            from monai.losses import JukeboxLoss, PatchAdversarialLoss, SSIMLoss

            build = {
                "ssim": lambda: SSIMLoss(spatial_dims=3, data_range=2.0, win_size=7),
                "spectral": lambda: JukeboxLoss(spatial_dims=3),
                "adversarial": lambda: PatchAdversarialLoss(criterion="least_squares"),
            }
            self._losses[name] = build[name]()
        return self._losses[name]

    def adversarial_on(self) -> bool:
        return self.discriminator is not None and self.global_step >= int(
            self.hparams["adv_start_step"]
        )

    def reconstruction_losses(
        self, x: torch.Tensor, recon: torch.Tensor, z_mu: torch.Tensor, z_sigma: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The generator's loss terms (unweighted) and their weighted ``total``."""
        hp = self.hparams
        terms = {"l1": (recon.float() - x.float()).abs().mean(), "kl": kl_divergence(z_mu, z_sigma)}
        total = terms["l1"] + hp["kl_weight"] * terms["kl"]
        if hp["ssim_weight"] > 0:
            terms["ssim"] = self.loss("ssim")(recon.float(), x.float())
            total = total + hp["ssim_weight"] * terms["ssim"]
        if hp["spectral_weight"] > 0:
            terms["spectral"] = self.loss("spectral")(recon.float(), x.float())
            total = total + hp["spectral_weight"] * terms["spectral"]
        if self.adversarial_on():
            assert self.discriminator is not None
            logits = self.discriminator(recon.contiguous().float())[-1]
            terms["adv"] = self.loss("adversarial")(
                logits, target_is_real=True, for_discriminator=False
            )
            total = total + hp["adv_weight"] * terms["adv"]
        terms["total"] = total
        return terms

    def random_patch(self, x: torch.Tensor) -> torch.Tensor:
        """A random ``patch_size`` crop of ``x`` (B, C, D, H, W), one place per batch (the
        global RNG, seeded by the run); ``x`` itself without ``patch_size``."""
        if self.patch is None:
            return x
        room = [s - p for p, s in zip(self.patch, x.shape[2:], strict=True)]
        starts = [int(torch.randint(0, r + 1, ())) for r in room]
        (d, h, w), (pd, ph, pw) = starts, self.patch
        return x[:, :, d : d + pd, h : h + ph, w : w + pw]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        x = self.random_patch(batch["image"])  # (B, C, D, H, W) in [-1, 1]
        recon, z_mu, z_sigma = self.autoencoder(x)
        terms = self.reconstruction_losses(x, recon, z_mu, z_sigma)
        if not torch.isfinite(terms["total"]):
            raise FloatingPointError(
                f"non-finite autoencoder loss ({terms['total'].item()}) at global step "
                f"{self.global_step}; batch sources: {list(batch.get('source', []))}"
            )
        bs = x.shape[0]
        for key, value in terms.items():
            name = "train/loss" if key == "total" else f"train/{key}"
            self.log(name, value, prog_bar=key == "total", batch_size=bs)
        if self.automatic_optimization:
            return terms["total"]
        self._manual_steps(x, recon, terms["total"])
        return None

    def _manual_steps(self, x: torch.Tensor, recon: torch.Tensor, loss_g: torch.Tensor) -> None:
        """One generator step, then (once adversarial training is on) one discriminator step."""
        opt_g, opt_d = cast(Any, self.optimizers())
        sched_g, sched_d = self.lr_schedulers()  # type: ignore[misc]
        clip = self.hparams["gradient_clip"]
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        if clip:
            self.clip_gradients(opt_g, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        opt_g.step()
        sched_g.step()
        if self.adversarial_on():
            assert self.discriminator is not None
            adv = self.loss("adversarial")
            fake = self.discriminator(recon.detach().contiguous().float())[-1]
            real = self.discriminator(x.contiguous().float())[-1]
            loss_d = 0.5 * (
                adv(fake, target_is_real=False, for_discriminator=True)
                + adv(real, target_is_real=True, for_discriminator=True)
            )
            opt_d.zero_grad()
            self.manual_backward(self.hparams["adv_weight"] * loss_d)
            if clip:
                self.clip_gradients(opt_d, gradient_clip_val=clip, gradient_clip_algorithm="norm")
            opt_d.step()
            sched_d.step()
            self.log("train/disc", loss_d, batch_size=x.shape[0])

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.autoencoder, step=self.trainer.global_step)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "test")

    def _evaluate(self, batch: dict[str, Any], split: str) -> torch.Tensor:
        x = batch["image"]
        recon = self.reconstruct(x).clamp(-1.0, 1.0)
        meta = self.data_meta
        metrics = reconstruction_metrics(
            x,
            recon,
            labels=batch.get("label"),
            intensity=None if meta is None else meta.intensity,
            codec=None if meta is None else codec_of(meta),
        )
        bs = x.shape[0]
        for key, value in metrics.items():
            if not torch.isfinite(value):
                raise FloatingPointError(
                    f"non-finite validation metric {split}/{key} ({value.item()}) at global step "
                    f"{self.global_step}; batch sources: {list(batch.get('source', []))}"
                )
            name = f"{split}/loss" if key == "l1" else f"{split}/{key}"
            self.log(name, value, prog_bar=key == "l1", sync_dist=True, batch_size=bs)
        return metrics["l1"]

    # -- checkpoints -----------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, map_location: str | torch.device = "cpu"
    ) -> AutoencoderModule:
        """Rebuild from a medgen ``autoencoder3d`` checkpoint (``weights_only=True``), eval mode."""
        from medgen.utils.checkpoint import load_medgen_checkpoint

        file, ckpt, kind = load_medgen_checkpoint(path, map_location=map_location)
        if kind != KIND:
            raise InputFileError(f"checkpoint {file} holds kind={kind!r}, not a {KIND} model")
        return cls.from_dict(ckpt, file).to(map_location).eval()

    @classmethod
    def from_dict(cls, ckpt: Mapping[str, Any], file: str | os.PathLike) -> AutoencoderModule:
        """Rebuild from a loaded checkpoint dict (``hyper_parameters``, ``state_dict``); ``file``
        names it in errors. A checkpoint's targets may only be MONAI's and torch's classes."""
        from medgen.utils.checkpoint import load_weights

        hp = {k: v for k, v in ckpt["hyper_parameters"].items() if k not in ("kind", "module")}
        try:
            for name in ("network", "optimizer", "discriminator"):
                if hp.get(name) is not None:
                    _checkpoint_target(name, hp[name])
            module = cls(**hp)
        except (UserError, TypeError) as err:
            raise InputFileError(f"checkpoint {file}: its hyper_parameters: {err}") from err
        load_weights(module, ckpt["state_dict"], file)
        return module


@torch.no_grad()
def reconstruction_metrics(
    x: torch.Tensor,
    recon: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    intensity: Mapping[str, Any] | None = None,
    codec: LabelCodec | None = None,
) -> dict[str, torch.Tensor]:
    """Reconstruction quality of ``recon`` against ``x`` (both (B, C, D, H, W) in [-1, 1]).

    ``l1`` (mean |error| over every channel: the training loss's term), ``psnr`` (dB,
    peak-to-peak 2) and ``ssim`` (7^3 windows), means over the batch; for a ``ct_window``
    intensity mapping also ``hu_mae`` (mean |error| in HU), and with a label map ``labels``
    (B, 1, D, H, W) ``hu_mae/<tissue>`` for each phantom tissue present
    (:data:`medgen.imaging.phantom.LABEL_NAMES`), over that tissue's voxels.

    With ``codec`` (a joint image + label model) the last ``codec.channels`` channels are label
    codes: ``psnr``, ``ssim`` and the HU errors are the image channels' only, and with
    ``labels`` ``label_dice`` is the mean Dice of the label map decoded from ``recon`` over the
    foreground labels present in ``labels`` (MONAI's ``compute_dice``).
    """
    from monai.metrics import PSNRMetric, SSIMMetric

    x, recon = x.float(), recon.float()
    out = {"l1": (recon - x).abs().mean()}
    n = x.shape[1] - (codec.channels if codec is not None else 0)  # image channels
    if codec is not None and labels is not None:
        dice = label_dice(recon[:, n:], labels, codec)
        if dice is not None:
            out["label_dice"] = dice
    x, recon = x[:, :n], recon[:, :n]
    out["psnr"] = torch.as_tensor(PSNRMetric(max_val=2.0, reduction="mean")(recon, x)).mean()
    if min(x.shape[2:]) >= 7:
        ssim = SSIMMetric(spatial_dims=3, data_range=2.0, win_size=7, reduction="mean")
        out["ssim"] = torch.as_tensor(ssim(recon, x)).mean()
    if intensity is not None and intensity.get("kind") == "ct_window":
        half = (float(intensity["hi"]) - float(intensity["lo"])) / 2.0  # HU per unit
        err = (recon - x).abs() * half
        out["hu_mae"] = err.mean()
        if labels is not None:
            from medgen.imaging.phantom import LABEL_NAMES

            lab = labels.to(err.device).long().expand_as(err)  # one map for every image channel
            for value in torch.unique(lab).tolist():
                if int(value) in LABEL_NAMES:
                    out[f"hu_mae/{LABEL_NAMES[int(value)]}"] = err[lab == value].mean()
    return out


def label_dice(codes: torch.Tensor, labels: torch.Tensor, codec: LabelCodec) -> torch.Tensor | None:
    """Mean Dice of the label maps decoded from ``codes`` (B, M, D, H, W) against ``labels``
    (B, 1, D, H, W) ints, over the foreground labels present in ``labels`` (absent ones are
    left out, not counted as 1 or 0); 1.0 for a perfect map, None when ``labels`` holds only
    background."""
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    pred = torch.stack([torch.from_numpy(codec.decode(c).astype("int64")) for c in codes])
    k = codec.num_labels
    y_pred = one_hot(pred[:, None].to(labels.device), num_classes=k)
    y = one_hot(labels.long(), num_classes=k)
    dice = compute_dice(y_pred, y, include_background=False, ignore_empty=True)  # (B, K - 1)
    present = dice[torch.isfinite(dice)].float()  # NaN: the label is absent from `labels`
    return present.mean() if present.numel() else None


def _disc_node(value: Any) -> dict[str, Any]:
    spec = dict(plain_container(value))
    if "_target_" not in spec:
        spec = {**DISCRIMINATOR, **spec}
    if spec["_target_"] != DISCRIMINATOR["_target_"]:
        raise ConfigError(
            "model.discriminator._target_", spec["_target_"], DISCRIMINATOR["_target_"]
        )
    return spec


def _checkpoint_target(name: str, spec: Mapping[str, Any]) -> None:
    path = str(spec.get("_target_", ""))
    if not path.startswith(parts.CHECKPOINT_TARGETS):
        raise ConfigError(
            f"model.{name}._target_", path, f"a class from {', '.join(parts.CHECKPOINT_TARGETS)}"
        )
