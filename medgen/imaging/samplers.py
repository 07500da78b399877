"""Reverse processes (DDPM, DDIM, DPM-Solver++, Heun, RFlow) on a network and a MONAI scheduler.

:func:`reverse_process` knows nothing of Lightning or of the model that owns the network: it gets
``network(x, timesteps=..., class_labels=...)``, a scheduler holding the noise maths
(``DDPMScheduler``: ddpm, ddim, dpmpp, heun; ``RFlowScheduler``: rflow, heun) and the settings it
needs. The sampler tables and their default step counts live here only (:func:`resolve_sampler`,
:func:`resolve_eta`, :func:`resolve_shift`).

A DDPM-trained model is sampled on ``x_t = alpha_t x_0 + sigma_t eps`` with
``alpha_t = sqrt(alphas_cumprod[t])``, ``sigma_t = sqrt(1 - alphas_cumprod[t])``, all steps taken
here with explicit ``(t, t_next)`` pairs of the timestep grid: MONAI 1.6.1's
``DDIMScheduler.set_timesteps`` lays out a linspace schedule (999, 888, ...) while its ``step``
moves x to ``t - T // steps`` (899, 788, ...), so the network would be told the wrong noise level
at every step after the first.

- ``ddim``: Song et al. 2020 (https://arxiv.org/abs/2010.02502), eq. 12; ``eta`` in 0..1 scales
  the step noise between deterministic DDIM (0) and the DDPM posterior (1, eq. 16).
- ``ddpm``: ancestral DDPM; all training timesteps run MONAI's ``DDPMScheduler.step``, fewer run
  the posterior on the sub-sequence (DDIM with eta = 1).
- ``dpmpp``: DPM-Solver++(2M), Lu et al. 2022 (https://arxiv.org/abs/2211.01095), Algorithm 2:
  a second-order multistep solver of the probability-flow ODE in ``lambda = log(alpha/sigma)``
  on the x_0 prediction; the first and last steps are first order (= DDIM).
- ``heun``: Heun's second-order method (Karras et al. 2022, https://arxiv.org/abs/2206.00364,
  Algorithm 1): on the rectified flow ``dx/dt = -v`` and, for DDPM models, on the probability-flow
  ODE ``dx'/ds = eps`` with ``x' = x / alpha``, ``s = sigma / alpha``. Two network calls per step
  except the last (Euler), ``2 * steps - 1`` in all.
- ``rflow``: Euler on the rectified flow ``x_t = (1 - t/T) x_0 + (t/T) noise``, velocity
  ``v = x_0 - noise`` (Liu et al. 2022).

``shift`` s moves an RFlow grid towards high noise, ``t' = s t / (1 + (s - 1) t)`` with t in
[0, 1] (Esser et al. 2024, https://arxiv.org/abs/2403.03206, eq. 23).
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
    Objective.DDPM: (Sampler.DDIM, Sampler.DDPM, Sampler.DPMPP, Sampler.HEUN),
    Objective.RFLOW: (Sampler.RFLOW, Sampler.HEUN),
}
# steps when none are given (ddpm: all the training timesteps), never more than were trained
DEFAULT_STEPS = {Sampler.DDIM: 50, Sampler.RFLOW: 30, Sampler.DPMPP: 20, Sampler.HEUN: 15}
# samplers that add no noise after x_T: eta does not apply
DETERMINISTIC = (Sampler.RFLOW, Sampler.DPMPP, Sampler.HEUN)

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
        sampler: ``ddpm`` | ``ddim`` | ``dpmpp`` | ``heun`` (DDPM-trained) or ``rflow`` |
            ``heun`` (RFlow-trained); None: the objective's default (ddim, rflow).
        steps: sampling steps in ``1..num_train_timesteps``; None: 50 ddim, 20 dpmpp, 15 heun,
            30 rflow, all training timesteps for ddpm (capped at ``num_train_timesteps``).
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
    the DDPM posterior (eta = 1, the only value it takes); rflow, dpmpp, heun have none (None)."""
    if sampler in DETERMINISTIC:
        if eta is not None:
            raise ConfigError("eta", eta, f"null for the {sampler} sampler (it adds no noise)")
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


