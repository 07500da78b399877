"""Reverse processes (DDPM, DDIM, RFlow) on a network callable and a MONAI noise scheduler.

:func:`reverse_process` knows nothing of Lightning or of the model that owns the network: it gets
``network(x, timesteps=..., class_labels=...)``, a scheduler holding the noise maths
(``DDPMScheduler`` for DDPM/DDIM, ``RFlowScheduler`` for RFlow) and the settings it needs. The
sampler tables and their default step counts live here only (:func:`resolve_sampler`,
:func:`resolve_eta`).

DDIM (Song et al. 2020, https://arxiv.org/abs/2010.02502, eq. 12 and 16) is stepped here with
explicit ``(t, t_next)`` pairs taken from the timestep schedule, using the scheduler's
``alphas_cumprod``: MONAI 1.6.1's ``DDIMScheduler.set_timesteps`` lays out a linspace schedule
(999, 888, 777, ...) while its ``step`` moves x to ``t - T // steps`` (899, 788, ...), so the
network would be told the wrong noise level at every step after the first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from medgen.errors import ConfigError, UserError
from medgen.imaging.components import Objective, PredictionType
from medgen.records import Sampler, SampleSettings

# samplers that fit each training objective; the first one is the default
SAMPLERS: dict[Objective, tuple[Sampler, ...]] = {
    Objective.DDPM: (Sampler.DDIM, Sampler.DDPM),
    Objective.RFLOW: (Sampler.RFLOW,),
}
# steps when none are given (ddpm: all the training timesteps), never more than were trained
DEFAULT_STEPS = {Sampler.DDIM: 50, Sampler.RFLOW: 30}

Network = Callable[..., torch.Tensor]


def as_sampler(value: Any) -> Sampler | None:
    """``value`` as a :class:`Sampler` (None stays None); a UserError naming a bad one."""
    if value is None:
        return None
    try:
        return Sampler(value)
    except ValueError:
        names = ", ".join(s.value for s in Sampler)
        raise UserError(f"sampler={value!r}: choose one of {names} (or null)") from None


def resolve_sampler(
    objective: str, sampler: str | None, steps: int | None, num_train_timesteps: int
) -> tuple[Sampler, int]:
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
        UserError: naming the bad value.
    """
    try:
        objective = Objective(objective)
    except ValueError:
        raise UserError(f"objective {objective!r} must be one of ddpm, rflow") from None
    allowed = SAMPLERS[objective]
    sampler = as_sampler(sampler) or allowed[0]
    if sampler not in allowed:
        raise UserError(
            f"sampler={sampler.value!r} does not fit a model trained with the "
            f"{objective.value!r} objective; use one of {', '.join(allowed)}"
        )
    total = int(num_train_timesteps)
    if steps is None:
        steps = min(DEFAULT_STEPS.get(sampler, total), total)
    if isinstance(steps, bool) or int(steps) != steps or not 1 <= int(steps) <= total:
        raise UserError(
            f"steps={steps!r}: this model was trained with {total} timesteps "
            f"(steps must be an integer in 1..{total})"
        )
    return sampler, int(steps)


def resolve_eta(sampler: Sampler, eta: float | None) -> float | None:
    """DDIM's stochasticity for ``sampler``: ddim takes 0..1 (default 0, deterministic); ddpm is
    the DDPM posterior (eta = 1, the only value it takes); rflow has none (None)."""
    if sampler == Sampler.RFLOW:
        if eta is not None:
            raise ConfigError("eta", eta, "null for the rflow sampler (it adds no noise)")
        return None
    if sampler == Sampler.DDPM:
        if eta is not None and float(eta) != 1.0:
            raise ConfigError("eta", eta, "null or 1.0 for ddpm (sampler=ddim takes 0..1)")
        return 1.0
    if eta is None:
        return 0.0
    if isinstance(eta, bool) or not math.isfinite(float(eta)) or not 0.0 <= float(eta) <= 1.0:
        raise ConfigError("eta", eta, "a number in 0..1 (0: deterministic DDIM)")
    return float(eta)


