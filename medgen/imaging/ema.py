"""Exponential moving average of a network's weights, kept as a submodule so that it is saved in and
restored from the checkpoint's ``state_dict`` and moves with the module between devices."""

from __future__ import annotations

import copy

import torch
from torch import nn

from medgen.errors import UserError


class EMA(nn.Module):
    """EMA copy of ``model``: ``ema = d * ema + (1 - d) * weights`` after each optimizer step.

    The decay warms up as ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early EMA
    weights are not dominated by the random initialisation. Buffers (e.g. norm statistics) are
    copied as they are.

    Args:
        model: the network to track (deep-copied; the copy never requires grad).
        decay: the decay once warmed up (e.g. 0.999).
    """

    # a copy of weights counted already: not counted again in the run's parameter summary
    weight_copy = True

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise UserError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.num_updates: torch.Tensor
        self.last_step: torch.Tensor
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_step", torch.full((), -1, dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> bool:
        """Fold ``model``'s weights in; with ``step``, at most once per optimizer step (returns
        whether it updated)."""
        if step is not None:
            if int(self.last_step) >= step:
                return False
            self.last_step.fill_(step)
        d = self.current_decay()
        ema_params: list[torch.Tensor] = list(self.module.parameters())
        params: list[torch.Tensor] = [
            p.detach().to(e.dtype) for p, e in zip(model.parameters(), ema_params, strict=True)
        ]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
        self.num_updates.add_(1)
        return True
