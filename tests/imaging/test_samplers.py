"""Samplers against known answers: an exact network, a Gaussian whose ODE solution is known,
the DDPM posterior, the shift formula, and the settings each sampler takes."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler

from medgen.errors import ConfigError, UserError
from medgen.imaging.diffusion import DiffusionModule
from medgen.imaging.samplers import (
    ddim_step,
    dpmpp_2m_step,
    flow_timesteps,
    resolve_settings,
    reverse_process,
    shift_timesteps,
)
from medgen.records import Sampler, SampleSettings
from medgen.tasks.checks import SampleJob
from medgen.utils.validate import read_record

from .conftest import tiny_kwargs_for

T = 1000


def ddpm_scheduler(prediction: str = "epsilon", clip: bool = False) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=T, prediction_type=prediction, clip_sample=clip)


def alpha_bars() -> torch.Tensor:
    return ddpm_scheduler().alphas_cumprod.double()


class ExactNetwork:
    """The network output that an ideal denoiser of data ``x0_of(x_t, alpha, sigma)`` gives,
    for ``x_t = alpha x0 + sigma noise`` (DDPM: alpha^2 + sigma^2 = 1; RFlow: alpha = 1 - t/T,
    sigma = t/T)."""

    def __init__(self, x0_of, *, flow: bool = False, prediction: str = "epsilon") -> None:
        self.x0_of, self.flow, self.prediction = x0_of, flow, prediction
        self.told: list[float] = []
        self.a_bar = alpha_bars()

    def __call__(self, x, timesteps, class_labels=None):
        self.told.append(float(timesteps[0]))
        t = timesteps.double().view(-1, 1, 1, 1, 1)
        if self.flow:
            s = t / T
            return ((self.x0_of(x, 1 - s, s) - x) / s).to(x.dtype)  # velocity x0 - noise
        a_bar = self.a_bar[timesteps.long()].view(-1, 1, 1, 1, 1)
        a, s = a_bar.sqrt(), (1 - a_bar).sqrt()
        x0 = self.x0_of(x, a, s)
        eps = (x - a * x0) / s
        out = a * eps - s * x0 if self.prediction == "v_prediction" else eps
        return out.to(x.dtype)


# -------------------------------------------------------------------------- an exact network


@pytest.mark.parametrize(
    "flow,prediction,sampler,steps,shift",
    [
        (False, "epsilon", "dpmpp", 10, 1.0),
        (False, "v_prediction", "dpmpp", 3, 1.0),
        (False, "epsilon", "heun", 8, 1.0),
        (False, "v_prediction", "heun", 2, 1.0),
        (False, "v_prediction", "ddim", 6, 1.0),
        (True, "v_prediction", "heun", 7, 1.0),
        (True, "v_prediction", "rflow", 9, 3.0),
        (True, "v_prediction", "heun", 5, 0.5),
    ],
)
def test_every_sampler_recovers_x0_with_an_ideal_network(flow, prediction, sampler, steps, shift):
    x0 = torch.rand(2, 1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    net = ExactNetwork(lambda x, a, s: x0, flow=flow, prediction=prediction)
    scheduler = RFlowScheduler(num_train_timesteps=T) if flow else ddpm_scheduler(prediction)
    x_T = torch.randn(2, 1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    x = reverse_process(
        net, scheduler, x_T, sampler=Sampler(sampler), steps=steps, prediction_type=prediction,
        shift=shift,
    )  # fmt: skip
    torch.testing.assert_close(x, x0, atol=1e-4, rtol=0)
    calls = 2 * steps - 1 if sampler == "heun" else steps
    assert len(net.told) == calls  # heun: two calls a step, Euler into the clean end


# -------------------------------------------------------------------------- a Gaussian toy


MEAN, SD = 0.1, 0.35
Z = torch.linspace(-2.4, 2.4, 64, dtype=torch.float64).view(1, 1, 4, 4, 4)


def gaussian_x0(x, a, s):
    """E[x0 | x_t] for data x0 ~ N(MEAN, SD^2) per voxel and x_t = a x0 + s noise."""
    return MEAN + a * SD**2 * (x - a * MEAN) / (a**2 * SD**2 + s**2)


def gaussian_error(flow: bool, prediction: str, sampler: str, steps: int) -> float:
    """Largest error against the exact probability-flow ODE solution. For Gaussian data the
    flow keeps ``z = (x_t - a MEAN) / sqrt(a^2 SD^2 + s^2)`` constant, so the sample drawn from
    x_T is ``MEAN + SD z`` (every value inside [-1, 1]: the final clamp never acts)."""
    if flow:
        a_T, s_T, scheduler = 0.0, 1.0, RFlowScheduler(num_train_timesteps=T)
    else:
        a_bar = float(alpha_bars()[T - 1])
        a_T, s_T, scheduler = math.sqrt(a_bar), math.sqrt(1 - a_bar), ddpm_scheduler(prediction)
    x_T = a_T * MEAN + math.sqrt(a_T**2 * SD**2 + s_T**2) * Z
    net = ExactNetwork(gaussian_x0, flow=flow, prediction=prediction)
    x = reverse_process(
        net, scheduler, x_T, sampler=Sampler(sampler), steps=steps, prediction_type=prediction
    )
    return float((x - (MEAN + SD * Z)).abs().max())


@pytest.mark.parametrize(
    "flow,prediction,first,second",
    [
        (False, "epsilon", "ddim", "dpmpp"),
        (False, "v_prediction", "ddim", "dpmpp"),
        (False, "epsilon", "ddim", "heun"),
        (True, "v_prediction", "rflow", "heun"),
    ],
)
def test_second_order_samplers_need_fewer_steps_on_a_gaussian(flow, prediction, first, second):
    """DDIM and Euler are first order (the global error halves when the steps double), Heun
    and DPM-Solver++(2M) second order (it quarters): 40 steps of the second-order sampler beat
    80 of the first-order one (for Heun, 79 network calls against 80). Measured max error at
    20 / 40 / 80 steps: ddim .15/.078/.040, dpmpp .089/.014/.00037 (its first-order last steps
    shrink too), heun (DDPM) .026/.0062/.0013, rflow .071/.036/.018, heun (RFlow)
    .0071/.0017/.00037; at 10 steps dpmpp (.27) is no better than ddim (.30) on this toy, whose
    detail sits at low noise where an evenly spaced grid is coarse."""
    e1 = {n: gaussian_error(flow, prediction, first, n) for n in (40, 80)}
    e2 = {n: gaussian_error(flow, prediction, second, n) for n in (40, 80)}
    assert 1.6 < e1[40] / e1[80] < 2.5, e1  # order 1
    assert e2[40] / e2[80] > 3.0, e2  # order 2 (4 in the limit)
    assert e2[40] < 0.5 * e1[80], (e1, e2)  # half the steps, half the error at most


# -------------------------------------------------------------------------- single steps


def test_dpmpp_first_step_is_ddim_and_the_second_follows_algorithm_2():
    a_bar = alpha_bars()
    t0, t1, t2 = 900, 700, 400
    g = torch.Generator().manual_seed(0)
    x, x0_a, x0_b = (torch.randn(1, 1, 2, 2, 2, generator=g, dtype=torch.float64) for _ in "abc")
    x0_a, x0_b = x0_a.clamp(-1, 1), x0_b.clamp(-1, 1)
    eps = (x - a_bar[t0].sqrt() * x0_a) / (1 - a_bar[t0]).sqrt()
    out = eps  # an epsilon network consistent with x0_a
    x1, h1 = dpmpp_2m_step(x, x0_a, alpha_bar_t=float(a_bar[t0]), alpha_bar_next=float(a_bar[t1]))
    ddim = ddim_step(
        out, x, alpha_bar_t=a_bar[t0], alpha_bar_next=a_bar[t1], prediction_type="epsilon",
        clip=False,
    )  # fmt: skip
    torch.testing.assert_close(x1, ddim)

    def lam(t):  # log(alpha / sigma)
        return 0.5 * math.log(float(a_bar[t]) / (1 - float(a_bar[t])))

    assert h1 == pytest.approx(lam(t1) - lam(t0))
    x2, h2 = dpmpp_2m_step(
        x1, x0_b, alpha_bar_t=float(a_bar[t1]), alpha_bar_next=float(a_bar[t2]),
        previous=(x0_a, h1),
    )  # fmt: skip
    r = h1 / h2
    d = (1 + 1 / (2 * r)) * x0_b - 1 / (2 * r) * x0_a
    sigma = lambda t: math.sqrt(1 - float(a_bar[t]))  # noqa: E731
    expected = sigma(t2) / sigma(t1) * x1 - math.sqrt(float(a_bar[t2])) * (math.exp(-h2) - 1) * d
    torch.testing.assert_close(x2, expected)


# -------------------------------------------------------------------------- DDIM eta


def _step(eta: float, noise: torch.Tensor, t: int, t_next: int) -> torch.Tensor:
    a_bar = alpha_bars()
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(1, 1, 2, 2, 2, generator=g, dtype=torch.float64) * 1.6 - 0.8
    eps = torch.randn(1, 1, 2, 2, 2, generator=g, dtype=torch.float64)
    x_t = a_bar[t].sqrt() * x0 + (1 - a_bar[t]).sqrt() * eps
    return ddim_step(
        eps, x_t, alpha_bar_t=a_bar[t], alpha_bar_next=a_bar[t_next], prediction_type="epsilon",
        eta=eta, noise=noise, clip=True,
    )  # fmt: skip


def test_eta_one_is_the_ddpm_posterior_step():
    """Consecutive timesteps with eta = 1: MONAI's DDPMScheduler.step with the same noise."""
    t = 500
    noise = torch.randn(1, 1, 2, 2, 2, generator=torch.Generator().manual_seed(9))
    ours = _step(1.0, noise.double(), t, t - 1)
    a_bar = alpha_bars()
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(1, 1, 2, 2, 2, generator=g, dtype=torch.float64) * 1.6 - 0.8
    eps = torch.randn(1, 1, 2, 2, 2, generator=g, dtype=torch.float64)
    x_t = a_bar[t].sqrt() * x0 + (1 - a_bar[t]).sqrt() * eps
    scheduler = ddpm_scheduler(clip=True)
    monai, _ = scheduler.step(
        eps.float(), t, x_t.float(), generator=torch.Generator().manual_seed(9)
    )
    torch.testing.assert_close(ours.float(), monai, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("t,t_next", [(999, 888), (500, 300), (40, 0)])
def test_eta_interpolates_between_ddim_and_the_ddpm_posterior(t, t_next):
    """The step noise is eta times the DDPM posterior's standard deviation (Song et al. eq. 16)
    and the marginal of x_next stays N(sqrt(a_next) x0, 1 - a_next) for every eta."""
    a_bar = alpha_bars()
    a_t, a_n = float(a_bar[t]), float(a_bar[t_next])
    posterior_var = (1 - a_n) / (1 - a_t) * (1 - a_t / a_n)
    z = torch.ones(1, 1, 2, 2, 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(1, 1, 2, 2, 2, generator=g, dtype=torch.float64) * 1.6 - 0.8
    eps = torch.randn(1, 1, 2, 2, 2, generator=g, dtype=torch.float64)
    sds = []
    for eta in (0.0, 0.25, 0.5, 0.75, 1.0):
        mean = _step(eta, torch.zeros_like(z), t, t_next)
        sd = float((_step(eta, z, t, t_next) - mean).mean())
        assert sd == pytest.approx(eta * math.sqrt(posterior_var), rel=1e-9, abs=1e-12)
        k = (mean - math.sqrt(a_n) * x0) / eps  # the coefficient left on the model's epsilon
        torch.testing.assert_close(k**2 + sd**2, torch.full_like(k, 1 - a_n))
        sds.append(sd)
    assert sds == sorted(sds)
    deterministic = ddim_step(
        eps, math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * eps, alpha_bar_t=a_bar[t],
        alpha_bar_next=a_bar[t_next], prediction_type="epsilon",
    )  # fmt: skip
    torch.testing.assert_close(_step(0.0, None, t, t_next), deterministic)
    torch.testing.assert_close(deterministic, math.sqrt(a_n) * x0 + math.sqrt(1 - a_n) * eps)


def test_eta_zero_draws_no_noise():
    net = ExactNetwork(gaussian_x0)
    x_T = torch.randn(2, 1, 2, 2, 2, dtype=torch.float64)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    a = reverse_process(net, ddpm_scheduler(), x_T, sampler=Sampler.DDIM, steps=5, eta=0.0,
                        generators=gens)  # fmt: skip
    b = reverse_process(net, ddpm_scheduler(), x_T, sampler=Sampler.DDIM, steps=5)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert torch.equal(torch.randn(1, generator=gens[0]), torch.randn(1, generator=_seeded(0)))


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -------------------------------------------------------------------------- the RFlow shift


def test_shift_one_is_no_shift_and_others_follow_the_formula():
    scheduler = RFlowScheduler(num_train_timesteps=T)
    plain = flow_timesteps(scheduler, 10, 8**3)
    assert [int(t) for t in plain] == [1000, 900, 800, 700, 600, 500, 400, 300, 200, 100]
    assert flow_timesteps(scheduler, 10, 8**3, shift=1.0) == plain
    shifted = flow_timesteps(scheduler, 10, 8**3, shift=3.0)
    # t' = 3 u / (1 + 2 u) at u = t / T: 500 -> 750, 100 -> 250, 200 -> 428.6
    assert shifted[0] == 1000 and shifted[5] == 750 and shifted[8] == 429 and shifted[9] == 250
    assert sum(t > T / 2 for t in shifted) == 8  # more steps at high noise
    assert shift_timesteps([500, 100], T, 1 / 3) == [250, 36]  # s < 1: towards low noise
    assert shift_timesteps([10, 9, 1], T, 0.01) == []  # rounds to 0: only the end point is left
    x_T = torch.randn(1, 1, 2, 2, 2, generator=_seeded(0))
    net = ExactNetwork(gaussian_x0, flow=True)
    one = reverse_process(net, RFlowScheduler(), x_T, sampler=Sampler.RFLOW, steps=6, shift=1.0)
    none = reverse_process(net, RFlowScheduler(), x_T, sampler=Sampler.RFLOW, steps=6)
    torch.testing.assert_close(one, none, atol=0, rtol=0)
    net.told.clear()
    reverse_process(net, RFlowScheduler(), x_T, sampler=Sampler.RFLOW, steps=4, shift=3.0)
    assert net.told == [1000.0, 900.0, 750.0, 500.0]  # 750 -> 900, 500 -> 750, 250 -> 500


# -------------------------------------------------------------------------- settings


def _resolve(objective: str = "ddpm", **kw) -> SampleSettings:
    return resolve_settings(SampleSettings(**kw), objective=objective, num_train_timesteps=T)


def test_new_samplers_resolve_with_their_defaults():
    assert (_resolve(sampler="dpmpp").steps, _resolve(sampler="dpmpp").eta) == (20, None)
    assert _resolve(sampler="heun").steps == 15 and _resolve("rflow", sampler="heun").eta is None
    s = _resolve("rflow", shift=3)
    assert s.shift == 3.0 and isinstance(s.shift, float) and s.sampler == Sampler.RFLOW
    assert _resolve(shift=1).shift == 1.0 and _resolve(sampler="ddim").eta == 0.0
    once = _resolve("rflow", sampler="heun", shift=2.0)
    again = resolve_settings(once, objective="rflow", num_train_timesteps=T)
    assert again == once  # idempotent: what a cohort records resolves to itself
    short = resolve_settings(
        SampleSettings(sampler="heun"), objective="rflow", num_train_timesteps=9
    )
    assert short.steps == 9


@pytest.mark.parametrize(
    "objective,kw,match",
    [
        ("rflow", {"shift": 0.0}, "shift=0.0"),
        ("rflow", {"shift": -2.0}, "shift=-2.0"),
        ("rflow", {"shift": math.nan}, "shift=nan"),
        ("rflow", {"shift": math.inf}, "shift=inf"),
        ("rflow", {"shift": True}, "shift=True"),
        ("rflow", {"shift": "3"}, "shift='3'"),
        ("ddpm", {"shift": 3.0}, "shift=3.0 is not allowed: 1.0 for a DDPM-trained model"),
        ("ddpm", {"sampler": "dpmpp", "eta": 0.5}, "eta=0.5.*dpmpp"),
        ("ddpm", {"sampler": "heun", "eta": 0.0}, "eta=0.0.*heun"),
        ("rflow", {"sampler": "heun", "eta": 1.0}, "eta=1.0"),
    ],
)
def test_bad_settings_are_one_line_config_errors(objective, kw, match):
    with pytest.raises(ConfigError, match=match) as err:
        _resolve(objective, **kw)
    assert "\n" not in str(err.value) and err.value.key in kw


def test_samplers_that_do_not_fit_the_objective_are_refused():
    with pytest.raises(UserError, match="sampler='dpmpp' does not fit .* 'rflow'"):
        _resolve("rflow", sampler="dpmpp")
    with pytest.raises(UserError, match="sampler='rflow'"):
        _resolve("ddpm", sampler="rflow")
    with pytest.raises(ValueError, match="shift"):
        reverse_process(ExactNetwork(gaussian_x0), ddpm_scheduler(), torch.zeros(1, 1, 2, 2, 2),
                        sampler=Sampler.DDIM, steps=2, shift=2.0)  # fmt: skip


def test_sample_job_checks_shift_and_old_records_read_as_no_shift():
    job = read_record(SampleJob, {"ckpt": "c", "out": "o", "sampler": "dpmpp", "shift": 2})
    assert job.settings().shift == 2.0 and job.settings().sampler == Sampler.DPMPP
    with pytest.raises(ConfigError, match="shift"):
        read_record(SampleJob, {"ckpt": "c", "out": "o", "shift": 0})
    old = SampleSettings().to_dict()
    del old["shift"]
    assert SampleSettings.from_dict(old).shift == 1.0
    new = SampleSettings(sampler=Sampler.HEUN, shift=2.5)
    assert SampleSettings.from_dict(new.to_dict()) == new


@pytest.mark.parametrize("objective,sampler", [("ddpm", "dpmpp"), ("ddpm", "heun"),
                                               ("rflow", "heun")])  # fmt: skip
def test_new_samplers_keep_each_sample_independent_of_its_batch(objective, sampler):
    torch.manual_seed(0)
    module = DiffusionModule(**tiny_kwargs_for(objective), data_meta=None).eval()
    x_T = torch.randn(3, 1, 8, 8, 8, generator=_seeded(0))
    both = module.denoise(x_T, sampler=sampler, steps=3)
    alone = module.denoise(x_T[1:2], sampler=sampler, steps=3)
    torch.testing.assert_close(both[1:2], alone, atol=1e-5, rtol=0)
    assert not torch.allclose(both[0], both[1])
