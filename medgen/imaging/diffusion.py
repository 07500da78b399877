"""``DiffusionModule``: a 3D denoising diffusion model on volumes, in Lightning, and a
:class:`~medgen.generation.Generator` (``medgen sample`` draws from it like from any generator).

Network, noise maths and training pass come from MONAI core, built from config nodes
(:mod:`medgen.imaging.components`): ``DiffusionModelUNet`` predicts, ``DDPMScheduler`` (Ho et al.
2020, https://arxiv.org/abs/2006.11239) or ``RFlowScheduler`` (rectified flow, Liu et al. 2022,
https://arxiv.org/abs/2209.03003) owns the forward process, and ``DiffusionInferer`` composes them
for the training loss. Sampling runs :func:`medgen.imaging.samplers.reverse_process` on the
network and a fresh scheduler, with each sample's noise from its own generator. Class conditioning
uses the UNet's class embedding with one extra "null" class, label dropout in training and
classifier-free guidance (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598) when sampling.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from medgen.errors import ConfigError, InputFileError, UserError
from medgen.generation import Generated, Output
from medgen.imaging import components as parts
from medgen.imaging.components import Objective, PredictionType
from medgen.imaging.ema import EMA
from medgen.imaging.samplers import (
    SAMPLERS,
    resolve_eta,
    resolve_sampler,
    resolve_settings,
    resolve_shift,
    reverse_process,
)
from medgen.records import DataMeta, Sampler, SampleSettings
from medgen.utils.logging import get_logger
from medgen.utils.provenance import plain_container
from medgen.utils.validate import check_arguments

log = get_logger(__name__)

KIND = "diffusion3d"  # hyper_parameters.kind, read by medgen.utils.checkpoint
_LIMITS: dict[str, dict[str, float]] = {
    "num_classes": {"ge": 1},
    "cond_drop_prob": {"ge": 0.0, "lt": 1.0},
    "warmup_steps": {"ge": 0},
    "ema_decay": {"ge": 0.0, "lt": 1.0},
}


class DiffusionModule(pl.LightningModule):
    """3D diffusion model (DDPM or rectified-flow objective) with EMA weights.

    Args:
        network: ``_target_`` node of the denoiser (``DiffusionModelUNet`` kwargs), see
            :mod:`medgen.imaging.components`; None: its default.
        scheduler: ``_target_`` node of the noise scheduler; ``DDPMScheduler`` (with its
            ``prediction_type``: ``epsilon`` | ``v_prediction``) or ``RFlowScheduler`` (always
            velocity; ``sample_method``: ``uniform`` | ``logit-normal`` training timesteps).
        optimizer: ``_partial_`` node of the optimizer factory (AdamW).
        warmup_steps: linear learning-rate warmup over this many optimizer steps.
        class_conditional: condition on ``batch["class_label"]`` (``num_classes`` from the data
            when None).
        cond_drop_prob: probability of replacing the class by the null class in training (CFG).
        ema_decay: EMA decay (weights used for validation and, by default, for sampling).
        activation_checkpointing: recompute UNet blocks in backward to save memory.
        data_meta: the data's :class:`~medgen.records.DataMeta` (set from the datamodule in
            :meth:`setup`); sampling needs it (shape, channels, geometry, classes).

    The nodes are stored as plain dicts in ``hparams`` and built with ``hydra.utils.instantiate``
    (so checkpoints load with ``weights_only=True``); ``hparams["module"]`` records this class.
    """

    output: ClassVar[Output] = Output.VOLUMES
    data_kind: ClassVar[str] = "scans"  # what it trains on (checked against the data's)
    # samples per forward pass when `medgen sample batch_size=null` (memory grows with it)
    default_batch_size: ClassVar[int] = 4

    def __init__(
        self,
        *,
        network: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        optimizer: dict[str, Any] | None = None,
        warmup_steps: int = 100,
        class_conditional: bool = False,
        num_classes: int | None = None,
        cond_drop_prob: float = 0.1,
        ema_decay: float = 0.999,
        activation_checkpointing: bool = False,
        data_meta: DataMeta | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        for key in ("network", "scheduler", "optimizer"):
            args[key] = parts.node(key, args[key])
        typed = {k: v for k, v in args.items() if k != "data_meta"}
        check_arguments(DiffusionModule.__init__, typed, prefix="model.", limits=_LIMITS)
        self.objective = parts.check_nodes(args["network"], args["scheduler"], args["optimizer"])
        if isinstance(data_meta, DataMeta):
            args["data_meta"] = data_meta.to_dict()
        elif data_meta is not None:
            args["data_meta"] = DataMeta.from_dict(plain_container(data_meta)).to_dict()
        self.save_hyperparameters({"module": _class_path(type(self)), "kind": KIND, **args})
        self.unet: nn.Module | None = None
        self.ema: EMA | None = None
        from monai.inferers import DiffusionInferer

        self.inferer = DiffusionInferer(self.make_scheduler())
        if not class_conditional or num_classes is not None:
            self._build_network()

    # -- construction ----------------------------------------------------------------------------
    def _build_network(self) -> None:
        hp = self.hparams
        extra = {"num_class_embeds": int(hp["num_classes"]) + 1} if hp["class_conditional"] else {}
        unet = parts.build("network", hp["network"], **extra)  # +1 above: the null class
        self.ema = EMA(unet, decay=hp["ema_decay"])  # copied before checkpointing patches forwards
        if hp["activation_checkpointing"]:
            parts.checkpoint_blocks(unet)
        self.unet = unet

    def networks(self) -> tuple[nn.Module, EMA]:
        """The trained network and its EMA copy (built in ``__init__`` or, for a class-conditional
        model learning its classes from the data, in :meth:`setup`)."""
        if self.unet is None or self.ema is None:
            raise RuntimeError("the network is built in setup(): num_classes comes from the data")
        return self.unet, self.ema

    def make_scheduler(self) -> Any:
        """A fresh noise scheduler built from the ``scheduler`` node (samplers mutate theirs)."""
        return parts.build("scheduler", self.hparams["scheduler"])

    @property
    def num_train_timesteps(self) -> int:
        return int(self.inferer.scheduler.num_train_timesteps)

    @property
    def prediction_type(self) -> PredictionType:
        """What the network predicts (RFlow: the velocity, called v_prediction by MONAI)."""
        return PredictionType(str(self.inferer.scheduler.prediction_type))

    @property
    def null_class(self) -> int | None:
        """The class label meaning "no class" (class-conditional models only)."""
        return int(self.hparams["num_classes"]) if self.hparams["class_conditional"] else None

    @property
    def data_meta(self) -> DataMeta | None:
        meta = self.hparams.get("data_meta")
        return None if meta is None else DataMeta.from_dict(meta)

    def default_sampler(self) -> Sampler:
        return SAMPLERS[self.objective][0]

    # -- Lightning hooks -----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_meta = getattr(dm, "data_meta", None)
        if isinstance(data_meta, DataMeta):  # the datamodule's description wins
            self.hparams["data_meta"] = data_meta.to_dict()
        meta = self.data_meta
        if self.hparams["class_conditional"] and self.hparams["num_classes"] is None:
            if meta is None or not meta.num_classes:
                raise ConfigError(
                    "model.class_conditional",
                    True,
                    "false: the data has no class labels (data_meta.num_classes is empty); "
                    "or set model.num_classes",
                )
            self.hparams["num_classes"] = int(meta.num_classes)
        if self.unet is None:
            self._build_network()
        if meta is not None:
            self.check_data(meta)

    def check_data(self, meta: DataMeta) -> None:
        """Refuse data the network cannot take: channel count, spatial size vs the UNet levels."""
        net = self.hparams["network"]
        for key in ("in_channels", "out_channels"):
            if key in net and int(net[key]) != meta.channels:
                what = f"{list(meta.channel_names)}"
                if meta.label_names:  # a joint image + label map: name the parts, not 16 names
                    codes = meta.channels - len([n for n in meta.channel_names if ":" not in n])
                    what = f"the image and {codes} label-map channels ({meta.label_encoding})"
                raise ConfigError(
                    f"model.network.{key}",
                    net[key],
                    f"{meta.channels}, the data's channel count ({what}): set "
                    f"model.network.in_channels={meta.channels} "
                    f"model.network.out_channels={meta.channels}",
                )
        factor, size = parts.spatial_factor(net), list(meta.spatial_size)
        if any(s % factor for s in size):
            raise ConfigError(
                "data.spatial_size",
                size,
                f"sizes divisible by {factor} for a UNet with {len(net['channels'])} levels "
                f"(model.network.channels={list(net['channels'])})",
            )

    def configure_optimizers(self):
        opt = parts.build("optimizer", self.hparams["optimizer"])(self.networks()[0].parameters())
        warm = max(1, int(self.hparams["warmup_steps"]))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def diffusion_loss(
        self,
        batch: dict[str, Any],
        *,
        network: nn.Module | None = None,
        generator: torch.Generator | None = None,
        drop_labels: bool = False,
    ) -> torch.Tensor:
        """Mean squared error of the network's prediction (noise, v or velocity) on ``batch``.

        ``batch["image"]``: (B, C, D, H, W) in [-1, 1]. With ``generator`` the noise and timesteps
        are drawn from it (deterministic validation); otherwise from the global RNG.
        """
        x0 = batch["image"]  # (B, C, D, H, W)
        b, dev, hp = x0.shape[0], x0.device, self.hparams
        net: Any = network if network is not None else self.networks()[0]
        noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
        t = self.sample_timesteps(b, device=dev, generator=generator)
        if hp["class_conditional"]:
            y = batch["class_label"].to(dev).long()
            if drop_labels and hp["cond_drop_prob"] > 0:
                drop = torch.rand(b, device=dev, generator=generator) < hp["cond_drop_prob"]
                y = torch.where(drop, torch.full_like(y, int(hp["num_classes"])), y)
            net = partial(net, class_labels=y)
        pred = self.inferer(inputs=x0, diffusion_model=net, noise=noise, timesteps=t)
        if self.objective == Objective.RFLOW:
            target = x0 - noise  # velocity of x_t = (1 - t/T) x0 + (t/T) noise, towards x0
        elif self.prediction_type == PredictionType.V_PREDICTION:
            target = self.inferer.scheduler.get_velocity(x0, noise, t)
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
        validation: uniform for DDPM; for RFlow the scheduler's ``sample_method`` (``uniform``,
        or ``logit-normal``: t/T = sigmoid(loc + scale z), z ~ N(0, 1), Esser et al. 2024,
        https://arxiv.org/abs/2403.03206, as MONAI's ``RFlowScheduler.sample_timesteps`` draws
        it) but from ``generator`` when given (deterministic validation)."""
        total, spec = self.num_train_timesteps, self.hparams["scheduler"]
        if self.objective == Objective.DDPM:
            return torch.randint(0, total, (n,), generator=generator, device=device)
        if spec.get("sample_method", "uniform") == "logit-normal":
            z = torch.randn(n, generator=generator, device=device)
            u = torch.sigmoid(float(spec.get("loc", 0.0)) + float(spec.get("scale", 1.0)) * z)
        else:
            u = torch.rand(n, generator=generator, device=device)
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
        unet, ema = self.networks()
        ema.update(unet, step=self.trainer.global_step)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, batch_idx, "test")

    def _evaluate(self, batch: dict[str, Any], batch_idx: int, split: str) -> torch.Tensor:
        bs = batch["image"].shape[0]
        gen = torch.Generator(device=batch["image"].device).manual_seed(1000 + batch_idx)
        loss = self.diffusion_loss(batch, generator=gen)
        gen.manual_seed(1000 + batch_idx)
        loss_ema = self.diffusion_loss(batch, generator=gen, network=self.networks()[1].module)
        # as in training: a NaN must stop the run and say where, not end up as a metric
        for name, value in ((f"{split}/loss", loss), (f"{split}/loss_ema", loss_ema)):
            if not torch.isfinite(value):
                raise FloatingPointError(
                    f"non-finite validation metric {name} ({value.item()}) at global step "
                    f"{self.global_step}, {split} batch {batch_idx}; "
                    f"batch sources: {list(batch.get('source', []))}"
                )
        self.log(f"{split}/loss", loss, prog_bar=True, sync_dist=True, batch_size=bs)
        self.log(f"{split}/loss_ema", loss_ema, sync_dist=True, batch_size=bs)
        return loss

    # -- sampling -------------------------------------------------------------------------------
    @torch.no_grad()
    def denoise(
        self,
        x_T: torch.Tensor,
        *,
        sampler: Sampler | str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        class_labels: torch.Tensor | Sequence[int] | None = None,
        guidance_scale: float = 1.0,
        use_ema: bool = True,
        generators: Sequence[torch.Generator] | None = None,
        progress: bool = False,
        shift: float = 1.0,
        clamp: bool = True,
    ) -> torch.Tensor:
        """Denoise ``x_T`` (B, C, D, H, W), the initial noise, into samples x_0 in [-1, 1].

        ``sampler`` (None: ddim for DDPM-trained, rflow for RFlow-trained models), ``steps``
        (None: the sampler's default) and ``eta`` (None: 0 for ddim) are checked as
        :func:`~medgen.imaging.samplers.resolve_settings` does; ``class_labels`` (B,) ints for a
        class-conditional model (None: the null class); ``generators``: one per sample for the
        per-step noise of stochastic samplers; ``shift``: the RFlow timestep shift (1.0: none);
        ``clamp``: clamp the result to [-1, 1] (false for latents).
        See :func:`~medgen.imaging.samplers.reverse_process`.
        """
        sampler, steps = resolve_sampler(self.objective, sampler, steps, self.num_train_timesteps)
        eta = resolve_eta(sampler, eta)
        shift = resolve_shift(self.objective, shift)
        y = self._class_labels(class_labels, x_T.shape[0], x_T.device)
        unet, ema = self.networks()
        net = ema.module if use_ema else unet
        was_training = net.training
        net.eval()
        try:
            return reverse_process(
                net,
                self.make_scheduler(),
                x_T,
                sampler=sampler,
                steps=steps,
                prediction_type=self.prediction_type,
                eta=eta,
                class_labels=y,
                null_class=self.null_class,
                guidance_scale=guidance_scale if class_labels is not None else 1.0,
                generators=generators,
                progress=progress,
                shift=shift,
                clamp=clamp,
            )
        finally:
            net.train(was_training)

    def _class_labels(self, labels: Any, b: int, dev: torch.device) -> torch.Tensor | None:
        """(B,) long class labels for a class-conditional model (the null class when none given)."""
        null = self.null_class
        if null is None:
            if labels is not None:
                raise UserError("class_labels given, but the model is not class-conditional")
            return None
        if labels is None:
            return torch.full((b,), null, dtype=torch.long, device=dev)
        y = torch.as_tensor(labels, device=dev).long()
        if y.shape != (b,) or int(y.min()) < 0 or int(y.max()) > null:
            raise UserError(f"class_labels must be {b} ints in 0..{null - 1}, got {y.tolist()}")
        return y

    # -- the Generator protocol ----------------------------------------------------------------
    def resolve_settings(self, settings: SampleSettings) -> SampleSettings:
        """``settings`` checked against this model, defaults filled in (what a cohort records);
        see :func:`~medgen.imaging.samplers.resolve_settings`. Idempotent."""
        meta = self.data_meta
        return resolve_settings(
            settings,
            objective=self.objective,
            num_train_timesteps=self.num_train_timesteps,
            num_classes=int(self.hparams["num_classes"] or 0)
            if self.hparams["class_conditional"]
            else 0,
            class_names=(meta.class_names or ()) if meta is not None else (),
        )

    def generate(self, indices: Sequence[int], settings: SampleSettings) -> Generated:
        """Samples ``indices`` of ``settings``: ``items`` (B, C, D, H, W) float32, CPU, [-1, 1].

        Sample ``i``'s x_T and every noise its sampler adds come from
        ``sample_generator(settings.seed, i)`` on the module's device, so it depends on
        ``(settings, i)`` only (up to float rounding between batched kernels).
        """
        from medgen.utils.seeding import sample_generator

        s = self.resolve_settings(settings)
        meta = self._meta_for_sampling()
        device = next(iter(self.parameters())).device
        gens = [sample_generator(s.seed, int(i), device=device) for i in indices]
        shape = (meta.channels, *meta.spatial_size)  # (C, D, H, W)
        if not gens:
            return Generated([], torch.empty((0, *shape)))
        x_T = torch.stack([torch.randn(shape, generator=g, device=device) for g in gens])
        labels = None
        if s.condition is not None:
            labels = torch.full((len(gens),), int(s.condition), dtype=torch.long, device=device)
        x = self.denoise(
            x_T,
            sampler=s.sampler,
            steps=s.steps,
            eta=s.eta,
            class_labels=labels,
            guidance_scale=s.guidance_scale,
            use_ema=s.use_ema,
            generators=gens,
            shift=s.shift,
        )
        return Generated([int(i) for i in indices], x.float().cpu())

    def cohort(self, out: str | os.PathLike, settings: SampleSettings, checkpoint: Path) -> Any:
        """The :class:`~medgen.imaging.cohort.VolumeCohort` in folder ``out`` for ``settings``
        drawn from ``checkpoint`` (its sha256 and training config hash are recorded)."""
        from medgen.imaging.cohort import VolumeCohort, training_config_hash
        from medgen.utils.provenance import file_sha256

        return VolumeCohort(
            out,
            self._meta_for_sampling(),
            self.resolve_settings(settings),
            checkpoint_sha256=file_sha256(checkpoint),
            config_hash=training_config_hash(checkpoint, dict(self.hparams)),
        )

    def _meta_for_sampling(self) -> DataMeta:
        meta = self.data_meta
        if meta is None:
            raise UserError(
                f"{type(self).__name__} has no data_meta (spatial size, channels, geometry): "
                "train it on a datamodule, or pass data_meta=DataMeta(...)"
            )
        return meta

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, map_location: str | torch.device = "cpu"
    ) -> DiffusionModule:
        """Rebuild a module from a medgen checkpoint (``weights_only=True``), weights and EMA,
        in eval mode. Checkpoints of the flat layout before the config nodes load too."""
        from medgen.utils.checkpoint import load_medgen_checkpoint, load_weights

        file, ckpt, kind = load_medgen_checkpoint(path, map_location=map_location)
        if kind != KIND:
            raise InputFileError(f"checkpoint {file} holds kind={kind!r}, not a {KIND} model")
        try:
            hp = parts.upgrade_hparams(ckpt["hyper_parameters"])
            for name in parts.DEFAULTS:  # before anything is imported: where may they come from
                parts.target_class(name, parts.node(name, hp.get(name)), from_checkpoint=True)
            module = cls(**hp)
        except (UserError, TypeError) as err:
            raise InputFileError(f"checkpoint {file}: its hyper_parameters: {err}") from err
        if module.unet is None:
            raise InputFileError(f"checkpoint {file}: class-conditional model without num_classes")
        load_weights(module, ckpt["state_dict"], file)
        if isinstance(map_location, str | torch.device):
            module.to(map_location)
        return module.eval()


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
