"""Map panels (kgml_grid.analysis.figures): one colour scale for panels of one quantity,
one per panel for different quantities, and the sign of a flux on a diverging scale."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from kgml_grid.analysis import figures
from kgml_grid.maps import _plt


def _field(values: np.ndarray) -> xr.DataArray:
    ny, nx = values.shape
    return xr.DataArray(values, dims=("y", "x"),
                        coords={"y": 1e3 * np.arange(ny)[::-1], "x": 1e3 * np.arange(nx)})  # fmt: skip


@pytest.fixture
def drawn(monkeypatch):
    """The figures field_maps closes, kept for inspection."""
    plt, kept = _plt(), []
    close = plt.close

    def keep(fig=None):
        kept.append(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    return kept


def _clims(fig) -> list[tuple[float, float, str]]:
    return [
        (*ax.images[0].get_clim(), ax.images[0].get_cmap().name) for ax in fig.axes if ax.images
    ]


RH = np.linspace(400.0, 900.0, 100).reshape(10, 10)
NEE = np.linspace(-300.0, 100.0, 100).reshape(10, 10)


def test_own_scales_put_rh_and_nee_each_on_their_range(tmp_path, drawn):
    path = figures.field_maps([("Rh", _field(RH)), ("NEE", _field(NEE))], tmp_path / "m.png",
                              units="g C m-2 yr-1", title="t", diverging=[False, True],
                              shared_scale=False)  # fmt: skip
    assert path.stat().st_size > 0
    (rh_lo, rh_hi, rh_cmap), (nee_lo, nee_hi, nee_cmap) = _clims(drawn[0])
    assert rh_cmap == "viridis" and 400 < rh_lo < rh_hi < 900
    assert nee_cmap == "RdBu_r" and nee_lo == -nee_hi and 250 < nee_hi <= 300  # centred on 0
    assert len(drawn[0].axes) == 4  # two maps, two colour bars


def test_a_shared_scale_spans_all_panels(tmp_path, drawn):
    figures.field_maps([("a", _field(RH)), ("b", _field(RH + 1000.0))], tmp_path / "m.png",
                       units="u", title="t")  # fmt: skip
    (a_lo, a_hi, _), (b_lo, b_hi, _) = _clims(drawn[0])
    assert (a_lo, a_hi) == (b_lo, b_hi) and a_lo < 500 and a_hi > 1800
    assert len(drawn[0].axes) == 3  # one colour bar


def test_mixed_diverging_on_a_shared_scale_is_refused(tmp_path):
    with pytest.raises(
        ValueError, match=r"shared colour scale needs one diverging setting.*shared_scale=False"
    ):
        figures.field_maps([("a", _field(RH)), ("b", _field(NEE))], tmp_path / "m.png", units="u",
                           title="t", diverging=[False, True])  # fmt: skip
    with pytest.raises(ValueError, match="1 diverging flags for 2 panels"):
        figures.field_maps([("a", _field(RH)), ("b", _field(NEE))], tmp_path / "m.png", units="u",
                           title="t", diverging=[True], shared_scale=False)  # fmt: skip
    assert not (tmp_path / "m.png").exists()
