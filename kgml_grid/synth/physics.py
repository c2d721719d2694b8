"""Process equations of the synthetic world (the stand-in for *ecosys*).

Pure, vectorised functions on NumPy arrays; the daily loop in :mod:`.world` calls
them. Units: temperatures degC, radiation MJ m-2 d-1, water mm or m3 m-3, carbon
g C m-2 (pools) and g C m-2 d-1 (fluxes).

Equations
---------
Weather (coarse cells):
    T = t_mean + g_lat (lat - lat0) + A sin(2 pi (doy - t_peak + 91.3) / 365.25) + a_t,
    a_t = rho a_{t-1} + sqrt(1 - rho^2) sd eps_t (eps shared by the domain for a share c);
    wet day when a spatially coherent uniform < p_wet(doy); P ~ Gamma(k, theta);
    SW = tau * R_a(lat, doy) (FAO-56 extraterrestrial radiation), tau dry or wet;
    VPD = e_s(T) (1 - RH), e_s = 6.112 exp(17.67 T / (T + 243.5)) hPa.
Phenology (fine pixels): growing degree days from planting,
    GDD += clip(T - t_base, 0, 30 - t_base); development f = GDD / gdd_maturity;
    LAI = lai_max v s(f), s rising logistically to f = 0.7 then senescing; harvest at
    f >= 1.1 or doy >= harvest_doy_latest.
Photosynthesis: GPP = lue * 0.48 SW * (1 - exp(-0.5 LAI)) * f_T * f_VPD * f_W,
    f_T = exp(-((T - t_opt)/t_width)^2), f_VPD = clip(1 - (VPD - 8)/35, 0.3, 1),
    f_W = clip((theta - wp) / (0.6 (fc - wp)), 0, 1).
Water: bucket of depth D: theta += (P - ET - drainage) / D,
    ET = PET (0.15 + 0.85 fAPAR) f_W, PET = 0.2 SW max(T + 5, 0) / 25 mm d-1,
    drainage = k_d (theta - fc) D above field capacity.
Autotrophic respiration: R_m = m B Q10_ra^((T - 20)/10) (at most half of B),
    R_g = g max(GPP - R_m, 0), Ra = R_m + R_g; live biomass B += GPP - Ra.
    At harvest: yield = HI B, residue (1 - HI) B -> litter L, B -> 0.
Heterotrophic respiration: f_T = Q10_rh^((Ts - 20)/10) (x frozen_factor below 0 degC),
    f_W = m0 + (1 - m0) clip(theta_rel, 0, 1)^0.7, Ts = EMA of T;
    D_L = k_L L f_T f_W, D_S = k_S (1 - c_p clay/100) S f_T f_W,
    Rh = (1 - h) D_L + D_S; L -= D_L; S += h D_L - D_S.
Balance: Reco = Ra + Rh, NEE = Reco - GPP (positive = source).
"""

from __future__ import annotations

import numpy as np

T_REF = 20.0  # degC, reference temperature of respiration rates
PAR_FRACTION = 0.48  # PAR share of shortwave radiation
K_EXT = 0.5  # canopy light extinction coefficient


def saturation_vapour_pressure(t: np.ndarray) -> np.ndarray:
    """Saturation vapour pressure (hPa) over water at air temperature ``t`` (degC)."""
    return 6.112 * np.exp(17.67 * t / (t + 243.5))


def extraterrestrial_radiation(lat_deg: np.ndarray, doy: int | np.ndarray) -> np.ndarray:
    """Daily top-of-atmosphere shortwave radiation (MJ m-2 d-1), FAO-56 eq. 21."""
    phi = np.deg2rad(lat_deg)
    dr = 1 + 0.033 * np.cos(2 * np.pi * doy / 365.0)
    delta = 0.409 * np.sin(2 * np.pi * doy / 365.0 - 1.39)
    ws = np.arccos(np.clip(-np.tan(phi) * np.tan(delta), -1.0, 1.0))
    gsc = 0.0820  # MJ m-2 min-1
    return (
        (24 * 60 / np.pi)
        * gsc
        * dr
        * (ws * np.sin(phi) * np.sin(delta) + np.cos(phi) * np.cos(delta) * np.sin(ws))
    )