def resolve_condition(
    condition: int | str | None, num_classes: int, class_names: Sequence[str] = ()
) -> tuple[int | None, str | None]:
    """A class condition given as index or name -> ``(index, name)``; ``(None, None)`` for none.

    ``num_classes`` 0: the model is not class-conditional, any condition is refused.
    """
    if condition is None:
        return None, None
    names = list(class_names)
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


def resolve_settings(
    settings: SampleSettings,
    *,
    objective: str,
    num_train_timesteps: int,
    num_classes: int = 0,
    class_names: Sequence[str] = (),
) -> SampleSettings:
    """``settings`` checked against a model's facts, with the defaults filled in.

    ``sampler`` None: the objective's default; ``steps`` None: the sampler's; ``eta``: 0 for ddim,
    1 for ddpm, None for rflow; ``condition``: an index or a class name -> the index (refused
    when ``num_classes`` is 0). Guidance needs a condition; ``temperature`` is a molecule setting
    (must stay 1.0). Raises a :class:`~medgen.errors.UserError` naming the setting.
    """
    sampler, steps = resolve_sampler(
        objective, settings.sampler, settings.steps, num_train_timesteps
    )
    eta = resolve_eta(sampler, settings.eta)
    w = settings.guidance_scale
    if isinstance(w, bool) or not math.isfinite(float(w)) or float(w) < 0:
        raise ConfigError("guidance_scale", w, "a finite number >= 0")
    condition, _ = resolve_condition(settings.condition, num_classes, class_names)
    if float(w) != 1.0 and condition is None:
        raise ConfigError("guidance_scale", w, "1.0 unless a class condition is given")
    if settings.temperature != 1.0:
        raise ConfigError(
            "temperature", settings.temperature, "1.0 for a scan model (molecules only)"
        )
    return settings.replace(
        sampler=sampler, steps=steps, eta=eta, guidance_scale=float(w), condition=condition
    )


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """Descending, evenly spaced timesteps ``round(linspace(T - 1, 0, steps))`` (MONAI's layout)."""
    t = torch.linspace(num_train_timesteps - 1, 0, steps, dtype=torch.float64).round().long()
    return [int(v) for v in t]


def _x0_eps(
    out: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, epsilon) predicted from the network output at a timestep with cumulative alpha."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == PredictionType.V_PREDICTION:  # v = a eps - s x0 (Salimans & Ho 2022)
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
        out: network output at (x_t, t), (B, C, D, H, W): epsilon or v.
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


