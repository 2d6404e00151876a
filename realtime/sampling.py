"""Flow-matching schedules and samplers as pure functions (k-diffusion style).

Time runs from 0 (pure noise) to 1 (data): ``x_t = (1 - t) x_0 + t x_1`` and the network predicts
the velocity ``v = x_1 - x_0``. A sampler is ``sample_x(model, x, ts, extra_args)``: ``model(x, t,
**extra_args)`` returns the velocity, ``ts`` is the increasing time grid, and nothing else is
remembered between calls (no step counter), so one model can serve any number of sessions.
Samplers accept torch tensors or numpy arrays (the onnxruntime backend passes numpy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

Velocity = Callable[..., Any]

MAX_STEPS = 8


def linear_ts(steps: int) -> np.ndarray:
    """Uniform time grid 0..1 with ``steps`` intervals (Liu et al. 2022, rectified flow)."""
    _check_steps(steps)
    return np.linspace(0.0, 1.0, steps + 1)


def shifted_ts(steps: int, shift: float = 2.0) -> np.ndarray:
    """Grid warped towards the noise end, t' = t / (t + shift (1 - t)) (Esser et al. 2024, SD3)."""
    t = linear_ts(steps)
    return t / (t + shift * (1.0 - t))


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int | np.integer) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"inference_steps must be an integer in 1..{MAX_STEPS}, got {steps!r}")


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Training pair for conditional flow matching: (x_t, target velocity) (Lipman et al. 2023)."""
    tt = t.reshape(-1, *([1] * (x1.dim() - 1)))
    return (1.0 - tt) * x0 + tt * x1, x1 - x0


@torch.no_grad()
def sample_euler(model: Velocity, x: Any, ts: Sequence[float], extra_args: dict | None = None) -> Any:
    """Euler integration of the flow ODE from noise ``x`` at ts[0] to data at ts[-1] (Liu et al. 2022)."""
    extra_args = extra_args or {}
    for t0, t1 in zip(ts[:-1], ts[1:], strict=True):
        x = x + (float(t1) - float(t0)) * model(x, float(t0), **extra_args)
    return x


@torch.no_grad()
def sample_heun(model: Velocity, x: Any, ts: Sequence[float], extra_args: dict | None = None) -> Any:
    """Heun's second-order method, Euler on the last step (Karras et al. 2022, Alg. 1)."""
    extra_args = extra_args or {}
    pairs = list(zip(ts[:-1], ts[1:], strict=True))
    for i, (t0, t1) in enumerate(pairs):
        dt = float(t1) - float(t0)
        v0 = model(x, float(t0), **extra_args)
        x_e = x + dt * v0
        if i == len(pairs) - 1:
            x = x_e
        else:
            x = x + dt * 0.5 * (v0 + model(x_e, float(t1), **extra_args))
    return x


def guided(cond: Any, uncond: Any, scale: float, channels: Any) -> Any:
    """Classifier-free guidance on some channels: u + s (c - u) there, c elsewhere (Ho & Salimans 2022)."""
    out = cond.clone() if isinstance(cond, torch.Tensor) else np.array(cond, copy=True)
    out[..., channels] = uncond[..., channels] + scale * (cond[..., channels] - uncond[..., channels])
    return out
