"""Invariants of the simulator's process functions (property tests)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kgml_grid import schema
from kgml_grid.synth import physics as ph
from kgml_grid.synth.params import CarbonParams, SoilParams

C = CarbonParams()
temps = st.floats(-30, 45, allow_nan=False)
pos = st.floats(0, 5000, allow_nan=False)


def _rh(litter, soc, tsoil, theta=0.3, fc=0.35, wp=0.12, clay=25.0):
    a = np.atleast_1d
    rh, _, _ = ph.heterotrophic_respiration(
        a(litter), a(soc), a(tsoil), a(theta), a(fc), a(wp), a(clay),
        k_litter=C.k_litter, k_soc=C.k_soc, humification=C.humification,
        clay_protection=C.clay_protection, q10=C.q10_rh, frozen_factor=C.frozen_factor,
        moisture_min=C.moisture_min,
    )  # fmt: skip
    return rh


@given(t1=temps, t2=temps, litter=pos, soc=st.floats(100, 30000))
def test_rh_rises_with_temperature(t1, t2, litter, soc):
    lo, hi = sorted((t1, t2))
    assert _rh(litter, soc, hi)[0] >= _rh(litter, soc, lo)[0]
    if hi - lo > 1e-3:
        assert _rh(litter, soc, hi)[0] > _rh(litter, soc, lo)[0]


@given(s1=st.floats(100, 30000), s2=st.floats(100, 30000), t=temps, litter=pos)
def test_rh_rises_with_soc(s1, s2, t, litter):
    lo, hi = sorted((s1, s2))
    assert _rh(litter, hi, t)[0] >= _rh(litter, lo, t)[0]
    if hi - lo > 1.0:
        assert _rh(litter, hi, t)[0] > _rh(litter, lo, t)[0]


@given(
    g=st.floats(0, 40), b=st.floats(0, 3000), t=temps,
    m=st.floats(0, 0.05), growth=st.floats(0, 0.5),
)  # fmt: skip
def test_ra_nonnegative_and_biomass_stays_nonnegative(g, b, t, m, growth):
    ra = ph.autotrophic_respiration(np.array([g]), np.array([b]), np.array([t]), m, growth, 2.0)
    assert ra[0] >= 0
    assert b + g - ra[0] >= -1e-9


@given(sw=st.floats(0, 40), lai=st.floats(0, 8), t=temps, vpd=st.floats(0, 80), fw=st.floats(0, 1))
def test_gpp_nonnegative_and_bounded_by_light(sw, lai, t, vpd, fw):
    g = ph.gpp(
        np.array(sw), np.array(lai), np.array(t), np.array(vpd), np.array(fw), 2.2, 26.0, 11.0
    )
    assert 0 <= g <= 2.2 * ph.PAR_FRACTION * sw + 1e-12


def test_gpp_zero_without_leaves_or_light():
    assert (
        ph.gpp(
            np.array(20.0), np.array(0.0), np.array(25.0), np.array(10.0), np.array(1.0), 2, 25, 10
        )
        == 0
    )
    assert (
        ph.gpp(
            np.array(0.0), np.array(4.0), np.array(25.0), np.array(10.0), np.array(1.0), 2, 25, 10
        )
        == 0
    )


def test_extraterrestrial_radiation_matches_fao56_example():
    # FAO-56 example 8: 20 deg S on 3 September (doy 246) -> 32.2 MJ m-2 d-1
    assert ph.extraterrestrial_radiation(np.array(-20.0), 246) == pytest.approx(32.2, abs=0.1)


def test_saturation_vapour_pressure_reference_values():
    assert ph.saturation_vapour_pressure(np.array(0.0)) == pytest.approx(6.112)
    assert ph.saturation_vapour_pressure(np.array(20.0)) == pytest.approx(23.37, abs=0.05)


def test_lai_shape_peaks_mid_season_and_is_zero_before_planting():
    f = np.linspace(0, 1.1, 200)
    s = ph.lai_shape(f)
    assert s[0] == 0
    assert 0.5 < f[np.argmax(s)] < 0.8
    assert s.max() <= 1.0


def test_soil_fields_within_schema_ranges_and_consistent():
    rng = np.random.default_rng(1)
    f = ph.soil_fields(rng, (40, 50), SoilParams())
    for name, v in f.items():
        lo, hi = schema.VARIABLES[name].valid_range
        assert lo <= v.min() and v.max() <= hi, name
    np.testing.assert_allclose(f["sand"] + f["silt"] + f["clay"], 100.0)
    assert (f["field_capacity"] > f["wilting_point"]).all()


def test_smooth_field_is_standardised_and_correlated():
    z = ph.smooth_field(np.random.default_rng(2), (64, 64), 6.0)
    assert abs(z.mean()) < 1e-9 and z.std() == pytest.approx(1.0)
    lag1 = np.corrcoef(z[:, :-1].ravel(), z[:, 1:].ravel())[0, 1]
    assert lag1 > 0.8  # smooth at the cell scale


def test_crop_rotation_alternates_and_keeps_other_fixed():
    rng = np.random.default_rng(3)
    c = ph.crop_rotation(
        rng,
        (30, 30),
        [2010, 2011, 2012],
        other_fraction=0.3,
        continuous_corn_fraction=0.0,
        smooth_cells=4,
    )
    other = c[0] == 0
    assert 0.2 < other.mean() < 0.4
    assert ((c == 0) == other).all()
    crop = ~other
    assert (c[0][crop] != c[1][crop]).all()  # corn <-> soybean every year
    assert (c[0][crop] == c[2][crop]).all()
