"""Figures people would rather look at than read: world overview maps and series."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    if matplotlib.get_backend().lower() not in {"agg", "module://matplotlib_inline.backend_inline"}:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def world_overview(
    layers: Mapping[str, xr.Dataset],
    path: str | Path,
    *,
    towers: Mapping[str, xr.Dataset] | None = None,
    title: str = "kgml_grid world overview",
) -> Path:
    """A one-page PNG: soil, crop, satellite and truth maps plus domain-mean series.

    Parameters
    ----------
    layers : mapping
        Opened cubes by layer name (as from :meth:`kgml_grid.Catalog.open_all`).
    path : path
        PNG to write.
    towers : mapping, optional
        FLUXNET datasets by site ID (from :func:`kgml_grid.fluxnet.read_fluxnet_dd`).
    """
    plt = _plt()
    fig, axes = plt.subplots(3, 3, figsize=(15, 12), constrained_layout=True)
    fig.suptitle(title)

    def show(ax, da: xr.DataArray, label: str, cmap: object = "viridis", **kw: object) -> None:  # type: ignore[no-untyped-def]
        km = 1e-3
        x, y = da["x"].values * km, da["y"].values * km
        dx = (x[1] - x[0]) if x.size > 1 else 1.0
        dy = (y[0] - y[1]) if y.size > 1 else 1.0
        im = ax.imshow(
            np.asarray(da.values, dtype="float64"),
            extent=(x[0] - dx / 2, x[-1] + dx / 2, y[-1] - dy / 2, y[0] + dy / 2),
            cmap=cmap,
            interpolation="nearest",
            **kw,
        )
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("x (km)")
        ax.set_ylabel("y (km)")
        cb = fig.colorbar(im, ax=ax, shrink=0.8)
        if kw.get("vmax") == 2.5:  # categorical crop map
            cb.set_ticks([0, 1, 2], labels=["other", "corn", "soybean"])

    ax = axes.ravel()
    if "soil" in layers:
        show(ax[0], layers["soil"]["soc"], "soil organic carbon (kg m-2)", "YlOrBr")
        show(ax[1], layers["soil"]["clay"], "clay (%)", "copper")
    if "crop" in layers:
        c = layers["crop"]["crop_type"]
        from matplotlib.colors import ListedColormap

        cmap = ListedColormap(["#d9d9d9", "#f2c14e", "#5b8e3e"])
        show(ax[2], c.isel(year=0), f"crop type {int(c['year'][0])}", cmap, vmin=-0.5, vmax=2.5)
    if "satellite" in layers:
        g = layers["satellite"]["gpp_sat"]
        yr = int(g["time"].dt.year[0])
        g1 = g.sel(time=str(yr))
        annual = (g1.mean("time") * g1.sizes["time"]).compute()
        show(ax[3], annual, f"satellite GPP {yr} (g C m-2 yr-1, gaps skipped)", "Greens")
    if "truth" in layers:
        t = layers["truth"]
        yr = int(t["time"].dt.year[0])
        show(
            ax[4],
            t["nee"].sel(time=str(yr)).sum("time").compute(),
            f"true NEE {yr} (g C m-2 yr-1)",
            "RdBu_r",
        )
        show(
            ax[5],
            t["rh"].sel(time=str(yr)).sum("time").compute(),
            f"true Rh {yr} (g C m-2 yr-1)",
            "Oranges",
        )
        mean = t[["gpp", "ra", "rh", "nee"]].mean(("y", "x")).compute()
        for v in ("gpp", "ra", "rh", "nee"):
            ax[6].plot(mean["time"].values, mean[v].values, lw=0.8, label=v)
        ax[6].set_title("domain-mean truth (g C m-2 d-1)", fontsize=10)
        ax[6].legend(fontsize=8)
    if "weather" in layers:
        w = layers["weather"][["tair", "precip"]].mean(("y", "x")).compute()
        ax[7].plot(w["time"].values, w["tair"].values, lw=0.6, color="tab:red")
        ax[7].set_ylabel("air temperature (degC)", color="tab:red")
        ax2 = ax[7].twinx()
        ax2.bar(w["time"].values, w["precip"].values, width=1.0, color="tab:blue", alpha=0.5)
        ax2.set_ylabel("precipitation (mm d-1)", color="tab:blue")
        ax[7].set_title("domain-mean weather", fontsize=10)
    if towers:
        for sid, ds in list(towers.items())[:4]:
            ax[8].plot(ds["time"].values, ds["nee"].values, lw=0.5, label=sid)
        ax[8].axhline(0, color="k", lw=0.5)
        ax[8].set_title("tower NEE (g C m-2 d-1, + = source)", fontsize=10)
        ax[8].legend(fontsize=8)
    else:
        ax[8].axis("off")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
