"""Losses and knowledge-guided penalties (DESIGN section 5).

Pure functions on tensors. Every loss

* returns a 0-d tensor that is differentiable with respect to the predictions;
* accepts a boolean ``mask`` (True = use this element) broadcastable to its inputs,
  for missing observations and QC; non-finite observations are always left out
  (missing = NaN), and their NaNs never reach the gradient;
* returns 0 (not NaN) when nothing is left to average.

Units: :func:`masked_mse` and :func:`weighted_flux_mse` work in whatever units they
are given (standardised, in pre-training). :func:`mass_balance_penalty`,
:func:`yield_bounds_penalty` and :func:`tower_loss` need **physical** units
(gC m-2 d-1, yields in gC m-2): sums such as Ra + Rh and GPP - Reco + NEE have no
meaning between separately standardised variables. :func:`response_penalty` is
invariant to a positive affine rescaling of its output, so it works in either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch

__all__ = [
    "growing_season_mask",
    "masked_mean",
    "masked_mse",
    "mass_balance_penalty",
    "relative_balance_penalty",
    "response_drift_penalty",
    "response_penalty",
    "season_sum",
    "tower_loss",
    "weighted_flux_mse",
    "yield_bounds_penalty",
]

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)


def _valid(
    like: torch.Tensor, mask: torch.Tensor | np.ndarray | None, *finite: torch.Tensor
) -> torch.Tensor:
    """Boolean mask of ``like``'s shape: ``mask`` and every ``finite`` tensor finite."""
    valid = torch.ones(like.shape, dtype=torch.bool, device=like.device)
    if mask is not None:
        m = torch.as_tensor(mask, device=like.device)
        if m.dtype != torch.bool:
            raise TypeError(f"mask must be boolean, got dtype {m.dtype}")
        valid = valid & torch.broadcast_to(m, like.shape)
    for t in finite:
        valid = valid & torch.broadcast_to(torch.isfinite(t), like.shape)
    return valid


