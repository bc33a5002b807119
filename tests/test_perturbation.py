"""Perturbation geometry (mtsmart/arithmetic/perturbation.py) against naive per-unit references."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from mtsmart.arithmetic.perturbation import normalize, project, unit_norm, unit_radius

NORMS = ("inf", "l2", "l1")
LEVELS = ("token", "example")
ORD = {"inf": np.inf, "l2": 2, "l1": 1}


def _mask(batch: int, tokens: int) -> torch.Tensor:
    """(B, T, 1) with the last tokens of every example but the first as padding."""
    mask = torch.ones(batch, tokens, 1, dtype=torch.float64)
    for b in range(1, batch):
        mask[b, tokens - b :] = 0
    return mask


def _units(v: np.ndarray, level: str) -> list[tuple[tuple, np.ndarray]]:
    """(index, flat vector) of every unit of a (B, T, H) array."""
    if level == "token":
        return [((b, t), v[b, t]) for b in range(v.shape[0]) for t in range(v.shape[1])]
    return [((b,), v[b].ravel()) for b in range(v.shape[0])]


def _l1_ball_by_bisection(v: np.ndarray, radius: float) -> np.ndarray:
    """Euclidean projection onto ‖·‖₁ ≤ r: soft-threshold at the θ found by bisection."""
    if np.abs(v).sum() <= radius:
        return v.copy()
    lo, hi = 0.0, float(np.abs(v).max())
    for _ in range(200):
        theta = (lo + hi) / 2
        if np.clip(np.abs(v) - theta, 0, None).sum() > radius:
            lo = theta
        else:
            hi = theta
    return np.sign(v) * np.clip(np.abs(v) - theta, 0, None)


def _radius_of(radius, index) -> float:
    return float(radius) if not torch.is_tensor(radius) else float(radius[index].reshape(-1)[0])


def test_inf_projection_clamps_each_coordinate():
    delta = torch.tensor([[[0.5, -2.0, 0.1], [3.0, -0.05, -1.0]]])
    out = project(delta, 0.2, "inf", "token", torch.ones(1, 2, 1))
    assert torch.equal(out, torch.tensor([[[0.2, -0.2, 0.1], [0.2, -0.05, -0.2]]]))


def test_l2_projection_rescales_only_units_outside_the_ball():
    delta = torch.tensor([[[3.0, 4.0], [0.3, 0.4]]], dtype=torch.float64)  # norms 5 and 0.5
    out = project(delta, 1.0, "l2", "token", torch.ones(1, 2, 1, dtype=torch.float64))
    assert torch.allclose(out, torch.tensor([[[0.6, 0.8], [0.3, 0.4]]], dtype=torch.float64))
    whole = project(delta, 1.0, "l2", "example", torch.ones(1, 2, 1, dtype=torch.float64))
    assert torch.allclose(whole, delta / delta.norm())


@pytest.mark.parametrize("level", LEVELS)
def test_l1_projection_matches_bisection(level):
    gen = torch.Generator().manual_seed(0)
    mask = _mask(3, 4)
    for _ in range(30):
        delta = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64) * 3 * torch.rand((), generator=gen, dtype=torch.float64)
        radius = float(torch.rand((), generator=gen)) * 2
        out = project(delta, radius, "l1", level, mask).numpy()
        masked = (delta * mask).numpy()
        for index, unit in _units(masked, level):
            expected = _l1_ball_by_bisection(unit, radius)
            assert np.allclose(out[index].ravel(), expected, atol=1e-10)


def test_l1_projection_matches_a_generic_optimizer():
    # argmin ‖y − v‖² s.t. ‖y‖₁ ≤ r, solved by SLSQP on the split y = a − b, a, b ≥ 0.
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(1, 1, 6, generator=gen, dtype=torch.float64)
    radius = 0.7
    vv = v.numpy().ravel()
    n = vv.size
    objective = lambda z: np.sum((z[:n] - z[n:] - vv) ** 2)  # noqa: E731
    constraint = {"type": "ineq", "fun": lambda z: radius - z.sum()}
    solution = minimize(objective, np.zeros(2 * n), bounds=[(0, None)] * (2 * n), constraints=[constraint], method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
    expected = solution.x[:n] - solution.x[n:]
    out = project(v, radius, "l1", "token", torch.ones(1, 1, 1, dtype=torch.float64)).numpy().ravel()
    assert np.allclose(out, expected, atol=1e-5)


# Relative slack allowed above the radius. The sort-based l1 projection computes θ from a
# cumulative sum, so in float32 it can overshoot by a few 1e-4 when ‖δ‖₁ ≫ r (reported to the
# owner of perturbation.py: computing θ in float64 removes it); in float64 it is exact.
_SLACK = {(torch.float64, "inf"): 1e-12, (torch.float64, "l2"): 1e-12, (torch.float64, "l1"): 1e-9,
          (torch.float32, "inf"): 1e-7, (torch.float32, "l2"): 1e-6, (torch.float32, "l1"): 1e-3}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("relative", [False, True])
def test_projection_lands_in_the_ball_and_keeps_padding_zero(norm, level, relative, dtype):
    gen = torch.Generator().manual_seed(2)
    mask = _mask(3, 5).to(dtype)
    for _ in range(20):
        embeds = torch.randn(3, 5, 8, generator=gen, dtype=dtype) * 0.05
        delta = torch.randn(3, 5, 8, generator=gen, dtype=dtype) * float(torch.rand((), generator=gen)) * 10
        epsilon = float(torch.rand((), generator=gen)) * (0.5 if relative else 1.0)
        radius = unit_radius(embeds, epsilon, relative, norm, level)
        out = project(delta, radius, norm, level, mask)
        norms = unit_norm(out, norm, level).numpy()
        for index, _unit in _units(norms, level):
            assert norms[index].item() <= _radius_of(radius, index) * (1 + _SLACK[dtype, norm])
        assert torch.all(out[(mask == 0).expand_as(out)] == 0)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("level", LEVELS)
def test_unit_norm_and_normalize_match_numpy(norm, level):
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)
    mask = _mask(2, 3)
    norms = unit_norm(g, norm, level).numpy()
    for index, unit in _units(g.numpy(), level):
        assert np.isclose(norms[index].item(), np.linalg.norm(unit, ORD[norm]))
    unit_g = normalize(g, norm, level, mask)
    real = unit_norm(unit_g, norm, level)
    expected_one = mask if level == "token" else torch.ones(2, 1, 1, dtype=torch.float64)
    assert torch.allclose(real, expected_one)
    assert torch.all(unit_g[(mask == 0).expand_as(g)] == 0)


def test_relative_radius_is_epsilon_times_each_units_norm():
    embeds = torch.tensor([[[3.0, 4.0], [0.0, 1.0]]])
    assert torch.allclose(unit_radius(embeds, 0.1, True, "l2", "token"), torch.tensor([[[0.5], [0.1]]]))
    assert unit_radius(embeds, 0.1, False, "l2", "token") == 0.1