def resolve_shift(objective: str, shift: float) -> float:
    """The RFlow timestep shift: a finite number > 0 (1.0: none); only 1.0 for DDPM models."""
    if isinstance(shift, bool) or not isinstance(shift, int | float) or not math.isfinite(shift):
        raise ConfigError("shift", shift, "a finite number > 0 (1.0: no shift)")
    if shift <= 0:
        raise ConfigError("shift", shift, "a finite number > 0 (1.0: no shift)")
    if float(shift) != 1.0 and objective != Objective.RFLOW:
        raise ConfigError("shift", shift, "1.0 for a DDPM-trained model (it shifts RFlow grids)")
    return float(shift)


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
    1 for ddpm, None for the deterministic samplers; ``shift``: > 0, RFlow models only;
    ``condition``: an index or a class name -> the index (refused when ``num_classes`` is 0).
    Guidance needs a condition; ``temperature`` and ``latent_prior`` are molecule settings
    (must stay 1.0 and auto). Raises a
    :class:`~medgen.errors.UserError` naming the setting.
    """
    sampler, steps = resolve_sampler(
        objective, settings.sampler, settings.steps, num_train_timesteps
    )
    eta = resolve_eta(sampler, settings.eta)
    shift = resolve_shift(objective, settings.shift)
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
    if settings.extra.get("latent_prior", "auto") != "auto":
        raise ConfigError("latent_prior", settings.extra["latent_prior"],
                          "auto for a scan model (molecules only)")  # fmt: skip
    return settings.replace(
        sampler=sampler,
        steps=steps,
        eta=eta,
        shift=shift,
        guidance_scale=float(w),
        condition=condition,
    )


# ------------------------------------------------------------------------------ timestep grids


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """Descending, evenly spaced timesteps ``round(linspace(T - 1, 0, steps))`` (MONAI's layout)."""
    t = torch.linspace(num_train_timesteps - 1, 0, steps, dtype=torch.float64).round().long()
    return [int(v) for v in t]


def shift_timesteps(timesteps: Sequence[Any], num_train_timesteps: int, shift: float) -> list[Any]:
    """An RFlow grid moved by ``t' = s t / (1 + (s - 1) t)`` (t = timestep / T), rounded to the
    integer timesteps the network was trained on; repeats and 0 (the end point) are dropped, so
    a large shift with many steps can make fewer steps. ``shift`` 1: the grid unchanged."""
    if float(shift) == 1.0:
        return list(timesteps)
    total, s = int(num_train_timesteps), float(shift)
    out: list[Any] = []
    for t in timesteps:
        u = float(t) / total
        t_new = round(total * s * u / (1 + (s - 1) * u))
        if t_new > 0 and (not out or t_new != out[-1]):
            out.append(t_new)
    return out


def flow_timesteps(scheduler: Any, steps: int, numel: int, shift: float = 1.0) -> list[Any]:
    """The descending RFlow grid of ``scheduler`` (its own ``set_timesteps``, with any resolution
    transform it is configured with), then shifted; the end point 0 is not included."""
    scheduler.set_timesteps(steps, input_img_size_numel=numel)
    return shift_timesteps(list(scheduler.timesteps), int(scheduler.num_train_timesteps), shift)


# ------------------------------------------------------------------------------ one step


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


def dpmpp_2m_step(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    *,
    alpha_bar_t: float,
    alpha_bar_next: float,
    previous: tuple[torch.Tensor, float] | None = None,
) -> tuple[torch.Tensor, float]:
    """One DPM-Solver++(2M) update (Lu et al. 2022, Algorithm 2) from t to the next timestep.

    Args:
        x_t: the current sample (B, C, D, H, W).
        x0: the (clipped) x_0 prediction at (x_t, t).
        alpha_bar_t, alpha_bar_next: cumulative alphas of t and of the next timestep (< 1).
        previous: ``(x0, h)`` of the step before (None: the first order update, DDIM).

    Returns:
        ``(x_next, h)``: the sample at the next timestep and this step's ``lambda_next - lambda_t``.
    """
    a_t, s_t = math.sqrt(alpha_bar_t), math.sqrt(1 - alpha_bar_t)
    a_n, s_n = math.sqrt(alpha_bar_next), math.sqrt(1 - alpha_bar_next)
    h = math.log(a_n / s_n) - math.log(a_t / s_t)
    d = x0
    if previous is not None:  # D_i = (1 + 1/(2 r)) x0_i - 1/(2 r) x0_{i-1}, r = h_{i-1} / h_i
        x0_prev, h_prev = previous
        c = h / (2 * h_prev)
        d = (1 + c) * x0 - c * x0_prev
    return (s_n / s_t) * x_t - a_n * math.expm1(-h) * d, h


# ------------------------------------------------------------------------------ the loop


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
    shift: float = 1.0,
    clamp: bool = True,
) -> torch.Tensor:
    """Denoise ``x_T`` (B, C, D, H, W) into samples x_0 (B, C, D, H, W), clamped to [-1, 1]
    unless ``clamp`` is false (latents: unit std, not the voxels' range).

    Args:
        network: ``network(x, timesteps=(B,), class_labels=(B,) | None)`` -> epsilon, v or the
            RFlow velocity, shaped like x.
        scheduler: a fresh MONAI ``DDPMScheduler`` (ddpm, ddim, dpmpp, heun: its
            ``alphas_cumprod``) or ``RFlowScheduler`` (rflow, heun); ``set_timesteps`` may be
            called on it.
        sampler, steps: as resolved by :func:`resolve_sampler`; ddpm with fewer steps than the
            scheduler's training timesteps runs the DDPM posterior on the sub-sequence (DDIM
            with eta = 1); heun makes ``2 * steps - 1`` network calls, the others ``steps``.
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
        shift: RFlow timestep shift (:func:`shift_timesteps`; 1.0: none, the only value for a
            DDPM scheduler).
        clamp: clamp the result to [-1, 1] (the x0 predictions inside DDPM-family steps are
            clipped as the scheduler's ``clip_sample`` says).
    """
    bound = 1.0 if clamp else float("inf")
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
    flow = not hasattr(scheduler, "alphas_cumprod")  # an RFlowScheduler
    if sampler in DETERMINISTIC and eta not in (None, 0.0):
        raise ValueError(f"eta={eta!r}: the {sampler} sampler adds no noise")
    if sampler not in SAMPLERS[Objective.RFLOW if flow else Objective.DDPM]:
        raise ValueError(f"sampler {sampler} does not fit a {type(scheduler).__name__}")
    if not flow and float(shift) != 1.0:
        raise ValueError(f"shift={shift!r}: only an RFlow grid can be shifted")

    def predict(x: torch.Tensor, t: Any) -> torch.Tensor:
        t_batch = torch.as_tensor(t, device=dev).expand(b)
        if null is None or class_labels is None:
            return network(x, timesteps=t_batch, class_labels=class_labels)
        out = network(
            torch.cat([x, x]),
            timesteps=torch.cat([t_batch, t_batch]),
            class_labels=torch.cat([class_labels, null]),
        )
        cond, uncond = out.chunk(2)
        return uncond + float(guidance_scale) * (cond - uncond)

    total = int(scheduler.num_train_timesteps)
    if flow:
        ts: list[Any] = flow_timesteps(scheduler, steps, int(x_T[0, 0].numel()), shift)
    elif sampler == Sampler.DDPM and steps == total:  # MONAI's consecutive DDPM steps
        scheduler.set_timesteps(steps, device=dev)
        ts = [int(t) for t in scheduler.timesteps]
    else:
        ts = ddim_timesteps(total, steps)
    pairs: Any = list(zip(ts, [*ts[1:], None], strict=True))
    if progress:
        from tqdm.auto import tqdm

        pairs = tqdm(pairs, desc=f"{sampler} {steps} steps", leave=False)
    x = x_T.clone()
    if flow:
        return _flow(predict, x, pairs, total, heun=sampler == Sampler.HEUN).clamp(-bound, bound)
    alphas = scheduler.alphas_cumprod.to(dev)
    clip = bool(getattr(scheduler, "clip_sample", True))
    if sampler == Sampler.DPMPP:
        return _dpmpp(predict, x, pairs, alphas, prediction_type, clip, ts[-1]).clamp(-bound, bound)
    if sampler == Sampler.HEUN:
        return _heun_vp(predict, x, pairs, alphas, prediction_type, clip).clamp(-bound, bound)
    eta = resolve_eta(sampler, eta) if eta is None else float(eta)
    eta = 0.0 if eta is None else eta
    one = torch.ones((), device=dev)
    for t, t_next in pairs:
        out = predict(x, t)
        if sampler == Sampler.DDPM and steps == total:
            x = _ddpm_step(scheduler, out, t, x, generators)
            continue
        a_next = alphas[t_next] if t_next is not None else one
        z = _step_noise(x, generators) if eta > 0 else None
        x = ddim_step(
            out, x, alpha_bar_t=alphas[t], alpha_bar_next=a_next,
            prediction_type=prediction_type, eta=eta, noise=z, clip=clip,
        )  # fmt: skip
    return x.clamp(-bound, bound)


