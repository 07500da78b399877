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

from medgen.imaging.ema import EMA
from medgen.utils.logging import get_logger

log = get_logger(__name__)

OBJECTIVES = ("ddpm", "rflow")
SAMPLERS = {"ddpm": ("ddpm", "ddim"), "rflow": ("rflow",)}
DEFAULT_STEPS = {"ddim": 50, "rflow": 30}


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
        if kind != "diffusion3d":
            raise ValueError(f"DiffusionModule kind must be 'diffusion3d', got {kind!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"model.objective must be one of {OBJECTIVES}, got {objective!r}")
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"model.prediction_type must be epsilon or v_prediction, got {prediction_type!r}"
            )
        if len(channels) != len(attention_levels):
            raise ValueError(
                f"model.channels {list(channels)} and model.attention_levels "
                f"{list(attention_levels)} must have the same length"
            )
        hp = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        hp["channels"] = [int(c) for c in channels]
        hp["attention_levels"] = [bool(a) for a in attention_levels]
        hp["data_meta"] = _plain(data_meta) if data_meta is not None else None
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
            self.hparams["data_meta"] = _plain(meta)
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
        if hp.objective == "rflow" and generator is None:
            t = sched.sample_timesteps(x0)
        else:
            t = torch.randint(0, hp.num_train_timesteps, (b,), generator=generator, device=dev)
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
        return "ddim" if self.hparams.objective == "ddpm" else "rflow"

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
        from medgen.utils.checkpoint import load_checkpoint, resolve_checkpoint

        ckpt = load_checkpoint(path, map_location=map_location)
        hp = dict(ckpt.get("hyper_parameters") or {})
        if hp.get("kind") != "diffusion3d":
            raise ValueError(
                f"checkpoint {resolve_checkpoint(path)} holds kind={hp.get('kind')!r}, "
                "not a diffusion3d model"
            )
        module = cls(**hp)
        if module.unet is None:
            raise ValueError(f"checkpoint {path}: class-conditional model without num_classes")
        module.load_state_dict(ckpt["state_dict"])
        if isinstance(map_location, str | torch.device):
            module.to(map_location)
        return module.eval()


def sample_loop(
    module: DiffusionModule,
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
    """The reverse process behind :meth:`DiffusionModule.generate` (same arguments)."""
    hp = module.hparams
    sampler = sampler or module.default_sampler()
    if sampler not in SAMPLERS[hp.objective]:
        raise ValueError(
            f"sampler {sampler!r} does not fit a model trained with objective "
            f"{hp.objective!r}; use one of {SAMPLERS[hp.objective]}"
        )
    if noise.ndim != 5 or noise.shape[1] != 1:
        raise ValueError(f"noise must be (B, 1, D, H, W), got {tuple(noise.shape)}")
    b, dev = noise.shape[0], noise.device
    if generators is not None and len(generators) != b:
        raise ValueError(f"got {len(generators)} generators for a batch of {b}")
    if steps is None:  # the sampler's default, never more than the model was trained with
        steps = min(DEFAULT_STEPS.get(sampler, hp.num_train_timesteps), hp.num_train_timesteps)
    steps = int(steps)
    if not 1 <= steps <= hp.num_train_timesteps:
        raise ValueError(
            f"steps={steps} must be in 1..{hp.num_train_timesteps} (training timesteps)"
        )
    # MONAI's DDPMScheduler.step assumes consecutive timesteps; DDPM on a shorter sub-sequence is
    # DDIM with eta = 1 (the DDPM posterior between any two timesteps, Song et al. 2020, eq. 16)
    respaced = sampler == "ddpm" and steps < hp.num_train_timesteps
    sched = module._make_scheduler("ddim" if respaced else sampler)
    step_kw: dict[str, Any] = {"eta": 1.0} if respaced else {}
    stochastic = sampler == "ddpm"
    if sampler == "rflow":
        sched.set_timesteps(steps, device=dev, input_img_size_numel=int(noise[0, 0].numel()))
    else:
        sched.set_timesteps(steps, device=dev)

    y = None
    if hp.class_conditional:
        y = (
            torch.full((b,), module.null_class, dtype=torch.long, device=dev)
            if class_labels is None
            else torch.as_tensor(class_labels, device=dev).long()
        )
        if y.shape != (b,) or int(y.min()) < 0 or int(y.max()) > module.null_class:
            raise ValueError(
                f"class_labels must be {b} ints in 0..{hp.num_classes - 1}, got {y.tolist()}"
            )
    elif class_labels is not None:
        raise ValueError("class_labels given, but the model is not class-conditional")
    guided = y is not None and class_labels is not None and float(guidance_scale) != 1.0

    net = module.ema.module if use_ema else module.unet
    was_training = net.training
    net.eval()
    try:
        x = noise.clone()
        ts = sched.timesteps
        next_ts = torch.cat([ts[1:], torch.zeros(1, dtype=ts.dtype, device=ts.device)])
        pairs = list(zip(ts, next_ts, strict=True))
        if progress:
            from tqdm.auto import tqdm

            pairs = tqdm(pairs, desc=f"{sampler} {steps} steps", leave=False)
        for t, t_next in pairs:
            t_batch = t.expand(b).to(dev)
            if guided:
                null = torch.full_like(y, module.null_class)
                out = net(
                    torch.cat([x, x]),
                    timesteps=torch.cat([t_batch, t_batch]),
                    class_labels=torch.cat([y, null]),
                )
                cond, uncond = out.chunk(2)
                out = uncond + float(guidance_scale) * (cond - uncond)
            else:
                out = net(x, timesteps=t_batch, class_labels=y)
            if sampler == "rflow":
                x, _ = sched.step(out, t, x, t_next)
            elif stochastic and generators is not None:  # per-sample noise, own generator
                x = torch.cat(
                    [
                        sched.step(out[i : i + 1], int(t), x[i : i + 1], generator=g, **step_kw)[0]
                        for i, g in enumerate(generators)
                    ]
                )
            else:
                x, _ = sched.step(out, int(t), x, **step_kw)
    finally:
        net.train(was_training)
    return x.clamp(-1.0, 1.0)


def _plain(obj: Any) -> Any:
    """Plain Python containers (no OmegaConf, tuples or numpy) for hparams (weights_only)."""
    if hasattr(obj, "items"):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple) or type(obj).__name__ == "ListConfig":
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj
