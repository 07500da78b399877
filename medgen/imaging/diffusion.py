"""``DiffusionModule``: a 3D denoising diffusion model on volumes, in Lightning.

Network, noise maths and training pass all come from MONAI core: ``DiffusionModelUNet`` predicts,
``DDPMScheduler`` (Ho et al. 2020, https://arxiv.org/abs/2006.11239) or ``RFlowScheduler``
(rectified flow, Liu et al. 2022, https://arxiv.org/abs/2209.03003) owns the forward process, and
``DiffusionInferer`` composes them for the training loss. Sampling
(:meth:`DiffusionModule.generate`) runs DDPM, DDIM (Song et al. 2020,
https://arxiv.org/abs/2010.02502) or RFlow steps itself, so that each sample's noise can come from
its own generator. Class conditioning uses the UNet's class embedding with one extra "null" class,
label dropout in training and classifier-free guidance (Ho & Salimans 2022,
https://arxiv.org/abs/2207.12598) at sampling time.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from medgen.errors import ConfigError, UserError
from medgen.imaging.ema import EMA
from medgen.imaging.samplers import OBJECTIVES, SAMPLERS, sample_loop
from medgen.utils.logging import get_logger
from medgen.utils.provenance import plain_container
from medgen.utils.validate import check_arguments

log = get_logger(__name__)


def _checkpoint_blocks(unet: nn.Module) -> None:
    """Activation checkpointing: recompute each down/mid/up block in backward instead of storing
    its activations (MONAI's UNet has no switch for it). Parameter names are unchanged."""
    from torch.utils.checkpoint import checkpoint

    for block in [*unet.down_blocks, unet.middle_block, *unet.up_blocks]:

        def forward(*args, _fwd=block.forward, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_fwd, *args, use_reentrant=False, **kwargs)
            return _fwd(*args, **kwargs)

        block.forward = forward


# MONAI DDPMScheduler's beta schedules
SCHEDULES = ("linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine")
_LIMITS: dict[str, dict[str, float]] = {
    "channels": {"ge": 1},
    "num_res_blocks": {"ge": 1},
    "num_head_channels": {"ge": 1},
    "norm_num_groups": {"ge": 1},
    "num_train_timesteps": {"ge": 2},
    "beta_start": {"gt": 0.0, "lt": 1.0},
    "beta_end": {"gt": 0.0, "lt": 1.0},
    "num_classes": {"ge": 1},
    "cond_drop_prob": {"ge": 0.0, "lt": 1.0},
    "lr": {"gt": 0.0},
    "weight_decay": {"ge": 0.0},
    "warmup_steps": {"ge": 0},
    "ema_decay": {"ge": 0.0, "lt": 1.0},
    "preview_every_n_epochs": {"ge": 0},
    "preview_num_samples": {"ge": 1},
    "preview_steps": {"ge": 1},
    "preview_seed": {"ge": 0},
}


class DiffusionModule(pl.LightningModule):
    """3D diffusion model (DDPM or rectified-flow objective) with EMA weights and previews.

    Args:
        kind: always ``"diffusion3d"`` (``medgen sample`` dispatches on it).
        objective: ``"ddpm"`` (DDPMScheduler) or ``"rflow"`` (RFlowScheduler).
        channels, attention_levels, num_res_blocks, num_head_channels, norm_num_groups,
            use_flash_attention: ``DiffusionModelUNet`` settings.
        num_train_timesteps, schedule, beta_start, beta_end: DDPM noise schedule.
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` (DDPM; RFlow always predicts velocity).
        rflow_sample_method: RFlow training timestep distribution, ``uniform`` or ``logit-normal``.
        class_conditional: condition on ``batch["class_label"]`` (``num_classes`` from the data
            when None).
        cond_drop_prob: probability of replacing the class by the null class in training (CFG).
        lr, weight_decay, warmup_steps: AdamW with linear warmup.
        ema_decay: EMA decay (weights used for validation sampling and, by default, ``generate``).
        activation_checkpointing: recompute UNet blocks in backward to save memory.
        preview_every_n_epochs, preview_num_samples, preview_sampler, preview_steps, preview_seed:
            PNG of EMA samples after validation (0 disables).
        data_meta: the data's description (set from the datamodule in :meth:`setup`).
    """

    def __init__(
        self,
        *,
        kind: str = "diffusion3d",
        objective: str = "ddpm",
        channels: Sequence[int] = (16, 32, 64),
        attention_levels: Sequence[bool] = (False, False, True),
        num_res_blocks: int = 1,
        num_head_channels: int = 32,
        norm_num_groups: int = 8,
        use_flash_attention: bool = False,
        num_train_timesteps: int = 1000,
        schedule: str = "linear_beta",
        beta_start: float = 1e-4,
        beta_end: float = 2e-2,
        prediction_type: str = "v_prediction",
        rflow_sample_method: str = "logit-normal",
        class_conditional: bool = False,
        num_classes: int | None = None,
        cond_drop_prob: float = 0.1,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        ema_decay: float = 0.999,
        activation_checkpointing: bool = False,
        preview_every_n_epochs: int = 1,
        preview_num_samples: int = 2,
        preview_sampler: str | None = None,
        preview_steps: int = 10,
        preview_seed: int = 0,
        data_meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        check_arguments(DiffusionModule.__init__, args, prefix="model.", limits=_LIMITS)
        if schedule not in SCHEDULES:
            raise ConfigError("model.schedule", schedule, f"one of {', '.join(SCHEDULES)}")
        if rflow_sample_method not in ("uniform", "logit-normal"):
            raise ConfigError(
                "model.rflow_sample_method", rflow_sample_method, "'uniform' or 'logit-normal'"
            )
        if not beta_start < beta_end:
            raise ConfigError("model.beta_start", beta_start, f"< model.beta_end ({beta_end})")
        for c in channels:
            if c % norm_num_groups:
                raise ConfigError(
                    "model.channels",
                    list(channels),
                    f"multiples of norm_num_groups={norm_num_groups}",
                )
        if kind != "diffusion3d":
            raise UserError(f"DiffusionModule kind must be 'diffusion3d', got {kind!r}")
        if objective not in OBJECTIVES:
            raise UserError(f"model.objective must be one of {OBJECTIVES}, got {objective!r}")
        if prediction_type not in ("epsilon", "v_prediction"):
            raise UserError(
                f"model.prediction_type must be epsilon or v_prediction, got {prediction_type!r}"
            )
        if len(channels) != len(attention_levels):
            raise UserError(
                f"model.channels {list(channels)} and model.attention_levels "
                f"{list(attention_levels)} must have the same length"
            )
        hp = dict(args)
        hp["channels"] = [int(c) for c in channels]
        hp["attention_levels"] = [bool(a) for a in attention_levels]
        hp["data_meta"] = plain_container(data_meta) if data_meta is not None else None
        self.save_hyperparameters(hp)
        self.unet: nn.Module | None = None
        self.ema: EMA | None = None
        self.inferer = self._make_inferer()
        if not class_conditional or num_classes is not None:
            self._build_network()

    # -- construction ----------------------------------------------------------------------------
    def _build_network(self) -> None:
        from monai.networks.nets import DiffusionModelUNet

        hp = self.hparams
        n_cls = int(hp.num_classes) + 1 if hp.class_conditional else None  # +1: the null class
        unet = DiffusionModelUNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=1,
            channels=tuple(hp.channels),
            attention_levels=tuple(hp.attention_levels),
            num_res_blocks=hp.num_res_blocks,
            num_head_channels=hp.num_head_channels,
            norm_num_groups=hp.norm_num_groups,
            use_flash_attention=hp.use_flash_attention,
            num_class_embeds=n_cls,
        )
        self.ema = EMA(unet, decay=hp.ema_decay)  # copied before checkpointing patches forwards
        if hp.activation_checkpointing:
            _checkpoint_blocks(unet)
        self.unet = unet

    def _make_scheduler(self, name: str):
        from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler

        hp = self.hparams
        if name == "rflow":
            return RFlowScheduler(
                num_train_timesteps=hp.num_train_timesteps,
                use_discrete_timesteps=True,
                sample_method=hp.rflow_sample_method,
            )
        common = dict(
            num_train_timesteps=hp.num_train_timesteps,
            schedule=hp.schedule,
            beta_start=hp.beta_start,
            beta_end=hp.beta_end,
            prediction_type=hp.prediction_type,
            clip_sample=True,
        )
        return (DDPMScheduler if name == "ddpm" else DDIMScheduler)(**common)

    def _make_inferer(self):
        from monai.inferers import DiffusionInferer

        return DiffusionInferer(self._make_scheduler(self.hparams.objective))

    @property
    def null_class(self) -> int:
        return int(self.hparams.num_classes)

    # -- Lightning hooks -----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        meta = getattr(dm, "data_meta", None) if dm is not None else None
        if meta is not None:
            self.hparams["data_meta"] = plain_container(meta)
        meta = self.hparams.get("data_meta")
        if self.hparams.class_conditional and self.hparams.num_classes is None:
            if not meta or not meta.get("num_classes"):
                raise ValueError(
                    "model.class_conditional=true but the data has no class labels "
                    "(data_meta.num_classes is empty); set model.num_classes"
                )
            self.hparams["num_classes"] = int(meta["num_classes"])
        if self.unet is None:
            self._build_network()
        if meta:
            factor = 2 ** (len(self.hparams.channels) - 1)
            size = list(meta["spatial_size"])
            if any(s % factor for s in size):
                raise ValueError(
                    f"data spatial_size {size} must be divisible by {factor} for a UNet "
                    f"with {len(self.hparams.channels)} levels ({self.hparams.channels})"
                )

    def configure_optimizers(self):
        opt = torch.optim.AdamW(
            self.unet.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        warm = max(1, int(self.hparams.warmup_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def diffusion_loss(
        self,
        batch: dict[str, Any],
        *,
        network: nn.Module | None = None,
        generator: torch.Generator | None = None,
        drop_labels: bool = False,
    ):
        """Mean squared error of the network's prediction (noise, v or velocity) on ``batch``.

        ``batch["image"]``: (B, 1, D, H, W) in [-1, 1]. With ``generator`` the noise and timesteps
        are drawn from it (deterministic validation); otherwise from the global RNG.
        """
        x0 = batch["image"]  # (B, 1, D, H, W)
        b, dev, hp = x0.shape[0], x0.device, self.hparams
        net = network if network is not None else self.unet
        noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
        sched = self.inferer.scheduler
        t = self.sample_timesteps(b, device=dev, generator=generator)
        if hp.class_conditional:
            y = batch["class_label"].to(dev).long()
            if drop_labels and hp.cond_drop_prob > 0:
                drop = torch.rand(b, device=dev, generator=generator) < hp.cond_drop_prob
                y = torch.where(drop, torch.full_like(y, self.null_class), y)
            net = partial(net, class_labels=y)
        pred = self.inferer(inputs=x0, diffusion_model=net, noise=noise, timesteps=t)
        if hp.objective == "rflow":
            target = x0 - noise  # velocity of x_t = (1 - t/T) x0 + (t/T) noise, towards x0
        elif hp.prediction_type == "v_prediction":
            target = sched.get_velocity(x0, noise, t)
        else:
            target = noise
        return F.mse_loss(pred.float(), target.float())

    def sample_timesteps(
        self,
        n: int,
        *,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(n,) long training timesteps in ``0..T-1``, the same distribution in training and
        validation: uniform for DDPM; for RFlow ``rflow_sample_method`` (``uniform``, or
        ``logit-normal``: t/T = sigmoid(z), z ~ N(0, 1), Esser et al. 2024,
        https://arxiv.org/abs/2403.03206, as MONAI's ``RFlowScheduler.sample_timesteps`` draws
        it) but from ``generator`` when given (deterministic validation)."""
        total = int(self.hparams.num_train_timesteps)
        kw = dict(generator=generator, device=device)
        if self.hparams.objective == "ddpm":
            return torch.randint(0, total, (n,), **kw)
        if self.hparams.rflow_sample_method == "logit-normal":
            u = torch.sigmoid(torch.randn(n, **kw))
        else:
            u = torch.rand(n, **kw)
        return (u * total).long().clamp_(0, total - 1)

    def on_train_start(self) -> None:
        """Under DDP every rank starts from the same global seed: reseed torch's RNG from
        (seed, global rank) so that each rank draws its own training noise and timesteps."""
        if self.trainer.world_size > 1:
            from medgen.utils.seeding import sample_seed

            base = self.__dict__.setdefault("_base_seed", torch.initial_seed())
            torch.manual_seed(sample_seed(base % 2**63, int(self.global_rank)))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch, drop_labels=True)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step}; "
                f"batch sources: {list(batch.get('source', []))}"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.ema.update(self.unet, step=self.trainer.global_step)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        bs = batch["image"].shape[0]
        gen = torch.Generator(device=batch["image"].device).manual_seed(1000 + batch_idx)
        loss = self.diffusion_loss(batch, generator=gen)
        gen.manual_seed(1000 + batch_idx)
        loss_ema = self.diffusion_loss(batch, generator=gen, network=self.ema.module)
        # as in training: a NaN must stop the run and say where, not end up as a metric
        for name, value in (("val/loss", loss), ("val/loss_ema", loss_ema)):
            if not torch.isfinite(value):
                raise FloatingPointError(
                    f"non-finite validation metric {name} ({value.item()}) at global step "
                    f"{self.global_step}, validation batch {batch_idx}; "
                    f"batch sources: {list(batch.get('source', []))}"
                )
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=bs)
        self.log("val/loss_ema", loss_ema, sync_dist=True, batch_size=bs)
        return loss

    def on_validation_epoch_end(self) -> None:
        every = int(self.hparams.preview_every_n_epochs)
        trainer = self.trainer
        if every <= 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if (self.current_epoch + 1) % every:
            return
        from medgen.imaging.viz import write_preview

        write_preview(self, Path(trainer.default_root_dir) / "previews")

    # -- sampling -------------------------------------------------------------------------------
    def default_sampler(self) -> str:
        return SAMPLERS[self.hparams.objective][0]

    @torch.no_grad()
    def generate(
        self,
        noise: torch.Tensor,
        *,
        generators: Sequence[torch.Generator] | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        class_labels: torch.Tensor | Sequence[int] | None = None,
        guidance_scale: float = 1.0,
        use_ema: bool = True,
        progress: bool = False,
    ) -> torch.Tensor:
        """Denoise ``noise`` (B, 1, D, H, W), the initial x_T, into samples x_0 in [-1, 1].

        Args:
            generators: one generator per sample for the per-step noise of stochastic samplers
                (DDPM), so sample i never depends on the rest of its batch.
            sampler: ``ddpm`` | ``ddim`` (DDPM-trained) or ``rflow`` (RFlow-trained); None: ddim
                for DDPM-trained, rflow for RFlow-trained models.
            steps: number of sampling steps (None: all training timesteps for ddpm, 50 ddim,
                30 rflow); ddpm with fewer steps than training timesteps runs the DDPM posterior
                on the sub-sequence (DDIM with eta = 1).
            class_labels: (B,) class per sample for a class-conditional model (None: unconditional).
            guidance_scale: classifier-free guidance scale w (1.0: plain conditional sampling);
                ``pred = uncond + w * (cond - uncond)``.
            use_ema: sample with the EMA weights.
            progress: show a tqdm bar over steps.
        """
        return sample_loop(
            self,
            noise,
            generators=generators,
            sampler=sampler,
            steps=steps,
            class_labels=class_labels,
            guidance_scale=guidance_scale,
            use_ema=use_ema,
            progress=progress,
        )

    # -- checkpoints -------------------------------------------------------------------------------
    @classmethod
    def load_medgen_checkpoint(
        cls, path, map_location: str | torch.device = "cpu"
    ) -> DiffusionModule:
        """Rebuild a module from a medgen checkpoint (``weights_only=True``), weights and EMA."""
        from medgen.errors import InputFileError
        from medgen.utils.checkpoint import load_medgen_checkpoint, load_weights

        file, ckpt, kind = load_medgen_checkpoint(path, map_location=map_location)
        if kind != "diffusion3d":
            raise InputFileError(f"checkpoint {file} holds kind={kind!r}, not a diffusion3d model")
        hp = dict(ckpt["hyper_parameters"])
        module = cls(**hp)
        if module.unet is None:
            raise InputFileError(f"checkpoint {file}: class-conditional model without num_classes")
        load_weights(module, ckpt["state_dict"], file)
        if isinstance(map_location, str | torch.device):
            module.to(map_location)
        return module.eval()
