"""Tests of kgml_grid.losses on hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kgml_grid.losses import (
    growing_season_mask,
    masked_mean,
    masked_mse,
    mass_balance_penalty,
    relative_balance_penalty,
    response_drift_penalty,
    response_penalty,
    season_sum,
    tower_loss,
    weighted_flux_mse,
    yield_bounds_penalty,
)

NAN = math.nan


def _t(*values, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def _check_scalar(loss: torch.Tensor, expected: float) -> None:
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_masked_mse_hand_values_and_nan_targets():
    pred = _t(1.0, 2.0, 3.0, grad=True)
    target = _t(1.0, 0.0, NAN)
    loss = masked_mse(pred, target)  # NaN target left out: (0 + 4) / 2
    _check_scalar(loss, 2.0)
    loss.backward()
    assert torch.equal(pred.grad, _t(0.0, 2.0, 0.0))  # d/dpred of mean: 2 * diff / n
    _check_scalar(masked_mse(pred, target, torch.tensor([True, False, True])), 0.0)
    _check_scalar(masked_mse(pred, _t(0.0, 0.0, 0.0), np.array([False, True, True])), 6.5)


def test_masked_mse_broadcast_mask():
    pred = torch.ones(2, 3, dtype=torch.float64)
    target = torch.zeros(2, 3, dtype=torch.float64)
    target[1] = 3.0
    _check_scalar(masked_mse(pred, target, torch.tensor([[True], [False]])), 1.0)
    with pytest.raises(TypeError, match="mask must be boolean"):
        masked_mse(pred, target, torch.ones(2, 3))


def test_weighted_flux_mse():
    pred = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    target = torch.tensor([[0.0, 0.0, 0.0], [2.0, NAN, 3.0]], dtype=torch.float64)
    # ra: (1 + 1)/2 = 1; rh: 4/1 = 4; nee: (9 + 0)/2 = 4.5
    _check_scalar(weighted_flux_mse(pred, target), 1.0 + 4.0 + 4.5)
    _check_scalar(weighted_flux_mse(pred, target, weights=(2.0, 0.0, 1.0)), 2.0 + 4.5)
    shared = torch.tensor([True, False])  # mask over the leading axes only
    _check_scalar(weighted_flux_mse(pred, target, shared), 1.0 + 4.0 + 9.0)
    per_var = torch.tensor([[True, True, False], [True, True, True]])
    _check_scalar(weighted_flux_mse(pred, target, per_var), 1.0 + 4.0 + 0.0)
    with pytest.raises(ValueError, match="weights 2; they must agree"):
        weighted_flux_mse(pred, target, weights=(1.0, 1.0))


def test_mass_balance_penalty():
    gpp = _t(10.0, 10.0, 10.0)
    reco = _t(5.0, 5.0, 5.0)
    nee_balanced = reco - gpp
    _check_scalar(mass_balance_penalty(gpp, reco, nee_balanced), 0.0)
    # within tol * |reco| = 0.05 of balance: still free
    _check_scalar(mass_balance_penalty(gpp, reco, nee_balanced + _t(0.04, -0.049, 0.0)), 0.0)
    # ... and penalised in full without the free band (pre-training's default)
    _check_scalar(
        mass_balance_penalty(gpp, reco, nee_balanced + _t(0.04, -0.049, 0.0), tol=0.0), 0.089 / 3
    )
    # |10 - 5 + (-4)| - 0.01 * 5 = 0.95 on one day of three
    nee = _t(-4.0, -5.0, -5.0, grad=True)
    loss = mass_balance_penalty(gpp, reco, nee)
    _check_scalar(loss, 0.95 / 3)
    loss.backward()
    assert torch.isfinite(nee.grad).all()
    _check_scalar(mass_balance_penalty(gpp, reco, nee, tol=0.5), 0.0)
    _check_scalar(
        mass_balance_penalty(gpp, reco, nee, mask=torch.tensor([True, False, False])), 0.95
    )


def _decreasing(x: torch.Tensor) -> torch.Tensor:
    return 3.0 - 2.0 * x[..., 0] + x[..., 1]


def test_response_penalty():
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    # response rises with feature 1: no penalty
    _check_scalar(response_penalty(_decreasing, x, 1, delta=0.5), 0.0)
    # falls with feature 0 by 2 * delta everywhere
    _check_scalar(response_penalty(_decreasing, x, 0, delta=0.5), 1.0)
    _check_scalar(response_penalty(_decreasing, x, [0, 1], delta=0.5), 0.5)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    _check_scalar(response_penalty(_decreasing, x, 0, delta=0.5, mask=mask), 0.0)
    w = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    loss = response_penalty(lambda z: -w * z[..., 0], x, 0, delta=0.25)
    loss.backward()
    assert w.grad.item() == pytest.approx(0.25)
    assert x.grad is None and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="delta must be positive"):
        response_penalty(_decreasing, x, 0, delta=0.0)


def test_response_drift_penalty():
    x = torch.randn(3, 4, 2, dtype=torch.float64)

    def ref(z):
        return z[..., 0] ** 2

    _check_scalar(response_drift_penalty(ref, ref, x, 0, deltas=(0.1, 1.0)), 0.0)
    # an offset does not change a response curve
    _check_scalar(response_drift_penalty(lambda z: ref(z) + 7.0, ref, x, 0, deltas=(0.5,)), 0.0)
    # a linear response 2x against x: curves differ by d at every point
    got = response_drift_penalty(
        lambda z: 2 * z[..., 1], lambda z: z[..., 1], x, 1, deltas=(0.5, 1.0)
    )
    _check_scalar(got, (0.25 + 1.0) / 2)


def test_yield_bounds_penalty():
    y = _t(-1.0, 3.0, 10.0, NAN, grad=True)
    gpp = _t(10.0, 10.0, 10.0, 10.0)
    # relu(1) ; 0 ; relu(10 - 5) = 5 ; NaN (not a year end) left out
    loss = yield_bounds_penalty(y, gpp)
    _check_scalar(loss, (1.0 + 0.0 + 5.0) / 3)
    loss.backward()
    assert torch.isfinite(y.grad).all()
    assert y.grad[3].item() == 0.0
    _check_scalar(yield_bounds_penalty(_t(0.0, 5.0), _t(10.0, 10.0)), 0.0)
    _check_scalar(
        yield_bounds_penalty(y.detach(), gpp, mask=torch.tensor([False, True, True, True])), 2.5
    )


def test_growing_season_mask():
    doy = np.array([1, 104, 105, 200, 300, 301, 365])
    want = np.array([False, False, True, True, True, False, False])
    got = growing_season_mask(doy)
    assert isinstance(got, np.ndarray) and np.array_equal(got, want)
    got_t = growing_season_mask(torch.as_tensor(doy))
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.bool
    assert np.array_equal(got_t.numpy(), want)
    assert np.array_equal(growing_season_mask(doy, start=1, end=104), [1, 1, 0, 0, 0, 0, 0])


def test_tower_loss_uses_rh_alone_outside_season():
    doy = torch.tensor([50, 150, 250, 350])
    season = growing_season_mask(doy)
    ra = _t(1.0, 4.0, 5.0, 2.0, grad=True)
    rh = _t(0.5, 1.0, 1.5, 0.7, grad=True)
    nee = _t(0.5, -3.0, -2.0, 0.6)
    # the tower's Reco is Rh in winter and Ra + Rh in summer: a perfect fit
    reco_obs = torch.where(season, ra + rh, rh).detach()
    _check_scalar(tower_loss(ra, rh, nee, reco_obs, nee, season), 0.0)
    # had winter Reco been matched by Ra + Rh the loss would not be zero
    assert tower_loss(ra, rh, nee, (ra + rh).detach(), nee, season).item() > 0
    # hand value: winter Reco off by 1 (day 1), NEE off by 2 on one day of four
    reco_obs2 = reco_obs.clone()
    reco_obs2[0] += 1.0
    nee_obs = nee.clone()
    nee_obs[2] += 2.0
    loss = tower_loss(ra, rh, nee, reco_obs2, nee_obs, season, weights=(1.0, 0.5))
    _check_scalar(loss, 1.0 / 4 + 0.5 * 4.0 / 4)
    loss.backward()
    # outside the season, Ra gets no gradient from Reco
    assert ra.grad[0].item() == 0.0 and rh.grad[0].item() != 0.0


def test_tower_loss_masks_and_missing():
    season = torch.tensor([False, True, True])
    ra, rh, nee = _t(1.0, 1.0, 1.0), _t(1.0, 1.0, 1.0), _t(0.0, 0.0, 0.0)
    reco_obs = _t(NAN, 5.0, 2.0)  # day 0 missing; day 1 off by 3 but QC-flagged
    nee_obs = _t(1.0, NAN, 0.0)
    loss = tower_loss(
        ra, rh, nee, reco_obs, nee_obs, season,
        reco_mask=torch.tensor([True, False, True]), nee_mask=torch.tensor([False, True, True]),
    )  # fmt: skip
    _check_scalar(loss, 0.0)
    with pytest.raises(ValueError, match="weights must be"):
        tower_loss(ra, rh, nee, reco_obs, nee_obs, season, weights=(1.0,))


@pytest.mark.parametrize(
    "make",
    [
        lambda p, m: masked_mse(p, p.detach() + 1, m),
        lambda p, m: masked_mean(p, m),
        lambda p, m: weighted_flux_mse(
            torch.stack([p, p, p], -1), torch.stack([p, p, p], -1).detach() + 1, m
        ),
        lambda p, m: mass_balance_penalty(p.detach() * 3, p, p, mask=m),
        lambda p, m: response_penalty(
            lambda z: -z[..., 0] * p[:2].sum(), torch.ones(3, 1), 0, delta=1.0, mask=m
        ),
        lambda p, m: yield_bounds_penalty(p - 10, p.detach(), mask=m),
        lambda p, m: tower_loss(
            p, p, p, p.detach() + 1, p.detach() + 1, m, reco_mask=m, nee_mask=m
        ),
    ],
)
def test_empty_mask_gives_zero_not_nan(make):
    p = torch.tensor([1.0, 2.0, NAN], requires_grad=True)
    mask = torch.zeros(3, dtype=torch.bool)
    loss = make(p, mask)
    assert loss.ndim == 0 and loss.item() == 0.0
    loss.backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()


def test_all_nan_targets_give_zero():
    pred = torch.zeros(3, requires_grad=True)
    assert masked_mse(pred, torch.full((3,), NAN)).item() == 0.0
    assert yield_bounds_penalty(torch.full((3,), NAN), torch.ones(3)).item() == 0.0


def test_season_sum():
    gpp = torch.tensor([[1.0, 2.0, 3.0, 4.0, NAN, 6.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    ye = torch.tensor([[False, True, False, False, False, True], [False] * 5 + [True]])
    got = season_sum(gpp, ye)
    want = torch.tensor([[NAN, 3.0, NAN, NAN, NAN, 13.0], [NAN] * 5 + [6.0]])
    torch.testing.assert_close(got, want, equal_nan=True)
    # negative values (NEE) are summed correctly too
    got = season_sum(
        torch.tensor([-1.0, -2.0, -3.0, -4.0]), torch.tensor([True, False, True, True])
    )
    torch.testing.assert_close(got, torch.tensor([-1.0, NAN, -5.0, -4.0]), equal_nan=True)


def test_response_penalty_with_a_given_base_equals_recomputing_it():
    torch.manual_seed(0)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ w) * x[..., 0]

    x = torch.randn(2, 5, 3, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True, True], [False, True, True, True, True]])
    old = response_penalty(fn, x, [0, 2], delta=0.5, mask=mask)
    (g_old,) = torch.autograd.grad(old, w)
    new = response_penalty(fn, x, [0, 2], delta=0.5, mask=mask, base=fn(x))
    (g_new,) = torch.autograd.grad(new, w)
    assert old.item() > 0  # the case is not trivially monotone
    assert new.item() == pytest.approx(old.item(), abs=1e-12)
    torch.testing.assert_close(g_new, g_old, rtol=0, atol=1e-12)


def test_relative_balance_penalty_hand_values():
    gpp = _t(0.0, 5.0, 1.0, NAN)
    reco = _t(1.0, 4.0, 2.0, 1.0, grad=True)
    nee = _t(1.5, -1.0, 0.0, 0.0, grad=True)
    scale = _t(0.9, 3.9, 2.0, 1.0)
    # |gpp - reco + nee| = 0.5, 0, 1 (NaN GPP left out); / (scale + 0.1) = 0.5, 0, 1/2.1
    loss = relative_balance_penalty(gpp, reco, nee, scale, floor=0.1)
    _check_scalar(loss, (0.5 + 0 + 1 / 2.1) / 3)
    loss.backward()
    assert torch.isfinite(reco.grad).all() and reco.grad[3] == 0
    masked = relative_balance_penalty(gpp, reco, nee, scale, mask=torch.tensor([1, 0, 0, 0]).bool())
    _check_scalar(masked, 0.5)
    with pytest.raises(ValueError, match=r"floor must be positive, got 0"):
        relative_balance_penalty(gpp, reco, nee, scale, floor=0)