Predict = Callable[[torch.Tensor, Any], torch.Tensor]


def _flow(predict: Predict, x: torch.Tensor, pairs: Any, total: int, *, heun: bool) -> torch.Tensor:
    """Euler (rflow) or Heun on ``dx/dt = -v`` with time t / T; the step into t = 0 is Euler
    (the velocity at the clean end is not learned)."""
    for t, t_next in pairs:
        t_to = 0 if t_next is None else t_next
        dt = float(t - t_to) / total
        v = predict(x, t)
        if heun and t_next is not None:
            v = 0.5 * (v + predict(x + v * dt, t_next))
        x = x + v * dt
    return x


def _x0(predict: Predict, x, t: int, alphas, prediction_type: str, clip: bool) -> torch.Tensor:
    x0, _ = _x0_eps(predict(x, t), x, alphas[t], prediction_type)
    return x0.clamp(-1.0, 1.0) if clip else x0


def _dpmpp(predict: Predict, x, pairs: Any, alphas, prediction_type: str, clip: bool, last: int):
    """DPM-Solver++(2M) over the grid. First order (DDIM) at the first step, into the grid's
    ``last`` timestep (there h is several times the step before's on an evenly spaced grid, and
    the second-order extrapolation with r = h_prev / h << 1 loses accuracy: Lu et al.'s "lower
    order final") and into the clean end, where it returns the x_0 prediction."""
    previous: tuple[torch.Tensor, float] | None = None
    for t, t_next in pairs:
        x0 = _x0(predict, x, t, alphas, prediction_type, clip)
        if t_next is None:
            return x0
        x, h = dpmpp_2m_step(
            x, x0, alpha_bar_t=float(alphas[t]), alpha_bar_next=float(alphas[t_next]),
            previous=None if t_next == last else previous,
        )  # fmt: skip
        previous = (x0, h)
    return x