def gdd_increment(t: np.ndarray, t_base: np.ndarray) -> np.ndarray:
    """Growing degree days of one day (degC d), capped at 30 degC."""
    return np.clip(t - t_base, 0.0, np.maximum(30.0 - t_base, 0.0))


def lai_shape(f: np.ndarray) -> np.ndarray:
    """Relative LAI (0..1) as a function of development ``f`` (0 planting, 1 maturity)."""
    rise = 1.0 / (1.0 + np.exp(-11.0 * (f - 0.32)))
    fall = 1.0 - 0.85 * np.clip((f - 0.7) / 0.4, 0.0, 1.0)
    return np.where(f > 0, rise * fall, 0.0)


def water_stress(theta: np.ndarray, fc: np.ndarray, wp: np.ndarray) -> np.ndarray:
    """Water limitation of photosynthesis and transpiration (0..1)."""
    return np.clip((theta - wp) / (0.6 * (fc - wp)), 0.0, 1.0)


def gpp(
    sw: np.ndarray,
    lai: np.ndarray,
    t: np.ndarray,
    vpd: np.ndarray,
    f_w: np.ndarray,
    lue: np.ndarray,
    t_opt: np.ndarray,
    t_width: np.ndarray,
) -> np.ndarray:
    """Gross primary productivity (g C m-2 d-1): light use efficiency x absorbed PAR."""
    fapar = 1.0 - np.exp(-K_EXT * lai)
    f_t = np.exp(-(((t - t_opt) / t_width) ** 2))
    f_vpd = np.clip(1.0 - (vpd - 8.0) / 35.0, 0.3, 1.0)
    return lue * PAR_FRACTION * sw * fapar * f_t * f_vpd * f_w


def potential_et(sw: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Potential evapotranspiration (mm d-1), a radiation-temperature index."""
    return 0.2 * sw * np.maximum(t + 5.0, 0.0) / 25.0


def autotrophic_respiration(
    gpp_: np.ndarray,
    biomass: np.ndarray,
    t: np.ndarray,
    maint: np.ndarray,
    growth: float,
    q10: float,
) -> np.ndarray:
    """Ra (g C m-2 d-1) = maintenance (Q10 on live biomass) + growth share of GPP. Always >= 0."""
    rm = np.minimum(maint * biomass * q10 ** ((t - T_REF) / 10.0), 0.5 * biomass)
    rm = np.maximum(rm, 0.0)
    return rm + growth * np.maximum(gpp_ - rm, 0.0)


def decomposition_temperature(tsoil: np.ndarray, q10: float, frozen_factor: float) -> np.ndarray:
    """Temperature response of decomposition (1 at 20 degC), strictly increasing in tsoil."""
    f = q10 ** ((tsoil - T_REF) / 10.0)
    return np.where(tsoil < 0.0, f * frozen_factor, f)


def decomposition_moisture(
    theta: np.ndarray, fc: np.ndarray, wp: np.ndarray, m0: float
) -> np.ndarray:
    """Moisture response of decomposition: m0 at wilting point, 1 at field capacity."""
    rel = np.clip((theta - wp) / (fc - wp), 0.0, 1.0)
    return m0 + (1.0 - m0) * rel**0.7


def heterotrophic_respiration(
    litter: np.ndarray,
    soc: np.ndarray,
    tsoil: np.ndarray,
    theta: np.ndarray,
    fc: np.ndarray,
    wp: np.ndarray,
    clay: np.ndarray,
    *,
    k_litter: float,
    k_soc: float,
    humification: float,
    clay_protection: float,
    q10: float,
    frozen_factor: float,
    moisture_min: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decomposition of residue and soil organic carbon.

    Returns
    -------
    rh : ndarray
        Heterotrophic respiration (g C m-2 d-1), >= 0, increasing in tsoil and soc.
    d_litter, d_soc : ndarray
        Carbon leaving the litter and SOC pools today (g C m-2 d-1).
    """
    env = decomposition_temperature(tsoil, q10, frozen_factor) * decomposition_moisture(
        theta, fc, wp, moisture_min
    )
    d_l = np.minimum(k_litter * env, 1.0) * litter
    d_s = np.minimum(k_soc * (1.0 - clay_protection * clay / 100.0) * env, 1.0) * soc
    rh = (1.0 - humification) * d_l + d_s
    return rh, d_l, d_s


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], length: float) -> np.ndarray:
    """A zero-mean, unit-variance Gaussian random field with correlation length ``length`` cells."""
    white = rng.standard_normal(shape)
    if length <= 0:
        return white
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    filt = np.exp(-2.0 * (np.pi * length) ** 2 * (kx**2 + ky**2))
    out = np.fft.irfft2(np.fft.rfft2(white) * filt, s=shape)
    sd = out.std()
    return (out - out.mean()) / (sd if sd > 0 else 1.0)


