"""Explicit parameters of the synthetic world, and their perturbation from a file.

Every number the simulator uses lives here, with its unit. A second, perturbed
world ("reality" in the transfer experiment) is the same simulator with some of these
changed through ``--world-params FILE`` (JSON, parsed as data).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class WeatherParams:
    """Daily weather on the coarse grid."""

    t_mean: float = 10.0  # degC, annual mean air temperature at the domain centre
    t_lat_gradient: float = -0.75  # degC per degree latitude northward
    t_amplitude: float = 13.5  # degC, half the annual range of the daily mean
    t_peak_doy: float = 200.0  # day of year of the warmest climatological day
    t_anomaly_sd: float = 3.2  # degC, sd of daily anomalies
    t_anomaly_rho: float = 0.72  # lag-1 autocorrelation of anomalies
    spatial_coherence: float = 0.8  # share of anomaly variance common to the domain
    p_wet_mean: float = 0.27  # probability of a wet day, annual mean
    p_wet_amplitude: float = 0.12  # seasonal amplitude of that probability (peak in June)
    p_gamma_shape: float = 0.75  # gamma shape of wet-day amounts
    p_gamma_scale: float = 9.0  # mm d-1, gamma scale of wet-day amounts
    transmissivity_dry: float = 0.72  # fraction of top-of-atmosphere radiation, dry day
    transmissivity_wet: float = 0.42  # same, wet day
    rh_dry: float = 0.58  # relative humidity, dry day
    rh_wet: float = 0.82  # relative humidity, wet day


@dataclass(frozen=True)
class SoilParams:
    """Static soil fields (gSSURGO-like) on the fine grid."""

    sand_mean: float = 24.0  # %
    sand_gradient: float = 14.0  # % across the domain (west to east, decreasing)
    clay_mean: float = 29.0  # %
    soc_mean: float = 7.5  # kg m-2, 0-30 cm
    soc_gradient: float = 2.5  # kg m-2 across the domain (south to north, increasing)
    field_noise: float = 1.0  # multiplier of the smooth random part of every field
    smooth_cells: float = 6.0  # correlation length of random soil fields, in fine cells
    root_zone_mm: float = 800.0  # mm, water-holding depth of the bucket


@dataclass(frozen=True)
class CropParams:
    """Phenology and productivity of one crop type."""

    plant_doy: float  # day of year of planting (green-up for 'other')
    plant_jitter_days: float  # sd of planting date between pixels and years
    t_base: float  # degC, base temperature of growing degree days
    gdd_maturity: float  # degC d from planting to maturity
    lai_max: float  # m2 m-2, peak LAI of a vigorous stand
    lue: float  # g C per MJ of absorbed PAR
    t_opt: float  # degC, optimum temperature of photosynthesis
    t_width: float  # degC, width of the Gaussian temperature response
    maint_resp: float  # d-1, maintenance respiration rate of live biomass at 20 degC
    harvest_index: float  # share of live biomass carbon removed as grain at harvest
    harvest_doy_latest: float  # day of year by which the crop is harvested regardless


@dataclass(frozen=True)
class CarbonParams:
    """Autotrophic and heterotrophic respiration."""

    growth_resp: float = 0.25  # share of (GPP - maintenance) respired as growth respiration
    q10_ra: float = 2.0  # Q10 of maintenance respiration
    q10_rh: float = 2.2  # Q10 of decomposition
    k_litter: float = 0.012  # d-1, residue decomposition rate at 20 degC, optimal moisture
    k_soc: float = 1.1e-4  # d-1, soil organic carbon decomposition rate at 20 degC
    humification: float = 0.3  # share of decomposed residue that becomes SOC
    clay_protection: float = 0.5  # relative slowdown of SOC decomposition at 100 % clay
    tsoil_alpha: float = 0.15  # smoothing of soil temperature from air temperature (EMA)
    moisture_min: float = 0.25  # decomposition moisture response at wilting point
    litter_init: float = 250.0  # g C m-2 residue at the start of spin-up
    frozen_factor: float = 0.3  # decomposition multiplier when soil temperature < 0 degC


@dataclass(frozen=True)
class ObsParams:
    """Noise and gaps of the 'observations': satellite layers and flux towers."""

    gpp_rel_noise: float = 0.10  # relative sd of satellite GPP error
    gpp_abs_noise: float = 0.35  # g C m-2 d-1, absolute sd of satellite GPP error
    gpp_missing: float = 0.06  # probability a satellite GPP day is missing (clear sky)
    gpp_missing_wet: float = 0.30  # same, on wet (cloudy) days
    lai_rel_noise: float = 0.12
    sm_noise: float = 0.03  # m3 m-3, sd of satellite soil moisture error
    sm_revisit_days: int = 3  # a satellite soil moisture retrieval every n days
    tower_nee_noise: float = 0.35  # g C m-2 d-1, sd of tower NEE error
    tower_nee_rel_noise: float = 0.08  # relative sd of tower NEE error
    tower_reco_rel_noise: float = 0.10  # relative sd of partitioned tower Reco error
    tower_missing: float = 0.04  # probability a tower flux day is missing
    tower_weather_noise: float = 0.5  # degC sd between tower and grid air temperature


def _default_crops() -> dict[str, CropParams]:
    table = {
        "other": (100, 6, 5.0, 2000, 2.6, 1.2, 20.0, 12.0, 0.010, 0.0, 290),
        "corn": (122, 5, 10.0, 1450, 5.6, 2.2, 26.0, 11.0, 0.011, 0.50, 300),
        "soybean": (136, 5, 10.0, 1300, 4.6, 1.55, 24.0, 11.0, 0.013, 0.38, 295),
    }
    return {k: CropParams(*map(float, v)) for k, v in table.items()}


@dataclass(frozen=True)
class WorldParams:
    """All parameters of one synthetic world."""

    name: str = "A"
    center_lon: float = -96.4766  # degrees east: Mead, Nebraska
    center_lat: float = 41.1651
    crs: str = "EPSG:5070"  # CONUS Albers, the target grid's CRS
    other_fraction: float = 0.3  # share of pixels that are not corn or soybean
    continuous_corn_fraction: float = 0.12  # share of crop pixels in continuous corn
    weather: WeatherParams = field(default_factory=WeatherParams)
    soil: SoilParams = field(default_factory=SoilParams)
    crops: dict[str, CropParams] = field(default_factory=_default_crops)
    carbon: CarbonParams = field(default_factory=CarbonParams)
    obs: ObsParams = field(default_factory=ObsParams)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def crop_table(self, attr: str) -> Any:
        """One parameter of every crop type, indexable by crop code (0 other, 1 corn, 2 soy)."""
        import numpy as np

        from kgml_grid.schema import CROP_CODES

        return np.array([getattr(self.crops[CROP_CODES[c]], attr) for c in sorted(CROP_CODES)])


def _apply(obj: Any, overrides: dict[str, Any], where: str, source: str) -> Any:
    if not isinstance(overrides, dict):
        raise ValueError(f"{source}: {where or 'top level'} must be a JSON object")
    if isinstance(obj, dict):
        out = dict(obj)
        for k, v in overrides.items():
            if k not in out:
                raise ValueError(
                    f"{source}: unknown key {where}.{k!s}; known: {', '.join(sorted(out))}"
                )
            out[k] = _apply(out[k], v, f"{where}.{k}", source)
        return out
    names = {f.name: f for f in fields(obj)}
    changes: dict[str, Any] = {}
    for k, v in overrides.items():
        if k not in names:
            raise ValueError(
                f"{source}: unknown parameter {(where + '.' + k).lstrip('.')!s}; "
                f"known: {', '.join(sorted(names))}"
            )
        cur = getattr(obj, k)
        if is_dataclass(cur) or isinstance(cur, dict):
            changes[k] = _apply(cur, v, f"{where}.{k}".lstrip("."), source)
        else:
            want = (int, float) if isinstance(cur, float) else type(cur)
            if isinstance(v, bool) != isinstance(cur, bool) or not isinstance(v, want):
                raise ValueError(
                    f"{source}: parameter {(where + '.' + k).lstrip('.')} = {v!r} should be "
                    f"a {type(cur).__name__}"
                )
            changes[k] = float(v) if isinstance(cur, float) else v
    return replace(obj, **changes)


def load_world_params(path: str | Path | None, *, base: WorldParams | None = None) -> WorldParams:
    """Parameters from a JSON file of overrides (nested like :meth:`WorldParams.to_dict`).

    Example file: ``{"name": "B", "carbon": {"q10_rh": 2.6}, "crops": {"corn": {"lue": 2.0}}}``.
    """
    base = base or WorldParams()
    if path is None:
        return base
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"world parameter file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    return _apply(base, data, "", str(path))


#: A ready-made perturbed world: warmer-responding decomposition, different crop
#: productivity and respiration, wetter climate. Used as "reality" in the transfer experiment.
PERTURBED_B: dict[str, Any] = {
    "name": "B",
    "carbon": {"q10_rh": 2.7, "k_soc": 1.5e-4, "k_litter": 0.016, "growth_resp": 0.3},
    "crops": {
        "corn": {"lue": 2.45, "maint_resp": 0.014, "gdd_maturity": 1550.0},
        "soybean": {"lue": 1.4, "maint_resp": 0.011},
    },
    "weather": {"t_mean": 11.0, "p_wet_mean": 0.31},
}