def _fill(t: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``t`` with invalid elements replaced by 0 (so their NaNs never reach gradients)."""
    t = torch.broadcast_to(t, valid.shape)
    return torch.where(valid, t, torch.zeros((), dtype=t.dtype, device=t.device))


def masked_mean(
    values: torch.Tensor, mask: torch.Tensor | np.ndarray | None = None
) -> torch.Tensor:
    """Mean of ``values`` over ``mask`` (and finite values); 0 when nothing is left.

    Parameters
    ----------
    values : Tensor
    mask : bool array, optional
        Broadcastable to ``values``.

    Returns
    -------
    Tensor
        0-d.
    """
    valid = _valid(values, mask, values)
    total = _fill(values, valid).sum()
    return total / valid.sum().clamp(min=1).to(total.dtype)


def masked_mse(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Mean squared error over the elements where ``mask`` is True and ``target`` finite.

    Parameters
    ----------
    pred, target : Tensor
        Same (or broadcastable) shapes.
    mask : bool array, optional
        True where the observation is used.

    Returns
    -------
    Tensor
        0-d; 0 when no element is used.
    """
    target = torch.as_tensor(target, dtype=pred.dtype, device=pred.device)
    shape = torch.broadcast_shapes(pred.shape, target.shape)
    like = torch.empty(shape, device=pred.device, dtype=torch.bool)
    valid = _valid(like, mask, target)
    diff = _fill(pred, valid) - _fill(target, valid)
    sq = diff * diff
    return sq.sum() / valid.sum().clamp(min=1).to(sq.dtype)


def weighted_flux_mse(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | np.ndarray | None = None,
    *,
    weights: Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """Weighted sum of the masked MSEs of (ra, rh, nee).

    Parameters
    ----------
    pred, target : Tensor ``[..., 3]``
        Last axis (ra, rh, nee), as :data:`kgml_grid.model.DAILY_TARGETS`.
    mask : bool array ``[..., 3]`` or ``[...]``, optional
        Per variable, or shared by the three.
    weights : sequence of 3 floats
        Weight of each variable's MSE.

    Returns
    -------
    Tensor
        0-d: ``sum_k weights[k] * masked_mse(pred[..., k], target[..., k])``.
    """
    n = pred.shape[-1]
    if target.shape[-1] != n or len(weights) != n:
        raise ValueError(
            f"weighted_flux_mse: pred has {n} variables, target {target.shape[-1]}, "
            f"weights {len(weights)}; they must agree"
        )
    if mask is not None:
        mask = torch.as_tensor(mask, device=pred.device)
        if mask.ndim < pred.ndim or mask.shape[-1] != n:
            mask = mask[..., None]
        mask = torch.broadcast_to(mask, torch.broadcast_shapes(pred.shape, target.shape))
    total = pred.new_zeros(())
    for k, w in enumerate(weights):
        mk = None if mask is None else mask[..., k]
        total = total + float(w) * masked_mse(pred[..., k], target[..., k], mk)
    return total


def mass_balance_penalty(
    gpp: torch.Tensor,
    reco: torch.Tensor,
    nee: torch.Tensor,
    *,
    tol: float = 0.01,
    mask: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Carbon mass-balance penalty ``mean(relu(|gpp - reco + nee| - tol * |reco|))``.

    NEE = Reco - GPP (positive = source), so ``gpp - reco + nee`` is zero for a
    balanced prediction; imbalances within ``tol`` of Reco are free.

    Parameters
    ----------
    gpp, reco, nee : Tensor
        Physical units (gC m-2 d-1). ``gpp`` is usually an input (satellite GPP),
        ``reco = ra + rh`` and ``nee`` predictions.
    tol : float
        Relative tolerance on ``|reco|``.
    mask : bool array, optional
        Days to include; non-finite GPP is always left out.

    Returns
    -------
    Tensor
        0-d.
    """
    gpp = torch.as_tensor(gpp, dtype=nee.dtype, device=nee.device)
    shape = torch.broadcast_shapes(gpp.shape, reco.shape, nee.shape)
    like = torch.empty(shape, dtype=torch.bool, device=nee.device)
    valid = _valid(like, mask, gpp)
    g, r, n = _fill(gpp, valid), _fill(reco, valid), _fill(nee, valid)
    excess = torch.relu(torch.abs(g - r + n) - tol * torch.abs(r))
    return masked_mean(excess, valid)


def relative_balance_penalty(
    gpp: torch.Tensor,
    reco: torch.Tensor,
    nee: torch.Tensor,
    scale: torch.Tensor,
    *,
    floor: float = 0.1,
    mask: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Imbalance relative to a reference Reco: ``mean(|gpp - reco + nee| / (|scale| + floor))``.

    With ``gpp`` the *true* GPP (pre-training on a synthetic world) and ``scale`` the true
    Reco, this is the L1 counterpart of the evaluated residual (median imbalance as a
    fraction of Reco): days with little respiration (winter, where true GPP is 0 and NEE
    must equal Reco) weigh as much as summer days, which the squared errors of
    standardised fluxes leave almost free.

    Parameters
    ----------
    gpp, reco, nee : Tensor
        Physical units (gC m-2 d-1).
    scale : Tensor
        Reference Reco (no gradient is taken through it), physical units.
    floor : float
        Added to ``|scale|`` so that days with Reco near 0 do not dominate.
    mask : bool array, optional
        Days to include; non-finite ``gpp`` or ``scale`` are always left out.

    Returns
    -------
    Tensor
        0-d.
    """
    if not floor > 0:
        raise ValueError(f"relative_balance_penalty: floor must be positive, got {floor!r}")
    gpp = torch.as_tensor(gpp, dtype=nee.dtype, device=nee.device)
    scale = torch.as_tensor(scale, dtype=nee.dtype, device=nee.device).detach()
    shape = torch.broadcast_shapes(gpp.shape, reco.shape, nee.shape, scale.shape)
    like = torch.empty(shape, dtype=torch.bool, device=nee.device)
    valid = _valid(like, mask, gpp, scale)
    g, r, n, s = (_fill(t, valid) for t in (gpp, reco, nee, scale))
    return masked_mean(torch.abs(g - r + n) / (torch.abs(s) + floor), valid)


def response_penalty(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    feature_index: int | Sequence[int],
    *,
    delta: float,
    mask: torch.Tensor | np.ndarray | None = None,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """Monotonicity penalty: the response must not fall as a feature rises.

    ``mean(relu(fn(x) - fn(x + delta * e_i)))``, averaged over the given features;
    used for Rh against SOC and GPP.

    Parameters
    ----------
    fn : callable
        Maps inputs ``x`` to the response (e.g. the model's Rh), any shape; for a
        stateful model, e.g. ``lambda x: model(x)[0]["daily"][..., 1]``.
    x : Tensor ``[..., F]``
        Inputs, in the units ``fn`` expects (standardised for the models).
    feature_index : int or sequence of int
        Index(es) of the feature(s) along the last axis of ``x``.
    delta : float
        Positive increment of the feature, in the units of ``x``.
    mask : bool array, optional
        Broadcastable to ``fn(x)``: where to evaluate the penalty.
    base : Tensor, optional
        ``fn(x)`` when the caller has it already (pre-training: the batch's own forward
        pass), which saves one evaluation of ``fn``.

    Returns
    -------
    Tensor
        0-d, 0 when the response is non-decreasing everywhere.
    """
    if not delta > 0:
        raise ValueError(f"response_penalty: delta must be positive, got {delta!r}")
    indices = [feature_index] if isinstance(feature_index, int) else list(feature_index)
    if not indices:
        raise ValueError("response_penalty: feature_index is empty")
    if base is None:
        base = fn(x)
    total = base.new_zeros(())
    for i in indices:
        bumped = x.clone()
        bumped[..., i] = bumped[..., i] + delta
        total = total + masked_mean(torch.relu(base - fn(bumped)), mask)
    return total / len(indices)


def response_drift_penalty(
    fn: Callable[[torch.Tensor], torch.Tensor],
    reference: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    feature_index: int | Sequence[int],
    *,
    deltas: Sequence[float],
    mask: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Keep response curves close to a reference model's (fine-tuning).

    ``mean_{i, d} mean((fn(x + d e_i) - fn(x) - (ref(x + d e_i) - ref(x)))**2)``;
    the reference (the pre-trained model) carries no gradient.

    Parameters
    ----------
    fn, reference : callable
        Map inputs to a response (e.g. Rh) of the model being tuned and of the
        pre-trained model.
    x : Tensor ``[..., F]``
    feature_index : int or sequence of int
    deltas : sequence of float
        Increments at which the response curves are compared.
    mask : bool array, optional
        Broadcastable to ``fn(x)``.

    Returns
    -------
    Tensor
        0-d.
    """
    indices = [feature_index] if isinstance(feature_index, int) else list(feature_index)
    if not indices or not len(deltas):
        raise ValueError("response_drift_penalty: needs at least one feature and one delta")
    base = fn(x)
    with torch.no_grad():
        ref_base = reference(x)
    total = base.new_zeros(())
    for i in indices:
        for d in deltas:
            bumped = x.clone()
            bumped[..., i] = bumped[..., i] + d
            with torch.no_grad():
                ref_curve = reference(bumped) - ref_base
            diff = fn(bumped) - base - ref_curve
            total = total + masked_mean(diff * diff, mask)
    return total / (len(indices) * len(deltas))


def yield_bounds_penalty(
    yield_pred: torch.Tensor,
    season_gpp: torch.Tensor,
    *,
    mask: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Yield must lie in ``[0, 0.5 * season GPP]``: ``mean(relu(-y) + relu(y - gpp / 2))``.

    Parameters
    ----------
    yield_pred : Tensor
        Predicted yield, physical units (gC m-2). Non-finite entries (the model's
        yield is NaN except at year ends) are left out.
    season_gpp : Tensor
        GPP summed over the season (gC m-2), broadcastable to ``yield_pred``.
    mask : bool array, optional

    Returns
    -------
    Tensor
        0-d.
    """
    season_gpp = torch.as_tensor(season_gpp, dtype=yield_pred.dtype, device=yield_pred.device)
    shape = torch.broadcast_shapes(yield_pred.shape, season_gpp.shape)
    like = torch.empty(shape, dtype=torch.bool, device=yield_pred.device)
    valid = _valid(like, mask, yield_pred, season_gpp)
    y, g = _fill(yield_pred, valid), _fill(season_gpp, valid)
    return masked_mean(torch.relu(-y) + torch.relu(y - 0.5 * g), valid)


def growing_season_mask(dayofyear: ArrayT, start: int = 105, end: int = 300) -> ArrayT:
    """True inside the growing season, ``start <= dayofyear <= end``.

    Works on numpy arrays (returns numpy) and tensors (returns a tensor).
    """
    if isinstance(dayofyear, torch.Tensor):
        return (dayofyear >= start) & (dayofyear <= end)
    doy = np.asarray(dayofyear)
    return (doy >= start) & (doy <= end)


def season_sum(values: torch.Tensor, year_end: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over each season, placed at the season's year end.

    Seasons run from the day after one year end to the next, within the window
    given (a season that began before the window is summed from the window's start).
    NaN values count as 0.

    Parameters
    ----------
    values : Tensor ``[..., T]``
        E.g. daily GPP in gC m-2 d-1.
    year_end : bool Tensor ``[..., T]``

    Returns
    -------
    Tensor ``[..., T]``
        The season's sum at year ends, NaN elsewhere (the layout of the model's
        ``yield`` output, ready for :func:`yield_bounds_penalty`).
    """
    year_end = torch.as_tensor(year_end, device=values.device).to(torch.bool)
    filled = torch.nan_to_num(values, nan=0.0)
    csum = torch.cumsum(filled, dim=-1)
    # cumulative sum at the most recent year end at or before each day
    prev = _last_seen(csum, year_end)
    before = torch.cat([torch.zeros_like(prev[..., :1]), prev[..., :-1]], dim=-1)
    out = csum - before
    return torch.where(year_end, out, torch.full_like(out, float("nan")))


def _last_seen(csum: torch.Tensor, year_end: torch.Tensor) -> torch.Tensor:
    """``csum`` at the most recent year end at or before each step (0 before any)."""
    t = torch.arange(csum.shape[-1], device=csum.device)
    idx = torch.where(year_end, t, torch.full_like(t, -1))
    idx = torch.cummax(idx, dim=-1).values
    got = csum.gather(-1, idx.clamp(min=0))
    return torch.where(idx >= 0, got, torch.zeros_like(got))


def tower_loss(
    ra: torch.Tensor,
    rh: torch.Tensor,
    nee: torch.Tensor,
    reco_obs: torch.Tensor,
    nee_obs: torch.Tensor,
    growing_season: torch.Tensor | np.ndarray,
    *,
    reco_mask: torch.Tensor | np.ndarray | None = None,
    nee_mask: torch.Tensor | np.ndarray | None = None,
    weights: Sequence[float] = (1.0, 1.0),
) -> torch.Tensor:
    """Fine-tuning loss on flux towers, where only Reco and NEE are observed.

    Outside the growing season the crop is absent, so observed Reco is matched by
    Rh alone; inside it by Ra + Rh. NEE is matched directly.

    Parameters
    ----------
    ra, rh, nee : Tensor
        Predictions in physical units (gC m-2 d-1).
    reco_obs, nee_obs : Tensor
        Observations; NaN = missing.
    growing_season : bool array
        True inside the growing season (see :func:`growing_season_mask`).
    reco_mask, nee_mask : bool array, optional
        True where the observation passes QC.
    weights : (float, float)
        Weights of the Reco and NEE terms.

    Returns
    -------
    Tensor
        0-d: ``w_reco * mse(reco_pred, reco_obs) + w_nee * mse(nee, nee_obs)``.
    """
    if len(weights) != 2:
        raise ValueError(f"tower_loss: weights must be (reco, nee), got {tuple(weights)}")
    season = torch.as_tensor(growing_season, device=ra.device).to(torch.bool)
    reco_pred = torch.where(season, ra + rh, rh)
    w_reco, w_nee = (float(w) for w in weights)
    return w_reco * masked_mse(reco_pred, reco_obs, reco_mask) + w_nee * masked_mse(
        nee, nee_obs, nee_mask
    )