def _heun_vp(predict: Predict, x, pairs: Any, alphas, prediction_type: str, clip: bool):
    """Heun on the probability-flow ODE of a DDPM model, ``dx'/ds = (x' - x0(x')) / s`` with
    ``x' = x / alpha`` and ``s = sigma / alpha`` (Karras et al. 2022, eq. 4 and Algorithm 1);
    the step into s = 0 is Euler (it returns the x_0 prediction)."""

    def scale(t: int | None) -> tuple[float, float]:  # (alpha, s) of timestep t (clean: 1, 0)
        if t is None:
            return 1.0, 0.0
        a_bar = float(alphas[t])
        return math.sqrt(a_bar), math.sqrt((1 - a_bar) / a_bar)

    for t, t_next in pairs:
        (a_t, s_t), (a_n, s_n) = scale(t), scale(t_next)
        d = (x / a_t - _x0(predict, x, t, alphas, prediction_type, clip)) / s_t
        x_euler = x / a_t + (s_n - s_t) * d  # in x' = x / alpha
        if t_next is None:
            x = x_euler
            break
        d_next = x_euler - _x0(predict, a_n * x_euler, t_next, alphas, prediction_type, clip)
        d = 0.5 * (d + d_next / s_n)
        x = a_n * (x / a_t + (s_n - s_t) * d)
    return x


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
