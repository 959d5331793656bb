"""An exponential moving average of the weights (Polyak & Juditsky 1992), as VDVAE and diffusers
keep one: evaluated, saved and sampled in place of the raw weights when ``--ema`` is on."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``shadow`` = decay * shadow + (1 - decay) * weights after every step, with the decay warmed up
    as min(decay, (1 + t) / (10 + t)) so the first steps are not dominated by the initial weights.
    Buffers (BatchNorm statistics) are copied, not averaged."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)
        self._src: list[torch.Tensor] = list(model.parameters())
        self._dst: list[torch.Tensor] = list(self.shadow.parameters())
        self._src_buf = list(model.buffers())
        self._dst_buf = list(self.shadow.buffers())

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the shadow towards the current weights (``step``: optimisation steps done)."""
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self._dst, self._src, 1.0 - d)
        if self._dst_buf:
            torch._foreach_copy_(self._dst_buf, self._src_buf)

    def tensors(self) -> list[torch.Tensor]:
        """The shadow's parameters and buffers (what a rollback snapshot must hold)."""
        return [*self._dst, *self._dst_buf]
