"""Pure-tensor tests of the flow-matching schedules and samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from realtime.sampling import guided, interpolate, linear_ts, sample_euler, sample_heun, shifted_ts


def test_schedules_are_increasing_from_noise_to_data() -> None:
    for steps in range(1, 9):
        for ts in (linear_ts(steps), shifted_ts(steps, 2.0)):
            assert len(ts) == steps + 1
            assert ts[0] == 0.0 and ts[-1] == pytest.approx(1.0)
            assert np.all(np.diff(ts) > 0)
    assert shifted_ts(4, 3.0)[1] < linear_ts(4)[1]  # the shift spends more steps near noise
    for bad in (0, 9, 2.5, -1):
        with pytest.raises(ValueError):
            linear_ts(bad)  # type: ignore[arg-type]


def _point_mass_velocity(target: torch.Tensor):
    """Exact flow velocity towards a single data point: (x1 - x_t) / (1 - t)."""

    def v(x, t: float, scale: float = 1.0):
        return scale * (target - x) / (1.0 - t)

    return v


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_euler_reaches_a_point_mass_in_any_number_of_steps(steps: int) -> None:
    target = torch.tensor([[0.5, -2.0, 3.0]])
    x = torch.randn(1, 3, generator=torch.Generator().manual_seed(0))
    out = sample_euler(_point_mass_velocity(target), x, linear_ts(steps))
    torch.testing.assert_close(out, target)
    out_h = sample_heun(_point_mass_velocity(target), x, linear_ts(steps))
    torch.testing.assert_close(out_h, target, atol=1e-5, rtol=1e-5)


def test_samplers_are_pure_and_accept_numpy() -> None:
    target = np.array([1.0, 2.0])
    x = np.array([0.3, -0.7])
    v = _point_mass_velocity(target)
    a = sample_euler(v, x, linear_ts(4))
    b = sample_euler(v, x, linear_ts(4))  # a second call: no hidden step state
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(a, target)
    t_out = sample_euler(_point_mass_velocity(torch.from_numpy(target)), torch.from_numpy(x), linear_ts(4))
    np.testing.assert_allclose(t_out.numpy(), a)
    # extra_args reach the model
    half = sample_euler(v, x, linear_ts(1), {"scale": 0.5})
    np.testing.assert_allclose(half, x + 0.5 * (target - x))


def test_euler_on_a_linear_field_matches_the_closed_form() -> None:
    """dx/dt = -x integrates to x0 (1 - h)^n with Euler steps h."""
    x0 = torch.tensor([2.0])
    out = sample_euler(lambda x, t: -x, x0, linear_ts(4))
    torch.testing.assert_close(out, x0 * (1 - 0.25) ** 4)


def test_interpolate_endpoints_and_velocity() -> None:
    x0, x1 = torch.randn(4, 5, 3), torch.randn(4, 5, 3)
    xt, v = interpolate(x0, x1, torch.zeros(4))
    torch.testing.assert_close(xt, x0)
    xt, _ = interpolate(x0, x1, torch.ones(4))
    torch.testing.assert_close(xt, x1)
    torch.testing.assert_close(v, x1 - x0)
    t = torch.rand(4)
    xt, v = interpolate(x0, x1, t)
    torch.testing.assert_close(xt + (1 - t)[:, None, None] * v, x1)


def test_guidance_only_touches_the_chosen_channels() -> None:
    cond = np.array([[1.0, 1.0, 1.0]])
    uncond = np.array([[0.0, 0.0, 5.0]])
    ch = np.array([0, 1])
    np.testing.assert_allclose(guided(cond, uncond, 0.0, ch), [[0.0, 0.0, 1.0]])
    np.testing.assert_allclose(guided(cond, uncond, 1.0, ch), cond)
    np.testing.assert_allclose(guided(cond, uncond, 2.0, ch), [[2.0, 2.0, 1.0]])
    tc = guided(torch.from_numpy(cond), torch.from_numpy(uncond), 2.0, ch)
    np.testing.assert_allclose(tc.numpy(), [[2.0, 2.0, 1.0]])
