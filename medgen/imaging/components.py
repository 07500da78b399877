"""The network, noise scheduler and optimizer of a
:class:`~medgen.imaging.diffusion.DiffusionModule` as config nodes: defaults, checks, building.

Each is a plain ``_target_`` mapping (``conf/model/ddpm3d.yaml``; stored as is in the checkpoint,
so it loads with ``weights_only=True``) that :func:`build` turns into the object with
``hydra.utils.instantiate``:

- ``network``: ``monai.networks.nets.DiffusionModelUNet`` kwargs (``spatial_dims: 3``, channels,
  attention levels, ...); class conditioning adds ``num_class_embeds`` when it is built.
- ``scheduler``: ``monai.networks.schedulers.DDPMScheduler`` (Ho et al. 2020,
  https://arxiv.org/abs/2006.11239) or ``RFlowScheduler`` (rectified flow, Liu et al. 2022,
  https://arxiv.org/abs/2209.03003) kwargs; its class is the model's training :class:`Objective`.
- ``optimizer``: a ``_partial_: true`` factory (``torch.optim.AdamW``) that gets the parameters.

The known keys of each node are typed and range-checked (:func:`check_nodes`), and errors name
them in full (``model.network.channels``). A node without ``_target_`` (Python API only) is read
as changes to the default node: ``network={"channels": [8, 16]}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import torch
from torch import nn

from medgen.errors import ConfigError
from medgen.utils.provenance import plain_container
from medgen.utils.validate import read_record


class Objective(StrEnum):
    """What the network is trained to undo: DDPM noising or a rectified-flow interpolation."""

    DDPM = "ddpm"
    RFLOW = "rflow"


class PredictionType(StrEnum):
    """What a DDPM-trained network predicts (RFlow networks always predict the velocity)."""

    EPSILON = "epsilon"
    V_PREDICTION = "v_prediction"


SCHEDULES = ("linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine")  # MONAI's

UNET: dict[str, Any] = {
    "_target_": "monai.networks.nets.DiffusionModelUNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 1,
    "channels": [16, 32, 64],
    "attention_levels": [False, False, True],
    "num_res_blocks": 1,
    "num_head_channels": 32,
    "norm_num_groups": 8,
    "use_flash_attention": False,
}
DDPM: dict[str, Any] = {
    "_target_": "monai.networks.schedulers.DDPMScheduler",
    "num_train_timesteps": 1000,
    "schedule": "linear_beta",
    "beta_start": 1e-4,
    "beta_end": 2e-2,
    "prediction_type": "v_prediction",
    "clip_sample": True,
}
RFLOW: dict[str, Any] = {
    "_target_": "monai.networks.schedulers.RFlowScheduler",
    "num_train_timesteps": 1000,
    "use_discrete_timesteps": True,
    "sample_method": "logit-normal",
}
ADAMW: dict[str, Any] = {
    "_target_": "torch.optim.AdamW",
    "_partial_": True,
    "lr": 2e-4,
    "weight_decay": 0.0,
}
DEFAULTS = {"network": UNET, "scheduler": DDPM, "optimizer": ADAMW}
# what each node must build, and where a checkpoint's targets may come from (a checkpoint is
# untrusted input: it must not make medgen import and call arbitrary code)
BASES = {"network": "torch.nn.Module", "optimizer": "torch.optim.Optimizer"}
CHECKPOINT_TARGETS = ("monai.networks.", "torch.optim.", "medgen.")


@dataclass(frozen=True)
class UNetNode:
    """The ``DiffusionModelUNet`` keys medgen checks (others go to MONAI as they are)."""

    spatial_dims: Literal[3] = 3
    in_channels: int = field(default=1, metadata={"ge": 1})
    out_channels: int = field(default=1, metadata={"ge": 1})
    channels: list[int] = field(default_factory=list, metadata={"ge": 1, "min_len": 1})
    attention_levels: list[bool] = field(default_factory=list)
    num_res_blocks: int | list[int] = field(default=1, metadata={"ge": 1})
    num_head_channels: int | list[int] = field(default=8, metadata={"ge": 1})
    norm_num_groups: int = field(default=8, metadata={"ge": 1})
    use_flash_attention: bool = False


@dataclass(frozen=True)
class DDPMNode:
    num_train_timesteps: int = field(default=1000, metadata={"ge": 2})
    schedule: Literal["linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine"] = "linear_beta"
    beta_start: float = field(default=1e-4, metadata={"gt": 0.0, "lt": 1.0})
    beta_end: float = field(default=2e-2, metadata={"gt": 0.0, "lt": 1.0})
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    clip_sample: bool = True


@dataclass(frozen=True)
class RFlowNode:
    num_train_timesteps: int = field(default=1000, metadata={"ge": 2})
    # the sampler and the training timesteps are discrete (the UNet's timestep embedding)
    use_discrete_timesteps: Literal[True] = True
    sample_method: Literal["uniform", "logit-normal"] = "uniform"
    loc: float = 0.0
    scale: float = field(default=1.0, metadata={"gt": 0.0})
    spatial_dim: Literal[3] = 3


@dataclass(frozen=True)
class OptimizerNode:
    lr: float = field(default=1e-3, metadata={"gt": 0.0})
    weight_decay: float = field(default=0.0, metadata={"ge": 0.0})


def node(name: str, value: Any) -> dict[str, Any]:
    """Config node ``model.<name>`` as a plain dict (a ``_target_``-less one over the default)."""
    value = plain_container(value)
    if value is None:
        return dict(DEFAULTS[name])
    if not isinstance(value, Mapping):
        raise ConfigError(f"model.{name}", value, "a mapping with a _target_")
    value = dict(value)
    if "_target_" not in value:
        value = {**DEFAULTS[name], **value}
    if not isinstance(value["_target_"], str) or not value["_target_"].strip():
        raise ConfigError(f"model.{name}._target_", value["_target_"], "a class path")
    return value


def target_class(name: str, spec: Mapping[str, Any], *, from_checkpoint: bool = False) -> type:
    """The class ``model.<name>._target_`` names, checked to be what that node must build."""
    from hydra.utils import get_class

    path = spec["_target_"]
    if from_checkpoint and not path.startswith(CHECKPOINT_TARGETS):
        raise ConfigError(
            f"model.{name}._target_", path, f"a class from {', '.join(CHECKPOINT_TARGETS)}"
        )
    try:
        cls = get_class(path)
    except Exception as err:  # noqa: BLE001 - hydra raises ImportError or ValueError
        raise ConfigError(f"model.{name}._target_", path, f"an importable class ({err})") from err
    if name == "scheduler":
        from monai.networks.schedulers import DDPMScheduler, RFlowScheduler

        if not issubclass(cls, DDPMScheduler | RFlowScheduler):
            raise ConfigError(
                "model.scheduler._target_", path, "a monai DDPMScheduler or RFlowScheduler"
            )
    elif not issubclass(cls, get_class(BASES[name])):
        raise ConfigError(f"model.{name}._target_", path, f"a {BASES[name]} subclass")
    return cls


def objective_of(scheduler: Mapping[str, Any]) -> Objective:
    """The training objective a scheduler node stands for."""
    from monai.networks.schedulers import RFlowScheduler

    cls = target_class("scheduler", scheduler)
    return Objective.RFLOW if issubclass(cls, RFlowScheduler) else Objective.DDPM


def check_nodes(
    network: Mapping[str, Any], scheduler: Mapping[str, Any], optimizer: Mapping[str, Any]
) -> Objective:
    """Check the three nodes (types, ranges, how they fit together); return the objective.

    Raises :class:`ConfigError` naming the key (``model.network.channels``) and its value.
    """
    for name, spec in (("network", network), ("scheduler", scheduler), ("optimizer", optimizer)):
        target_class(name, spec)
    net = read_record(UNetNode, network, prefix="model.network.")
    if any(c % net.norm_num_groups for c in net.channels):
        raise ConfigError(
            "model.network.channels",
            list(net.channels),
            f"multiples of model.network.norm_num_groups={net.norm_num_groups}",
        )
    if net.channels and len(net.channels) != len(net.attention_levels):
        raise ConfigError(
            "model.network.attention_levels",
            list(net.attention_levels),
            f"one entry per level of model.network.channels={list(net.channels)}",
        )
    objective = objective_of(scheduler)
    if objective == Objective.DDPM:
        ddpm = read_record(DDPMNode, scheduler, prefix="model.scheduler.")
        if ddpm.schedule != "cosine" and not ddpm.beta_start < ddpm.beta_end:
            raise ConfigError(
                "model.scheduler.beta_start",
                ddpm.beta_start,
                f"< model.scheduler.beta_end ({ddpm.beta_end})",
            )
    else:
        read_record(RFlowNode, scheduler, prefix="model.scheduler.")
    read_record(OptimizerNode, optimizer, prefix="model.optimizer.")
    if optimizer.get("_partial_") is not True:
        raise ConfigError(
            "model.optimizer._partial_", optimizer.get("_partial_"), "true (a factory)"
        )
    return objective


def build(name: str, spec: Mapping[str, Any], **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(spec, **kwargs)``; a constructor's own refusal (a bad or
    unexpected key) becomes a :class:`ConfigError` naming ``model.<name>``."""
    import hydra
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(dict(spec), **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise ConfigError(f"model.{name}", _short(spec), f"{cause}") from err


def _short(spec: Mapping[str, Any]) -> str:
    return str(spec.get("_target_", "?")).rsplit(".", 1)[-1] + "(...)"


def spatial_factor(network: Mapping[str, Any]) -> int:
    """How much the UNet downsamples: spatial sizes must be multiples of this."""
    levels = len(network.get("channels") or [])
    return 2 ** max(levels - 1, 0)


def checkpoint_blocks(unet: nn.Module) -> None:
    """Activation checkpointing: recompute each down/mid/up block in backward instead of storing
    its activations (MONAI's UNet has no switch for it). Parameter names are unchanged."""
    from torch.utils.checkpoint import checkpoint

    if not all(hasattr(unet, a) for a in ("down_blocks", "middle_block", "up_blocks")):
        raise ConfigError(
            "model.activation_checkpointing",
            True,
            f"false for a {type(unet).__name__} (needs DiffusionModelUNet's blocks)",
        )
    net: Any = unet  # DiffusionModelUNet's block lists
    for block in [*net.down_blocks, net.middle_block, *net.up_blocks]:

        def forward(*args, _fwd=block.forward, **kw):
            if torch.is_grad_enabled():
                return checkpoint(_fwd, *args, use_reentrant=False, **kw)
            return _fwd(*args, **kw)

        block.forward = forward


# ------------------------------------------------------------------- checkpoints before issue 10

_OLD_NETWORK = (
    "channels",
    "attention_levels",
    "num_res_blocks",
    "num_head_channels",
    "norm_num_groups",
    "use_flash_attention",
)
_OLD_DROPPED = (
    "kind",
    "module",
    "preview_every_n_epochs",
    "preview_num_samples",
    "preview_sampler",
    "preview_steps",
    "preview_seed",
)


def upgrade_hparams(hp: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments from a checkpoint's hyperparameters, either layout.

    Checkpoints written before the nodes existed hold flat keys (``channels``, ``objective``,
    ``lr``, ``preview_*``, ...): they are mapped onto the nodes here; previews are dropped (a
    callback's settings now, not the model's).
    """
    hp = dict(hp)
    if "network" in hp:
        return {k: v for k, v in hp.items() if k not in ("kind", "module")}
    network = {**UNET, **{k: hp.pop(k) for k in _OLD_NETWORK if k in hp}}
    steps = hp.pop("num_train_timesteps", 1000)
    schedule: dict[str, Any] = {
        k: hp.pop(k) for k in ("schedule", "beta_start", "beta_end") if k in hp
    }
    prediction = hp.pop("prediction_type", "v_prediction")
    method = hp.pop("rflow_sample_method", "logit-normal")
    if hp.pop("objective", "ddpm") == "rflow":
        scheduler = {**RFLOW, "num_train_timesteps": steps, "sample_method": method}
    else:
        scheduler = {**DDPM, "num_train_timesteps": steps, **schedule}
        scheduler["prediction_type"] = prediction
    rates: dict[str, Any] = {k: hp.pop(k) for k in ("lr", "weight_decay") if k in hp}
    optimizer = {**ADAMW, **rates}
    for key in _OLD_DROPPED:
        hp.pop(key, None)
    return {**hp, "network": network, "scheduler": scheduler, "optimizer": optimizer}
