"""Rerun a generated world's simulator with perturbed drivers: its own sensitivities.

The simulator's sensitivity is known exactly by running it again on the same random
streams (same seed: same soil, crops, weather, planting dates) with one driver changed:
air temperature + ``tair_offset`` degC on every day (the other weather unchanged, as the
model's perturbation changes only its temperature input: VPD, shortwave and precipitation
are the baseline's), or the initial soil organic carbon x ``soc_factor`` (the pool then
evolves through the spin-up and the run). Only annual sums of Ra, Rh (and its two parts:
residue and SOC decomposition) and GPP are kept;
nothing is written. A rerun without perturbation reproduces the world's truth cube
(tested), which is what makes the difference the simulator's response.

Two definitions of the +1 degC response:

* ``hold_growth=False`` (the *full* response): the warmer run has its own phenology
  (growing degree days, so season length and harvest date), photosynthesis and hence its
  own GPP, biomass and residue.
* ``hold_growth=True`` (the *like-for-like* response, what the model is asked): the model's
  perturbation changes its air-temperature input and holds its satellite-GPP input, so
  the simulator is rerun in lockstep with its baseline and takes the baseline's phenology
  (growing degree days from the baseline temperature) and GPP on every day; temperature
  then acts only through respiration (Ra maintenance Q10, soil temperature -> Rh) and
  evaporation (soil moisture -> Rh). Both runs draw the same random streams.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import xarray as xr

from kgml_grid.grid import centred_grid, coarse_index, lonlat
from kgml_grid.synth import physics as ph
from kgml_grid.synth.params import WorldParams, _apply
from kgml_grid.synth.world import PRESETS, SPINUP_YEARS, _days, _Simulator, _streams, _Weather

__all__ = ["annual_truth"]


def annual_truth(
    world: str | Path,
    *,
    tair_offset: float = 0.0,
    soc_factor: float = 1.0,
    hold_growth: bool = False,
    years: tuple[int, int] | None = None,
) -> xr.Dataset:
    """Annual Ra, Rh, GPP (g C m-2 yr-1, ``(year, y, x)``) of a world's simulator, rerun;
    ``rh_residue`` and ``rh_soc`` split Rh into residue (litter) and SOC decomposition.

    Parameters
    ----------
    world : path
        A world folder written by :func:`kgml_grid.synth.generate_world` (its ``world.json``).
    tair_offset : float
        Added to the air temperature the simulator sees on every day (degC).
    soc_factor : float
        Multiplies the initial soil organic carbon.
    hold_growth : bool
        Impose the unperturbed run's phenology and GPP (see the module docstring): the
        response of respiration alone, with growth as the satellite GPP input holds it.
    years : (first, last), optional
        Keep only these years (the simulation still starts at the world's first year).

    Raises
    ------
    ValueError
        For a folder without a readable ``world.json``.
    """
    root = Path(world)
    try:
        meta = json.loads((root / "world.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(
            f"world {root}: no readable world.json ({e}); expected a folder from kgml-grid synth"
        ) from None
    p: WorldParams = _apply(WorldParams(), meta["params"], "", str(root / "world.json"))
    pr = replace(PRESETS[meta["preset"]], ny=int(meta["shape"][0]), nx=int(meta["shape"][1]),
                 years=(int(meta["years"][0]), int(meta["years"][1])))  # fmt: skip
    rng = _streams(int(meta["seed"]))
    grid = centred_grid(p.center_lon, p.center_lat, ny=pr.ny, nx=pr.nx, res=pr.res, crs=p.crs)
    wgrid = grid.coarsen(pr.coarse_factor)
    wrow, wcol = coarse_index(grid, wgrid)
    widx = (wrow * wgrid.nx + wcol).ravel()
    _, wlat = lonlat(wgrid)
    year_list = list(range(pr.years[0], pr.years[1] + 1))
    soil2d = ph.soil_fields(rng["soil"], grid.shape, p.soil)
    crop3d = ph.crop_rotation(
        rng["crop"], grid.shape, year_list, other_fraction=p.other_fraction,
        continuous_corn_fraction=p.continuous_corn_fraction, smooth_cells=p.soil.smooth_cells,
    )  # fmt: skip
    crop_flat = crop3d.reshape(len(year_list), -1)
    soil_flat = {k: v.ravel().astype("float64") for k, v in soil2d.items()}
    sim = _Simulator(p, soil_flat, rng["phenology"])
    sim.s.soc = sim.s.soc * soc_factor
    # the baseline run in lockstep, on its own copy of the phenology stream (same draws)
    base = (
        _Simulator(p, soil_flat, _streams(int(meta["seed"]))["phenology"]) if hold_growth else None
    )
    wx = _Weather(rng["weather"], wlat.ravel(), p)

    def new_year(crop: np.ndarray) -> None:
        sim.new_year(crop)
        if base is not None:
            base.new_year(crop)

    def step(doy: int) -> dict[str, np.ndarray]:
        w = wx.day(doy)
        wf = {k: v[widx] for k, v in w.items() if k != "wet"}
        hold = None
        if base is not None:
            hold = {"tair": wf["tair"], "gpp": base.step(doy, wf)["gpp"]}
        return sim.step(doy, {**wf, "tair": wf["tair"] + tair_offset}, hold)

    for _ in range(SPINUP_YEARS):
        new_year(crop_flat[0])
        for doy in range(1, 366):
            step(doy)
    n = grid.ny * grid.nx
    sums = {v: np.zeros((len(year_list), n)) for v in ("ra", "rh", "gpp", "rh_residue", "rh_soc")}
    cur = None
    for day in _days(pr.years):
        if day.year != cur:
            cur = day.year
            new_year(crop_flat[year_list.index(cur)])
        out = step(day.day_of_year)
        i = year_list.index(cur)
        for v, a in sums.items():
            # the truth cube stores float32 days: sum those, as its annual sums do
            a[i] += out[v].astype("float32")
    coords = {"year": year_list, "y": grid.y, "x": grid.x}
    ds = xr.Dataset(
        {v: (("year", "y", "x"), a.reshape(len(year_list), *grid.shape)) for v, a in sums.items()},
        coords=coords,
    )
    for v in sums:
        ds[v].attrs["units"] = "g m-2 yr-1"
    ds.attrs.update(tair_offset=tair_offset, soc_factor=soc_factor,
                    hold_growth=int(hold_growth), world=str(root))  # fmt: skip
    if years is not None:
        ds = ds.sel(year=slice(years[0], years[1]))
    return ds