def reverse_process(
    network: Network,
    scheduler: Any,
    x_T: torch.Tensor,
    *,
    sampler: Sampler,
    steps: int,
    prediction_type: str = PredictionType.EPSILON,
    eta: float | None = None,
    class_labels: torch.Tensor | None = None,
    null_class: int | None = None,
    guidance_scale: float = 1.0,
    generators: Sequence[torch.Generator] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Denoise ``x_T`` (B, C, D, H, W) into samples x_0 (B, C, D, H, W) clamped to [-1, 1].

    Args:
        network: ``network(x, timesteps=(B,), class_labels=(B,) | None)`` -> epsilon, v or the
            RFlow velocity, shaped like x.
        scheduler: a fresh MONAI ``DDPMScheduler`` (ddpm, ddim: its ``alphas_cumprod``) or
            ``RFlowScheduler`` (rflow); ``set_timesteps`` is called on it.
        sampler, steps: as resolved by :func:`resolve_sampler`; ddpm with fewer steps than the
            scheduler's training timesteps runs the DDPM posterior on the sub-sequence (DDIM
            with eta = 1).
        prediction_type: what a DDPM-trained network predicts (``epsilon``, ``v_prediction``).
        eta: DDIM stochasticity (None: :func:`resolve_eta`'s default).
        class_labels: (B,) long class per sample (the null class for none) for a
            class-conditional network; None: an unconditional network.
        null_class: the label the network was trained with for "no class" (guidance needs it).
        guidance_scale: classifier-free guidance w (Ho & Salimans 2022,
            https://arxiv.org/abs/2207.12598): ``pred = uncond + w * (cond - uncond)``.
        generators: one per sample for the per-step noise of stochastic samplers, so sample i
            never depends on the rest of its batch (None: the global RNG).
        progress: a tqdm bar over the steps.
    """
    if x_T.ndim != 5:
        raise ValueError(f"x_T must be (B, C, D, H, W), got {tuple(x_T.shape)}")
    b, dev = x_T.shape[0], x_T.device
    if generators is not None and len(generators) != b:
        raise ValueError(f"got {len(generators)} generators for a batch of {b}")
    if class_labels is not None and tuple(class_labels.shape) != (b,):
        raise ValueError(f"class_labels must be (B,) = ({b},), got {tuple(class_labels.shape)}")
    null = None  # (B,) null-class labels: classifier-free guidance
    if class_labels is not None and float(guidance_scale) != 1.0:
        if null_class is None:
            raise ValueError("classifier-free guidance needs the network's null class")
        null = torch.full_like(class_labels, int(null_class))
    eta = resolve_eta(sampler, eta) if eta is None else float(eta)
    eta = 0.0 if eta is None else eta  # rflow: no noise added
    total = int(scheduler.num_train_timesteps)
    full_ddpm = sampler == Sampler.DDPM and steps == total  # MONAI's consecutive DDPM steps
    if sampler == Sampler.RFLOW:
        numel = int(x_T[0, 0].numel())
        scheduler.set_timesteps(steps, device=dev, input_img_size_numel=numel)
        ts = list(scheduler.timesteps)
    elif full_ddpm:
        scheduler.set_timesteps(steps, device=dev)
        ts = [int(t) for t in scheduler.timesteps]
    else:
        ts = ddim_timesteps(total, steps)
    alphas = None if sampler == Sampler.RFLOW else scheduler.alphas_cumprod.to(dev)
    clip = bool(getattr(scheduler, "clip_sample", True))
    one = torch.ones((), device=dev)

    x = x_T.clone()
    pairs = list(zip(ts, [*ts[1:], None], strict=True))
    if progress:
        from tqdm.auto import tqdm

        pairs = tqdm(pairs, desc=f"{sampler} {steps} steps", leave=False)
    for t, t_next in pairs:
        t_batch = torch.as_tensor(t, device=dev).expand(b)
        if null is not None and class_labels is not None:
            out = network(
                torch.cat([x, x]),
                timesteps=torch.cat([t_batch, t_batch]),
                class_labels=torch.cat([class_labels, null]),
            )
            cond, uncond = out.chunk(2)
            out = uncond + float(guidance_scale) * (cond - uncond)
        else:
            out = network(x, timesteps=t_batch, class_labels=class_labels)
        if sampler == Sampler.RFLOW:
            t_to = t_next if t_next is not None else torch.zeros_like(t)
            x, _ = scheduler.step(out, t, x, t_to)
        elif full_ddpm:
            x = _ddpm_step(scheduler, out, t, x, generators)
        else:
            assert alphas is not None  # DDPM schedulers have them
            a_next = alphas[t_next] if t_next is not None else one
            z = _step_noise(x, generators) if eta > 0 else None
            x = ddim_step(
                out,
                x,
                alpha_bar_t=alphas[t],
                alpha_bar_next=a_next,
                prediction_type=prediction_type,
                eta=eta,
                noise=z,
                clip=clip,
            )
    return x.clamp(-1.0, 1.0)


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


def _ddpm_step(scheduler, out, t: int, x, generators) -> torch.Tensor:
    """MONAI's DDPMScheduler step (consecutive timesteps), per-sample generators when given."""
    if generators is None:
        return scheduler.step(out, t, x)[0]
    return torch.cat(
        [
            scheduler.step(out[i : i + 1], t, x[i : i + 1], generator=g)[0]
            for i, g in enumerate(generators)
        ]
    )
