"""Generate a synthetic world: cubes, tower CSVs, site metadata and an Intake catalog.

The simulation runs day by day, vectorised over all pixels, and writes each time
block to Zarr as soon as it is done, so memory stays bounded by one block whatever
the number of years. Every random stream is derived from the seed, so a world is
reproducible bit for bit.
"""

from __future__ import annotations

import json
import statistics
import time as _time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from kgml_grid import cubes, schema
from kgml_grid.grid import GridSpec, centred_grid, coarse_index, lonlat
from kgml_grid.synth import physics as ph
from kgml_grid.synth.params import WorldParams


@dataclass(frozen=True)
class Preset:
    """Size of a generated world."""

    name: str
    ny: int
    nx: int
    res: float  # m, fine grid cell size
    coarse_factor: int  # fine cells per weather cell along each side
    years: tuple[int, int]  # first and last year, inclusive
    n_towers: int
    chunks: tuple[int, int, int]  # (time, y, x) chunks of the cubes
    description: str = ""


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", 20, 24, 500.0, 4, (2009, 2012), 3, (365, 20, 24), "seconds; for tests"),
    "demo": Preset("demo", 96, 96, 500.0, 8, (2008, 2015), 6, (365, 48, 48),
                   "the main job's default: 48 km x 48 km at 500 m, 8 years"),
    "bench": Preset("bench", 320, 320, 500.0, 8, (2012, 2015), 8, (365, 64, 64),
                    "160 km x 160 km at 500 m, 4 years: upscaling takes minutes"),
}  # fmt: skip

SPINUP_YEARS = 2


@dataclass
class WorldInfo:
    """Where a generated world is and what it holds."""

    root: Path
    catalog: Path
    grid: GridSpec
    weather_grid: GridSpec
    years: tuple[int, int]
    towers: list[Path] = field(default_factory=list)
    site_meta: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    params: WorldParams | None = None

    def summary(self) -> str:
        ny, nx = self.grid.shape
        return (
            f"world {self.params.name if self.params else '?'} at {self.root}: "
            f"{ny}x{nx} pixels of {self.grid.res:g} m ({self.grid.crs}), weather "
            f"{self.weather_grid.ny}x{self.weather_grid.nx} cells of {self.weather_grid.res:g} m, "
            f"years {self.years[0]}-{self.years[1]}, {len(self.towers)} towers, "
            f"generated in {self.seconds:.1f} s"
        )


def _days(years: tuple[int, int]) -> pd.DatetimeIndex:
    return pd.date_range(f"{years[0]}-01-01", f"{years[1]}-12-31", freq="D")


class _State:
    """Prognostic state of every fine pixel (flat arrays of length n)."""

    def __init__(self, n: int, soil: dict[str, np.ndarray], p: WorldParams) -> None:
        self.theta = soil["field_capacity"].copy()
        self.tsoil = np.full(n, 5.0)
        self.biomass = np.zeros(n)
        self.litter = np.full(n, p.carbon.litter_init)
        self.soc = soil["soc"] * 1000.0  # kg m-2 -> g C m-2
        self.gdd = np.zeros(n)
        self.planted = np.zeros(n, dtype=bool)
        self.harvested = np.zeros(n, dtype=bool)
        self.plant_doy = np.zeros(n)
        self.yield_ = np.full(n, np.nan)


class _Weather:
    """Daily weather generator on the coarse cells."""

    def __init__(self, rng: np.random.Generator, lat: np.ndarray, p: WorldParams) -> None:
        self.rng = rng
        self.p = p.weather
        self.lat = lat
        self.lat0 = p.center_lat
        self.anom = np.zeros(lat.size)

    def _coherent(self) -> np.ndarray:
        c = self.p.spatial_coherence
        return np.sqrt(c) * self.rng.standard_normal() + np.sqrt(1 - c) * self.rng.standard_normal(
            self.lat.size
        )

    def day(self, doy: int) -> dict[str, np.ndarray]:
        w = self.p
        rho = w.t_anomaly_rho
        self.anom = rho * self.anom + np.sqrt(1 - rho**2) * w.t_anomaly_sd * self._coherent()
        season = np.sin(2 * np.pi * (doy - w.t_peak_doy + 91.31) / 365.25)
        t = (
            w.t_mean
            + w.t_lat_gradient * (self.lat - self.lat0)
            + w.t_amplitude * season
            + self.anom
        )
        p_wet = np.clip(
            w.p_wet_mean + w.p_wet_amplitude * np.sin(2 * np.pi * (doy - 70) / 365.25), 0.02, 0.95
        )
        wet = self._coherent() < statistics.NormalDist().inv_cdf(float(p_wet))
        amount = self.rng.gamma(w.p_gamma_shape, w.p_gamma_scale, self.lat.size)
        precip = np.where(wet, amount + 0.2, 0.0)
        tau = np.where(wet, w.transmissivity_wet, w.transmissivity_dry) * (
            1 + 0.05 * self.rng.standard_normal(self.lat.size)
        )
        sw_pot = ph.extraterrestrial_radiation(self.lat, doy)
        sw = np.clip(tau, 0.1, 0.8) * sw_pot
        rh = np.clip(
            np.where(wet, w.rh_wet, w.rh_dry) + 0.06 * self.rng.standard_normal(self.lat.size),
            0.15,
            0.98,
        )
        vpd = ph.saturation_vapour_pressure(t) * (1 - rh)
        return {
            "tair": t,
            "swrad": sw,
            "vpd": vpd,
            "precip": precip,
            "wet": wet,
            "swrad_pot": sw_pot,
        }


