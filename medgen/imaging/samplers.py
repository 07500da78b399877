"""The reverse process behind :meth:`DiffusionModule.generate`: DDPM, DDIM and RFlow sampling.

The sampler tables and their default step counts live here only; ``medgen sample`` and
``DiffusionModule.generate`` both call :func:`resolve_sampler`.

DDIM (Song et al. 2020, https://arxiv.org/abs/2010.02502, eq. 12 and 16) is stepped here with
explicit ``(t, t_next)`` pairs taken from the timestep schedule, using the scheduler's
``alphas_cumprod``: MONAI 1.6.1's ``DDIMScheduler.set_timesteps`` lays out a linspace schedule
(999, 888, 777, ...) while its ``step`` moves x to ``t - T // steps`` (899, 788, ...), so the
network would be told the wrong noise level at every step after the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from medgen.errors import UserError

OBJECTIVES = ("ddpm", "rflow")
# samplers that fit each training objective; the first one is the default
SAMPLERS: dict[str, tuple[str, ...]] = {"ddpm": ("ddim", "ddpm"), "rflow": ("rflow",)}
ALL_SAMPLERS = ("ddpm", "ddim", "rflow")
# steps when none are given (ddpm: all the training timesteps), never more than were trained
DEFAULT_STEPS = {"ddim": 50, "rflow": 30}


def resolve_sampler(
    objective: str, sampler: str | None, steps: int | None, num_train_timesteps: int
) -> tuple[str, int]:
    """Check a sampler and step count against a model; fill in the defaults.

    Args:
        objective: the model's training objective, ``ddpm`` or ``rflow``.
        sampler: ``ddpm`` | ``ddim`` (DDPM-trained) or ``rflow`` (RFlow-trained); None: the
            objective's default (ddim, rflow).
        steps: sampling steps in ``1..num_train_timesteps``; None: 50 ddim, 30 rflow, all
            training timesteps for ddpm (capped at ``num_train_timesteps``).
        num_train_timesteps: the model's training timesteps T.

    Returns:
        ``(sampler, steps)``.

    Raises:
        ValueError: naming the bad value.
    """
    if objective not in SAMPLERS:
        raise UserError(f"objective {objective!r} must be one of {OBJECTIVES}")
    if sampler is not None and sampler not in ALL_SAMPLERS:
        raise UserError(f"sampler={sampler!r}: choose one of {', '.join(ALL_SAMPLERS)} (or null)")
    allowed = SAMPLERS[objective]
    sampler = sampler or allowed[0]
    if sampler not in allowed:
        raise UserError(
            f"sampler={sampler!r} does not fit a model trained with the {objective!r} objective; "
            f"use one of {', '.join(allowed)}"
        )
    total = int(num_train_timesteps)
    if steps is None:
        steps = min(DEFAULT_STEPS.get(sampler, total), total)
    if int(steps) != steps or not 1 <= int(steps) <= total:
        raise UserError(
            f"steps={steps!r}: this model was trained with {total} timesteps "
            f"(steps must be an integer in 1..{total})"
        )
    return sampler, int(steps)


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """Descending, evenly spaced timesteps ``round(linspace(T - 1, 0, steps))`` (MONAI's layout)."""
    t = torch.linspace(num_train_timesteps - 1, 0, steps, dtype=torch.float64).round().long()
    return [int(v) for v in t]


def _x0_eps(
    out: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, epsilon) predicted from the network output at a timestep with cumulative alpha."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "v_prediction":  # v = a eps - s x0 (Salimans & Ho 2022)
        return a * x_t - s * out, a * out + s * x_t
    return (x_t - s * out) / a, out


def ddim_step(
    out: torch.Tensor,
    x_t: torch.Tensor,
    *,
    alpha_bar_t: torch.Tensor,
    alpha_bar_next: torch.Tensor,
    prediction_type: str,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """One DDIM update from timestep t to the next (lower) timestep (Song et al. 2020, eq. 12).

    Args:
        out: network output at (x_t, t), (B, 1, D, H, W): epsilon or v.
        x_t: the current sample, same shape.
        alpha_bar_t, alpha_bar_next: cumulative alphas of t and the next timestep (1.0 past 0).
        eta: 0 deterministic DDIM; 1 the DDPM posterior between the two timesteps (eq. 16).
        noise: standard normal noise shaped like ``x_t`` (needed when ``eta > 0``).
        clip: clamp the x0 prediction to [-1, 1] (as the training data range).
    """
    x0, eps = _x0_eps(out, x_t, alpha_bar_t, prediction_type)
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
    var = (1 - alpha_bar_next) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_next)
    sigma = float(eta) * var.clamp(min=0).sqrt()
    x_next = alpha_bar_next.sqrt() * x0 + (1 - alpha_bar_next - sigma**2).clamp(min=0).sqrt() * eps
    if float(eta) > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise")
        x_next = x_next + sigma * noise
    return x_next


def sample_loop(
    module: Any,
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
    """The reverse process behind :meth:`DiffusionModule.generate` (same arguments).

    ``noise``: x_T, (B, 1, D, H, W). Returns x_0 (B, 1, D, H, W) clamped to [-1, 1].
    """
    hp = module.hparams
    total = int(hp.num_train_timesteps)
    sampler, steps = resolve_sampler(hp.objective, sampler, steps, total)
    if noise.ndim != 5 or noise.shape[1] != 1:
        raise ValueError(f"noise must be (B, 1, D, H, W), got {tuple(noise.shape)}")
    b, dev = noise.shape[0], noise.device
    if generators is not None and len(generators) != b:
        raise ValueError(f"got {len(generators)} generators for a batch of {b}")
    y = _class_labels(module, class_labels, b, dev)
    guided = y is not None and class_labels is not None and float(guidance_scale) != 1.0

    # full DDPM runs MONAI's DDPMScheduler on consecutive timesteps; DDPM on a shorter
    # sub-sequence is DDIM with eta = 1 (the DDPM posterior between two timesteps, eq. 16)
    full_ddpm = sampler == "ddpm" and steps == total
    eta = 1.0 if sampler == "ddpm" else 0.0
    sched = module._make_scheduler("rflow" if sampler == "rflow" else "ddpm")
    if sampler == "rflow":
        sched.set_timesteps(steps, device=dev, input_img_size_numel=int(noise[0, 0].numel()))
        ts = [t for t in sched.timesteps]
    elif full_ddpm:
        sched.set_timesteps(steps, device=dev)
        ts = [int(t) for t in sched.timesteps]
    else:
        ts = ddim_timesteps(total, steps)
    alphas = sched.alphas_cumprod.to(dev) if sampler != "rflow" else None
    one = torch.ones((), device=dev)

    net = module.ema.module if use_ema else module.unet
    was_training = net.training
    net.eval()
    try:
        x = noise.clone()
        next_ts = [*ts[1:], None]
        pairs = list(zip(ts, next_ts, strict=True))
        if progress:
            from tqdm.auto import tqdm

            pairs = tqdm(pairs, desc=f"{sampler} {steps} steps", leave=False)
        for t, t_next in pairs:
            t_batch = torch.as_tensor(t, device=dev).expand(b)
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
                t_to = t_next if t_next is not None else torch.zeros_like(t)
                x, _ = sched.step(out, t, x, t_to)
            elif full_ddpm:
                x = _ddpm_step(sched, out, t, x, generators)
            else:
                a_next = alphas[t_next] if t_next is not None else one
                z = _step_noise(x, generators) if eta > 0 else None
                x = ddim_step(
                    out,
                    x,
                    alpha_bar_t=alphas[t],
                    alpha_bar_next=a_next,
                    prediction_type=hp.prediction_type,
                    eta=eta,
                    noise=z,
                )
    finally:
        net.train(was_training)
    return x.clamp(-1.0, 1.0)


def _class_labels(module: Any, class_labels: Any, b: int, dev: torch.device) -> torch.Tensor | None:
    """(B,) long class labels for a class-conditional model (the null class when none given)."""
    hp = module.hparams
    if not hp.class_conditional:
        if class_labels is not None:
            raise ValueError("class_labels given, but the model is not class-conditional")
        return None
    if class_labels is None:
        return torch.full((b,), module.null_class, dtype=torch.long, device=dev)
    y = torch.as_tensor(class_labels, device=dev).long()
    if y.shape != (b,) or int(y.min()) < 0 or int(y.max()) > module.null_class:
        raise ValueError(
            f"class_labels must be {b} ints in 0..{hp.num_classes - 1}, got {y.tolist()}"
        )
    return y


def _step_noise(x: torch.Tensor, generators: Sequence[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise like ``x``; sample i's from its own generator when given."""
    if generators is None:
        return torch.randn_like(x)
    return torch.cat(
        [
            torch.randn(x[i : i + 1].shape, generator=g, device=x.device, dtype=x.dtype)
            for i, g in enumerate(generators)
        ]
    )


def _ddpm_step(sched, out, t: int, x, generators) -> torch.Tensor:
    """MONAI's DDPMScheduler step (consecutive timesteps), per-sample generators when given."""
    if generators is None:
        return sched.step(out, t, x)[0]
    return torch.cat(
        [
            sched.step(out[i : i + 1], t, x[i : i + 1], generator=g)[0]
            for i, g in enumerate(generators)
        ]
    )