def soil_fields(
    rng: np.random.Generator, shape: tuple[int, int], p: object
) -> dict[str, np.ndarray]:
    """gSSURGO-like static soil properties with gradients and smooth spatial noise.

    Texture drives the hydraulic properties (simplified Saxton & Rawls 2006 style
    pedotransfer functions), so the fields are physically consistent with each other.
    """
    ny, nx = shape
    gx = np.broadcast_to(np.linspace(-0.5, 0.5, nx)[None, :], shape)  # west -> east
    gy = np.broadcast_to(np.linspace(0.5, -0.5, ny)[:, None], shape)  # south -> north
    n = p.field_noise  # type: ignore[attr-defined]
    L = p.smooth_cells  # type: ignore[attr-defined]
    s1, s2, s3, s4, s5 = (smooth_field(rng, shape, L) for _ in range(5))
    sand = np.clip(p.sand_mean - p.sand_gradient * gx + 8.0 * n * s1, 3.0, 85.0)  # type: ignore[attr-defined]
    clay = np.clip(p.clay_mean + 0.25 * p.sand_gradient * gx + 5.0 * n * s2, 5.0, 55.0)  # type: ignore[attr-defined]
    clay = np.minimum(clay, 97.0 - sand)
    silt = 100.0 - sand - clay
    soc = np.clip(p.soc_mean + p.soc_gradient * gy + 1.4 * n * s3 + 0.03 * (clay - 29.0), 1.0, 25.0)  # type: ignore[attr-defined]
    wp = np.clip(0.03 + 0.0045 * clay - 0.0002 * sand + 0.002 * soc, 0.02, 0.35)
    fc = np.clip(wp + 0.10 + 0.0011 * (100.0 - sand) + 0.003 * soc, wp + 0.05, 0.55)
    ksat = np.clip(10 ** (0.6 + 0.0126 * sand - 0.0064 * clay), 0.05, 500.0)
    bd = np.clip(1.58 - 0.005 * clay - 0.018 * soc + 0.02 * n * s4, 0.9, 1.85)
    ph = np.clip(6.6 - 0.6 * gx + 0.4 * n * s5, 4.5, 8.5)
    cec = np.clip(1.0 + 0.55 * clay + 1.8 * soc, 1.0, 100.0)
    return {
        "bulk_density": bd, "sand": sand, "silt": silt, "clay": clay,
        "field_capacity": fc, "wilting_point": wp, "ksat": ksat, "soc": soc, "ph": ph, "cec": cec,
    }  # fmt: skip


def crop_rotation(
    rng: np.random.Generator,
    shape: tuple[int, int],
    years: list[int],
    *,
    other_fraction: float,
    continuous_corn_fraction: float,
    smooth_cells: float,
) -> np.ndarray:
    """Crop type per year (0 other, 1 corn, 2 soybean): clustered non-crop land,
    corn-soybean rotation with a per-field phase, some continuous corn."""
    field = smooth_field(rng, shape, smooth_cells)
    other = (
        field > np.quantile(field, 1.0 - other_fraction) if other_fraction > 0 else field > np.inf
    )
    phase = rng.integers(0, 2, size=shape)
    continuous = rng.random(shape) < continuous_corn_fraction
    out = np.empty((len(years), *shape), dtype="int8")
    for i, y in enumerate(years):
        corn = ((y + phase) % 2 == 0) | continuous
        out[i] = np.where(other, 0, np.where(corn, 1, 2))
    return out
