"""Controlling factors of Ra and Rh: model sensitivities and interannual attribution.

*Sensitivities* (:func:`sensitivities`): the plan's blocks run again with one input
perturbed (air temperature + 1 degC; precipitation, shortwave, VPD, satellite GPP, SOC
x 1.1), through the same engine and state chain (:func:`kgml_grid.lazy.predict_plan`
with ``perturb``); the response of annual Ra and Rh per crop pixel and year is
``perturbed - base`` in g C m-2 yr-1 per perturbation (per degC, per +10 %).

*Interannual attribution* (:func:`interannual_attribution`): per pixel, the annual Ra or
Rh anomalies regressed on the drivers' annual anomalies, all standardised (z-scores over
the years), by least squares: the standardised coefficients, the share of variance
explained (R2) and the dominant factor (largest |coefficient|) as a categorical map.
With few years the regression is short (n years, k drivers): R2 is inflated by k/n, so
use k well below n (:data:`INTERANNUAL_DRIVERS`, four).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from kgml_grid.analysis.budgets import period_totals
from kgml_grid.plan import Plan

__all__ = [
    "DRIVERS",
    "INTERANNUAL_DRIVERS",
    "annual_drivers",
    "interannual_attribution",
    "sensitivities",
]

#: Standard perturbations: input -> (operation, value, unit of the response's "per").
DRIVERS: Mapping[str, tuple[str, float, str]] = {
    "tair": ("add", 1.0, "degC"),
    "precip": ("mul", 1.1, "+10 %"),
    "swrad": ("mul", 1.1, "+10 %"),
    "vpd": ("mul", 1.1, "+10 %"),
    "gpp_sat": ("mul", 1.1, "+10 %"),
    "soc": ("mul", 1.1, "+10 %"),
}
#: Drivers of the interannual regression (SOC is static: no interannual variation).
INTERANNUAL_DRIVERS: tuple[str, ...] = ("tair", "precip", "swrad", "gpp_sat")


def _check_drivers(drivers: Sequence[str], allowed: Sequence[str], what: str) -> None:
    bad = [d for d in drivers if d not in allowed]
    if bad:
        raise ValueError(f"{what} {bad}: unknown driver; expected some of {', '.join(allowed)}")


def sensitivities(
    plan: Plan,
    drivers: Sequence[str] = tuple(DRIVERS),
    *,
    variables: Sequence[str] = ("ra", "rh"),
    client: Any = None,
) -> xr.Dataset:
    """Annual responses of ``variables`` to each driver's standard perturbation, lazily.

    Returns
    -------
    Dataset
        ``<v>_annual`` ``(year, y, x)`` (the base run, g C m-2 yr-1) and
        ``<v>_sensitivity`` ``(driver, year, y, x)`` (g C m-2 yr-1 per the driver's
        ``perturbation_unit`` coordinate). Years the run covers partly are sums over
        the covered days (``days``).
    """
    from kgml_grid.lazy import predict_plan

    _check_drivers(drivers, tuple(DRIVERS), "--drivers")
    base = period_totals(predict_plan(plan, client=client), variables, "year")
    out = xr.Dataset({f"{v}_annual": base[v] for v in variables})
    out["days"] = base["days"]
    for v in variables:
        parts = []
        for d in drivers:
            op, val, _ = DRIVERS[d]
            pert = period_totals(predict_plan(plan, perturb={d: (op, val)}), [v], "year")[v]
            parts.append(pert - base[v])
        s = xr.concat(parts, dim=pd.Index(list(drivers), name="driver"))
        s.attrs = {"units": "g m-2 yr-1 per perturbation_unit",
                   "long_name": f"response of annual {v} to each driver's standard perturbation"}  # fmt: skip
        out[f"{v}_sensitivity"] = s
        out[f"{v}_annual"].attrs = {"units": "g m-2 yr-1", "long_name": f"annual {v} (base run)"}
    out = out.assign_coords(
        perturbation=("driver", [f"{DRIVERS[d][0]} {DRIVERS[d][1]:g}" for d in drivers]),
        perturbation_unit=("driver", [DRIVERS[d][2] for d in drivers]),
    )
    return out


def annual_drivers(plan: Plan, drivers: Sequence[str] = INTERANNUAL_DRIVERS) -> xr.Dataset:
    """Annual driver values per pixel of the plan's grid ``(year, y, x)``: mean air
    temperature (degC), precipitation sum (mm), mean shortwave (MJ m-2 d-1), satellite
    GPP sum over the year (g C m-2; gaps filled by the year's mean of the valid days).

    Weather is averaged on its coarse grid and mapped to the fine pixels with the
    plan's pixel -> weather-cell index.
    """
    from kgml_grid.grid import coarse_index

    _check_drivers(drivers, ("tair", "precip", "swrad", "vpd", "gpp_sat"), "drivers")
    time = slice(plan.start, plan.end)
    wx = xr.open_zarr(plan.paths["weather"], consolidated=False).sel(time=time)
    iy0, iy1, ix0, ix1 = plan.window
    sat = xr.open_zarr(plan.paths["satellite"], consolidated=False).sel(time=time).isel(
        y=slice(iy0, iy1), x=slice(ix0, ix1))  # fmt: skip
    row, col = coarse_index(plan.grid, plan.weather_grid)
    coords = {"y": plan.grid.y, "x": plan.grid.x}
    out = {}
    for d in drivers:
        if d == "gpp_sat":
            days = sat["time"].groupby("time.year").count()
            a = sat["gpp_sat"].groupby("time.year").mean("time") * days
            out[d] = a.assign_coords(coords).compute()
            continue
        g = wx[d].groupby("time.year")
        a = (g.sum("time") if d == "precip" else g.mean("time")).compute().values
        out[d] = xr.DataArray(a[:, row, col], dims=("year", "y", "x"),
                              coords={"year": np.unique(wx["time"].dt.year.values), **coords})  # fmt: skip
    return xr.Dataset(out)


def _zscore(a: np.ndarray, axis: int = 0) -> np.ndarray:
    sd = a.std(axis=axis, keepdims=True)
    return np.where(sd > 0, (a - a.mean(axis=axis, keepdims=True)) / np.where(sd > 0, sd, 1), 0.0)


def interannual_attribution(response: xr.DataArray, drivers: xr.Dataset) -> xr.Dataset:
    """Standardised regression of a response's annual anomalies on the drivers' (per pixel).

    Parameters
    ----------
    response : DataArray ``(year, y, x)``
        Annual Ra or Rh (NaN: not a crop pixel).
    drivers : Dataset ``(year, y, x)``
        Annual driver values on the same years and grid (:func:`annual_drivers`).

    Returns
    -------
    Dataset
        ``beta`` ``(driver, y, x)`` standardised coefficients, ``r2`` ``(y, x)``
        variance explained, ``dominant`` ``(y, x)`` index into ``driver`` of the largest
        |beta| (-1 where no crop or no variation).
    """
    names = list(drivers.data_vars)
    years = response["year"].values
    y = np.asarray(response.values, dtype="float64")  # [n, ny, nx]
    x = np.stack(
        [np.asarray(drivers[d].sel(year=years).values, dtype="float64") for d in names], axis=-1
    )
    n, ny, nx = y.shape
    if n < len(names) + 2:
        raise ValueError(f"interannual attribution: {n} years for {len(names)} drivers; need at least "
                         f"{len(names) + 2} years (give a longer run or fewer drivers)")  # fmt: skip
    yz = _zscore(y).reshape(n, -1)  # [n, P]
    xz = _zscore(x).reshape(n, -1, len(names)).transpose(1, 0, 2)  # [P, n, k]
    ok = np.isfinite(yz).all(axis=0) & np.isfinite(xz).all(axis=(1, 2)) & (yz.std(axis=0) > 0)
    beta = np.full((ny * nx, len(names)), np.nan)
    r2 = np.full(ny * nx, np.nan)
    for p in np.flatnonzero(ok):
        b, *_ = np.linalg.lstsq(xz[p], yz[:, p], rcond=None)
        beta[p] = b
        resid = yz[:, p] - xz[p] @ b
        r2[p] = 1 - (resid**2).sum() / (yz[:, p] ** 2).sum()
    dom = np.full(ny * nx, -1, dtype="int16")
    dom[ok] = np.nanargmax(np.abs(beta[ok]), axis=1)
    coords = {"y": response["y"].values, "x": response["x"].values}
    return xr.Dataset(
        {"beta": (("driver", "y", "x"), beta.T.reshape(len(names), ny, nx)),
         "r2": (("y", "x"), r2.reshape(ny, nx)),
         "dominant": (("y", "x"), dom.reshape(ny, nx))},
        coords={"driver": names, **coords},
        attrs={"dominant_flag_values": list(range(len(names))), "dominant_flag_meanings": " ".join(names)},
    )  # fmt: skip


def attribute(
    catalog: Any,
    model: Any,
    out: Any,
    *,
    start: Any = None,
    end: Any = None,
    bbox: Any = None,
    bbox_crs: str | None = None,
    chunks: Any = None,
    drivers: Sequence[str] = tuple(DRIVERS),
    cluster: Any = "threads",
    n_workers: int | None = None,
    client: Any = None,
    maps: Any = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """``kgml-grid attribute``: sensitivities and interannual attribution into a Zarr store.

    Every check (plan, drivers, the output store and maps folder against the run's
    inputs and ``overwrite``) runs before anything is computed or written.

    Returns
    -------
    dict
        ``out`` (the store), ``maps`` (PNG paths), ``dataset`` (the result, computed).
    """
    from pathlib import Path

    from kgml_grid import outputs
    from kgml_grid.execute import run_inputs
    from kgml_grid.plan import PlanError, make_plan

    _check_drivers(drivers, tuple(DRIVERS), "--drivers")
    plan = make_plan(
        catalog, model, start=start, end=end, bbox=bbox, bbox_crs=bbox_crs, chunks=chunks
    )
    out = Path(out).resolve()
    inputs = run_inputs(plan)
    decision = outputs.check_target(
        out, kind="attribution", inputs=inputs, overwrite=overwrite, error=PlanError
    )
    if maps:
        outputs.check_target(maps, kind="maps", inputs=[*inputs, ("the output store", out)], overwrite=overwrite,
                             option="--maps", error=PlanError)  # fmt: skip
    years = plan.years
    inter = [d for d in INTERANNUAL_DRIVERS if d in drivers]
    own = None
    if client is None and cluster not in (None, "threads"):
        from kgml_grid.cluster import make_client

        own = client = make_client(cluster, n_workers=n_workers)
    try:
        ds = sensitivities(plan, drivers, client=client)
        ds = ds.compute() if client is not None else _threads(ds)
    finally:
        if own is not None:
            from kgml_grid.cluster import close_client

            close_client(own)
    notes = []
    if len(years) >= len(inter) + 2 and inter:
        drv = annual_drivers(plan, inter)
        for v in ("ra", "rh"):
            att = interannual_attribution(ds[f"{v}_annual"], drv)
            ds[f"{v}_beta"] = att["beta"].rename(driver="interannual_driver")
            ds[f"{v}_r2"] = att["r2"]
            ds[f"{v}_dominant"] = att["dominant"]
            ds[f"{v}_dominant"].attrs = {"flag_values": list(range(len(inter))), "flag_meanings": " ".join(inter),
                                         "comment": "-1: no crop or no interannual variation"}  # fmt: skip
        for d in inter:
            ds[f"driver_{d}"] = drv[d]
    else:
        notes.append(f"no interannual attribution: {len(years)} years for {len(inter)} drivers")
    ds.attrs.update({outputs.MARKER_ATTR: "attribution", "kgml_plan": json.dumps(plan.to_dict()),
                     "kgml_checkpoint_hash": plan.checkpoint_hash, "comment": "; ".join(notes)})  # fmt: skip
    if decision == "replace":
        outputs.remove_output(out, "attribution", error=PlanError)
    for c in [
        c for c in ds.coords if ds[c].dtype.kind == "U"
    ]:  # variable-length strings: specified in Zarr v3
        ds[c] = ds[c].astype(object)
    ds.to_zarr(str(out), mode="w", consolidated=False, zarr_format=3)
    paths = attribution_maps(ds, maps, overwrite=overwrite) if maps else []
    return {"out": out, "maps": paths, "dataset": ds}


def _threads(ds: xr.Dataset) -> xr.Dataset:
    import dask

    with dask.config.set(scheduler="threads"):
        return ds.compute()


def attribution_maps(
    ds: xr.Dataset, folder: Any, *, overwrite: bool = False, year: int | None = None
) -> list[Any]:
    """Sensitivity maps (mean over the years) and dominant-factor maps as PNG."""
    from kgml_grid.analysis.figures import categorical_map, field_maps
    from kgml_grid.outputs import prepare_target

    folder = prepare_target(folder, kind="maps", overwrite=overwrite, option="--maps")
    paths = []
    for v in ("ra", "rh"):
        s = ds[f"{v}_sensitivity"]
        s = s.mean("year") if year is None else s.sel(year=year)
        for unit in dict.fromkeys(s["perturbation_unit"].values):
            sel = [d for d in s["driver"].values if s["perturbation_unit"].sel(driver=d) == unit]
            panels = [(f"d{v.capitalize()} / {d} {unit}", s.sel(driver=d)) for d in sel]
            tag = "degC" if unit == "degC" else "10pct"
            paths.append(field_maps(panels, folder / f"sensitivity_{v}_{tag}.png", units=f"g C m-2 yr-1 per {unit}",
                                    title=f"sensitivity of annual {v.capitalize()}", diverging=True))  # fmt: skip
    if "rh_dominant" in ds:
        names = str(ds["rh_dominant"].attrs["flag_meanings"]).split()
        paths.append(categorical_map([(f"{v.capitalize()} interannual", ds[f"{v}_dominant"]) for v in ("ra", "rh")],
                                     names, folder / "dominant_factor.png",
                                     title="dominant factor of interannual variation"))  # fmt: skip
    return paths