class _Simulator:
    """Advances the pixel state one day at a time."""

    def __init__(
        self, p: WorldParams, soil: dict[str, np.ndarray], rng: np.random.Generator
    ) -> None:
        self.p = p
        self.soil = soil
        self.rng = rng
        self.n = soil["sand"].size
        self.s = _State(self.n, soil, p)
        self.tab = {a: p.crop_table(a) for a in (
            "plant_doy", "plant_jitter_days", "t_base", "gdd_maturity", "lai_max", "lue", "t_opt",
            "t_width", "maint_resp", "harvest_index", "harvest_doy_latest")}  # fmt: skip
        fc, wp = soil["field_capacity"], soil["wilting_point"]
        # Vigour: water-holding capacity makes stands denser (0.75 .. 1).
        self.vigor = 0.75 + 0.25 * np.clip((fc - wp) / 0.2, 0, 1)
        self.kdrain = np.clip(soil["ksat"] / 20.0, 0.05, 0.9)
        self.crop = np.zeros(self.n, dtype="int8")

    def new_year(self, crop: np.ndarray) -> None:
        s, t = self.s, self.tab
        self.crop = crop
        s.gdd[:] = 0
        s.planted[:] = False
        s.harvested[:] = False
        s.yield_ = np.where(crop > 0, 0.0, np.nan)
        s.plant_doy = t["plant_doy"][crop] + t["plant_jitter_days"][
            crop
        ] * self.rng.standard_normal(self.n)

    def step(
        self, doy: int, w: dict[str, np.ndarray], hold: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Advance one day. ``hold`` imposes a baseline run's growth on this one (the
        rerun's "respiration only" perturbation, :mod:`.rerun`): phenology follows
        ``hold["tair"]`` and GPP is ``hold["gpp"]``; the rest sees ``w``."""
        p, s, t, c, soil = self.p, self.s, self.tab, self.crop, self.soil
        T, SW, VPD, P = w["tair"], w["swrad"], w["vpd"], w["precip"]
        T_grow = T if hold is None else hold["tair"]
        fc, wp = soil["field_capacity"], soil["wilting_point"]
        # phenology
        s.planted |= (doy >= s.plant_doy) & ~s.harvested
        growing = s.planted & ~s.harvested
        s.gdd += np.where(growing, ph.gdd_increment(T_grow, t["t_base"][c]), 0.0)
        f = s.gdd / t["gdd_maturity"][c]
        lai = np.where(growing, t["lai_max"][c] * self.vigor * ph.lai_shape(f), 0.0)
        # water and photosynthesis
        f_w = ph.water_stress(s.theta, fc, wp)
        if hold is None:
            g = ph.gpp(SW, lai, T, VPD, f_w, t["lue"][c], t["t_opt"][c], t["t_width"][c])
        else:
            g = hold["gpp"]
        fapar = 1.0 - np.exp(-ph.K_EXT * lai)
        depth = p.soil.root_zone_mm
        et = (
            ph.potential_et(SW, T)
            * (0.15 + 0.85 * fapar)
            * np.clip((s.theta - wp) / (fc - wp), 0, 1)
        )
        theta = s.theta + (P - et) / depth
        drain = np.where(theta > fc, self.kdrain * (theta - fc), 0.0)
        s.theta = np.clip(theta - drain, 0.5 * wp, 0.5)
        # autotrophic respiration and growth
        ra = ph.autotrophic_respiration(
            g, s.biomass, T, t["maint_resp"][c], p.carbon.growth_resp, p.carbon.q10_ra
        )
        s.biomass = np.maximum(s.biomass + g - ra, 0.0)
        # heterotrophic respiration
        cp = p.carbon
        s.tsoil = s.tsoil + cp.tsoil_alpha * (T - s.tsoil)
        rh, d_l, d_s = ph.heterotrophic_respiration(
            s.litter, s.soc, s.tsoil, s.theta, fc, wp, soil["clay"],
            k_litter=cp.k_litter, k_soc=cp.k_soc, humification=cp.humification,
            clay_protection=cp.clay_protection, q10=cp.q10_rh, frozen_factor=cp.frozen_factor,
            moisture_min=cp.moisture_min,
        )  # fmt: skip
        s.litter = s.litter - d_l
        s.soc = s.soc + cp.humification * d_l - d_s
        # harvest (crops) or senescence (other): biomass to grain and residue
        done = growing & ((f >= 1.1) | (doy >= t["harvest_doy_latest"][c]))
        if done.any():
            hi = t["harvest_index"][c]
            grain = hi * s.biomass
            s.yield_ = np.where(done & (c > 0), grain, s.yield_)
            s.litter = s.litter + np.where(done, s.biomass - grain, 0.0)
            s.biomass = np.where(done, 0.0, s.biomass)
            s.harvested |= done
        return {"gpp": g, "ra": ra, "rh": rh, "lai": lai, "theta": s.theta, "tsoil": s.tsoil,
                "rh_residue": (1.0 - cp.humification) * d_l, "rh_soc": d_s}  # fmt: skip


def _streams(seed: int) -> dict[str, np.random.Generator]:
    names = ("soil", "crop", "weather", "phenology", "satellite", "towers")
    seqs = np.random.SeedSequence(seed).spawn(len(names))
    return {n: np.random.default_rng(s) for n, s in zip(names, seqs, strict=True)}


def _float32_nee(ra: np.ndarray, rh: np.ndarray, gpp: np.ndarray) -> tuple[np.ndarray, ...]:
    """Round the components to float32 first, then close the balance on the rounded values,
    so that the stored cube satisfies NEE = Ra + Rh - GPP to float32 precision."""
    ra32, rh32, g32 = (a.astype("float32") for a in (ra, rh, gpp))
    reco = (ra32.astype("float64") + rh32).astype("float32")
    nee = (ra32.astype("float64") + rh32 - g32).astype("float32")
    return ra32, rh32, g32, reco, nee


def generate_world(
    out: str | Path,
    *,
    preset: str | Preset = "demo",
    shape: tuple[int, int] | None = None,
    years: tuple[int, int] | None = None,
    seed: int = 0,
    params: WorldParams | None = None,
    n_towers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    inputs: Iterable[tuple[str, str | Path]] = (),
) -> WorldInfo:
    """Simulate a world and write its cubes, towers and catalog under ``out``.

    Parameters
    ----------
    out : path
        Folder to create. Holds ``weather.zarr``, ``satellite.zarr``, ``soil.zarr``,
        ``crop.zarr``, ``truth.zarr``, ``towers/`` and ``catalog.yaml``.
    preset : {'tiny', 'demo', 'bench'} or Preset
        Size; ``shape`` and ``years`` override it.
    seed : int
        Seed of every random stream: the same seed gives the same world.
    params : WorldParams
        World parameters (default world A).
    overwrite : bool
        Replace an existing world at ``out`` (only a world kgml_grid wrote, holding
        nothing else: :func:`kgml_grid.outputs.check_target`); without it an existing
        non-empty ``out`` is refused.
    inputs : iterable of (role, path)
        Files the world is made from (the ``--world-params`` file): ``out`` must not be,
        contain or lie inside one.

    Raises
    ------
    kgml_grid.outputs.OutputError
        For a refused ``out``, before anything is written.
    """
    t0 = _time.perf_counter()
    pr = PRESETS[preset] if isinstance(preset, str) else preset
    if isinstance(preset, str) and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    if shape is not None:
        pr = replace(pr, ny=int(shape[0]), nx=int(shape[1]))
    if years is not None:
        if years[1] < years[0]:
            raise ValueError(f"--years {years[0]} {years[1]}: the last year is before the first")
        pr = replace(pr, years=(int(years[0]), int(years[1])))
    if n_towers is not None:
        pr = replace(pr, n_towers=n_towers)
    p = params or WorldParams()
    from kgml_grid.outputs import prepare_target

    root = prepare_target(out, kind="world", inputs=inputs, overwrite=overwrite)

    rng = _streams(seed)
    grid = centred_grid(p.center_lon, p.center_lat, ny=pr.ny, nx=pr.nx, res=pr.res, crs=p.crs)
    wgrid = grid.coarsen(pr.coarse_factor)
    wrow, wcol = coarse_index(grid, wgrid)
    widx = (wrow * wgrid.nx + wcol).ravel()
    _, wlat = lonlat(wgrid)
    year_list = list(range(pr.years[0], pr.years[1] + 1))
    days = _days(pr.years)
    ct, cy, cx = pr.chunks
    chunks = {"time": ct, "y": cy, "x": cx, "year": 1}
    title = f"kgml_grid synthetic world {p.name} (seed {seed})"
    prov = {"kgml_world": p.name, "kgml_seed": seed, "kgml_preset": pr.name,
            "kgml_world_params": json.dumps(p.to_dict())}  # fmt: skip

    # --- static layers -------------------------------------------------------------
    soil2d = ph.soil_fields(rng["soil"], grid.shape, p.soil)
    soil_ds = cubes.annotate(
        xr.Dataset({k: (("y", "x"), v.astype("float32")) for k, v in soil2d.items()}),
        grid, title=title + ": soil", **prov,
    )  # fmt: skip
    cubes.write_cube(soil_ds, root / "soil.zarr", chunks)
    crop3d = ph.crop_rotation(
        rng["crop"], grid.shape, year_list, other_fraction=p.other_fraction,
        continuous_corn_fraction=p.continuous_corn_fraction, smooth_cells=p.soil.smooth_cells,
    )  # fmt: skip
    crop_ds = cubes.annotate(
        xr.Dataset({"crop_type": (("year", "y", "x"), crop3d)}, coords={"year": year_list}),
        grid, title=title + ": crop type", **prov,
    )  # fmt: skip
    cubes.write_cube(crop_ds, root / "crop.zarr", chunks)

    # --- templates of the daily cubes ----------------------------------------------
    def template(names: list[str], g: GridSpec, extra: dict | None = None) -> xr.Dataset:
        import dask.array as da

        shp = (len(days), g.ny, g.nx)
        data = {
            n: (("time", "y", "x"), da.zeros(shp, chunks=(ct, cy, cx), dtype="float32"))
            for n in names
        }
        for n, (dims, arr) in (extra or {}).items():
            data[n] = (dims, arr)
        return cubes.annotate(xr.Dataset(data, coords={"time": days}), g, title=title, **prov)

    yearly = {
        "yield": (("year", "y", "x"), np.full((len(year_list), *grid.shape), np.nan, "float32"))
    }
    tmpl = {
        "weather": template(["tair", "swrad", "vpd", "precip"], wgrid),
        "satellite": template(["gpp_sat", "lai", "soil_moisture"], grid),
        "truth": template(["gpp", "ra", "rh", "reco", "nee"], grid, extra=yearly),
    }
    tmpl["truth"] = tmpl["truth"].assign_coords(year=year_list)
    for name, t in tmpl.items():
        t.attrs["title"] = f"{title}: {name}"
        cubes.init_store(t, root / f"{name}.zarr", chunks)

    # --- towers ----------------------------------------------------------------------
    crop_flat = crop3d.reshape(len(year_list), -1)
    candidates = np.flatnonzero((crop_flat > 0).all(axis=0))
    n_t = min(pr.n_towers, candidates.size)
    tower_px = (
        np.sort(rng["towers"].choice(candidates, size=n_t, replace=False))
        if n_t
        else np.array([], int)
    )
    tower_rec: dict[str, list[np.ndarray]] = {k: [] for k in (
        "tair", "swrad", "vpd", "precip", "swrad_pot", "gpp", "ra", "rh", "theta", "tsoil")}  # fmt: skip

    # --- daily loop ------------------------------------------------------------------
    soil_flat = {k: v.ravel().astype("float64") for k, v in soil2d.items()}
    sim = _Simulator(p, soil_flat, rng["phenology"])
    wx = _Weather(rng["weather"], wlat.ravel(), p)
    obs = p.obs
    n = grid.ny * grid.nx
    sm_offset = (np.arange(grid.ny)[:, None] + np.zeros(grid.nx, int)[None, :]).ravel() % max(
        obs.sm_revisit_days, 1
    )

    # spin-up: settle soil water and pools on the first year's crops and fresh weather
    for _ in range(SPINUP_YEARS):
        sim.new_year(crop_flat[0])
        for doy in range(1, 366):
            w = wx.day(doy)
            sim.step(doy, {k: v[widx] for k, v in w.items() if k != "wet"})

    from tqdm.auto import tqdm

    blocks = [(i, min(i + ct, len(days))) for i in range(0, len(days), ct)]
    bar = tqdm(total=len(days), desc=f"simulating world {p.name}", unit="day", disable=not progress)
    year_of = {y: i for i, y in enumerate(year_list)}
    cur_year = None
    yields = np.full((len(year_list), n), np.nan, dtype="float32")
    rs = rng["satellite"]
    for b0, b1 in blocks:
        nb = b1 - b0
        wbuf = {
            k: np.empty((nb, wgrid.ny * wgrid.nx), "float32")
            for k in ("tair", "swrad", "vpd", "precip")
        }
        sbuf = {k: np.empty((nb, n), "float32") for k in ("gpp_sat", "lai", "soil_moisture")}
        tbuf = {k: np.empty((nb, n), "float32") for k in ("gpp", "ra", "rh", "reco", "nee")}
        for j, day in enumerate(days[b0:b1]):
            if day.year != cur_year:
                if cur_year is not None:
                    yields[year_of[cur_year]] = sim.s.yield_
                cur_year = day.year
                sim.new_year(crop_flat[year_of[cur_year]])
            doy = day.day_of_year
            w = wx.day(doy)
            wf = {k: v[widx] for k, v in w.items() if k != "wet"}
            out = sim.step(doy, wf)
            for k in wbuf:
                wbuf[k][j] = w[k]
            ra32, rh32, g32, reco, nee = _float32_nee(out["ra"], out["rh"], out["gpp"])
            tbuf["ra"][j], tbuf["rh"][j], tbuf["gpp"][j], tbuf["reco"][j], tbuf["nee"][j] = (
                ra32,
                rh32,
                g32,
                reco,
                nee,
            )
            # satellite observations: noisy, gappy (more gaps under clouds on wet days)
            wet = w["wet"][widx]
            miss = rs.random(n) < np.where(wet, obs.gpp_missing_wet, obs.gpp_missing)
            gs = out["gpp"] * (
                1 + obs.gpp_rel_noise * rs.standard_normal(n)
            ) + obs.gpp_abs_noise * rs.standard_normal(n)
            sbuf["gpp_sat"][j] = np.where(miss, np.nan, np.maximum(gs, 0.0))
            ls = out["lai"] * (1 + obs.lai_rel_noise * rs.standard_normal(n))
            sbuf["lai"][j] = np.where(miss, np.nan, np.maximum(ls, 0.0))
            sm_day = ((b0 + j) % max(obs.sm_revisit_days, 1)) == sm_offset
            sm = np.clip(out["theta"] + obs.sm_noise * rs.standard_normal(n), 0.01, 0.6)
            sbuf["soil_moisture"][j] = np.where(sm_day, sm, np.nan)
            if n_t:
                for k in ("tair", "swrad", "vpd", "precip", "swrad_pot"):
                    tower_rec[k].append(wf[k][tower_px])
                for k in ("gpp", "ra", "rh", "theta", "tsoil"):
                    tower_rec[k].append(out[k][tower_px])
        sl = {"time": slice(b0, b1)}
        shp_w = (nb, wgrid.ny, wgrid.nx)
        shp_f = (nb, grid.ny, grid.nx)
        cubes.write_region(
            xr.Dataset({k: (("time", "y", "x"), v.reshape(shp_w)) for k, v in wbuf.items()}),
            root / "weather.zarr",
            sl,
        )
        cubes.write_region(
            xr.Dataset({k: (("time", "y", "x"), v.reshape(shp_f)) for k, v in sbuf.items()}),
            root / "satellite.zarr",
            sl,
        )
        cubes.write_region(
            xr.Dataset({k: (("time", "y", "x"), v.reshape(shp_f)) for k, v in tbuf.items()}),
            root / "truth.zarr",
            sl,
        )
        bar.update(nb)
    bar.close()
    yields[year_of[cur_year]] = sim.s.yield_
    cubes.write_region(
        xr.Dataset({"yield": (("year", "y", "x"), yields.reshape(len(year_list), *grid.shape))}),
        root / "truth.zarr", {"year": slice(0, len(year_list))},
    )  # fmt: skip
    for name in ("weather", "satellite", "truth"):
        cubes.mark_complete(root / f"{name}.zarr")

    info = WorldInfo(root, root / "catalog.yaml", grid, wgrid, pr.years, params=p)
    if n_t:
        _write_towers(
            info, p, seed, tower_px, tower_rec, days, soil2d, crop3d, year_list, rng["towers"]
        )
    from kgml_grid.catalog import write_world_catalog

    write_world_catalog(info, p, seed, pr)
    (root / "world.json").write_text(json.dumps(
        {"name": p.name, "seed": seed, "preset": pr.name, "years": list(pr.years),
         "shape": [grid.ny, grid.nx], "params": p.to_dict()}, indent=2))  # fmt: skip
    info.seconds = _time.perf_counter() - t0
    return info


def site_id(world: str, i: int) -> str:
    """FLUXNET-style ID of synthetic tower ``i`` of a world: ``SY-A01``."""
    return f"SY-{world[:1].upper()}{i + 1:02d}"


def _write_towers(
    info: WorldInfo,
    p: WorldParams,
    seed: int,
    tower_px: np.ndarray,
    rec: dict[str, list[np.ndarray]],
    days: pd.DatetimeIndex,
    soil2d: dict[str, np.ndarray],
    crop3d: np.ndarray,
    year_list: list[int],
    rng: np.random.Generator,
) -> None:
    """Write each tower as a FLUXNET2015 DD CSV plus its site-metadata sidecar."""
    from kgml_grid.fluxnet import to_fluxnet_dd
    from kgml_grid.sites import SiteMeta, write_site_meta

    obs = p.obs
    tdir = info.root / "towers"
    tdir.mkdir(exist_ok=True)
    series = {k: np.stack(v) for k, v in rec.items()}  # (days, towers)
    lon, lat = lonlat(info.grid)
    nx = info.grid.nx
    for i, px in enumerate(tower_px):
        r, c = divmod(int(px), nx)
        sid = site_id(p.name, i)
        nd = len(days)
        ra, rh, g = series["ra"][:, i], series["rh"][:, i], series["gpp"][:, i]
        reco = ra + rh
        nee = reco - g
        nee_obs = nee + (
            obs.tower_nee_noise + obs.tower_nee_rel_noise * np.abs(nee)
        ) * rng.standard_normal(nd)
        reco_obs = np.maximum(reco * (1 + obs.tower_reco_rel_noise * rng.standard_normal(nd)), 0.0)
        qc = np.clip(rng.beta(8, 1.5, nd), 0, 1)
        missing = rng.random(nd) < obs.tower_missing
        nee_obs[missing] = np.nan
        reco_obs[missing] = np.nan
        qc[missing] = 0.0
        gpp_obs = reco_obs - nee_obs  # night-time partitioning: GPP = Reco - NEE
        ds = xr.Dataset(
            {
                "tair": (
                    "time",
                    series["tair"][:, i] + obs.tower_weather_noise * rng.standard_normal(nd),
                ),
                "swrad": ("time", series["swrad"][:, i]),
                "swrad_pot": ("time", series["swrad_pot"][:, i]),
                "vpd": ("time", np.maximum(series["vpd"][:, i], 0.0)),
                "precip": ("time", series["precip"][:, i]),
                "soil_moisture": ("time", series["theta"][:, i]),
                "nee": ("time", nee_obs),
                "reco": ("time", reco_obs),
                "gpp": ("time", gpp_obs),
                "nee_qc": ("time", qc),
            },
            coords={"time": days},
        )
        y0, y1 = year_list[0], year_list[-1]
        path = tdir / f"FLX_{sid}_FLUXNET2015_SUBSET_DD_{y0}-{y1}_1-4.csv"
        to_fluxnet_dd(ds, path, site_id=sid)
        crops = {y: schema.CROP_CODES[int(crop3d[k, r, c])] for k, y in enumerate(year_list)}
        meta = SiteMeta(
            site_id=sid,
            latitude=float(lat[r, c]),
            longitude=float(lon[r, c]),
            igbp="CRO",
            crop_default=max(set(crops.values()), key=list(crops.values()).count),
            crop_by_year=crops,
            soil={k: float(soil2d[k][r, c]) for k in schema.SITE_SOIL_PROPERTIES},
            x=float(info.grid.x[c]),
            y=float(info.grid.y[r]),
            source=f"kgml_grid synthetic world {p.name}, seed {seed}, pixel row {r} col {c}",
        )
        meta_path = tdir / f"{sid}_site.json"
        write_site_meta(meta, meta_path)
        info.towers.append(path)
        info.site_meta.append(meta_path)
