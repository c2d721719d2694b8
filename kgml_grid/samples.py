"""Training samples from the cubes, through the catalog.

Samples are *pixel x season windows*: for pixel ``p`` and year ``Y``, the days from
``spinup_days`` before 1 January of ``Y`` to 31 December of ``Y``; the loss is taken on
year ``Y`` only, the spin-up lets the GRU state settle (residue from the previous
harvest, soil water). Pixels are split into training and held-out pixels, and the
last years into held-out years (early stopping and evaluation), reproducibly from a
seed. Normalisation statistics are Dask reductions over the cubes, never a full load.

The same window machinery serves tower data (:func:`tower_series`), so one code path
feeds pre-training on synthetic truth and fine-tuning on FLUXNET files.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import dask
import numpy as np
import pandas as pd
import torch
import xarray as xr

from kgml_grid import features as F
from kgml_grid import schema
from kgml_grid.model import DAILY_TARGETS, YIELD_TARGET


@dataclass(frozen=True)
class SplitSpec:
    """How pixels and years are split and windows cut."""

    holdout_pixel_fraction: float = 0.2
    holdout_years: int = 2
    max_train_pixels: int = 600
    max_test_pixels: int = 300
    spinup_days: int = 122
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.holdout_pixel_fraction < 1:
            raise ValueError(
                f"holdout_pixel_fraction must be in (0, 1), got {self.holdout_pixel_fraction}"
            )
        if self.holdout_years < 0 or self.spinup_days < 0:
            raise ValueError("holdout_years and spinup_days must be >= 0")


@dataclass
class Split:
    """Training and held-out pixels (row, col) and years."""

    train_pixels: np.ndarray
    test_pixels: np.ndarray
    train_years: list[int]
    holdout_years: list[int]
    spec: SplitSpec = field(default_factory=SplitSpec)

    def to_dict(self) -> dict[str, object]:
        return {
            "train_pixels": self.train_pixels.tolist(),
            "test_pixels": self.test_pixels.tolist(),
            "train_years": self.train_years,
            "holdout_years": self.holdout_years,
            "spec": asdict(self.spec),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Split:
        return cls(
            np.asarray(d["train_pixels"], dtype="int64").reshape(-1, 2),
            np.asarray(d["test_pixels"], dtype="int64").reshape(-1, 2),
            [int(y) for y in d["train_years"]],  # type: ignore[union-attr]
            [int(y) for y in d["holdout_years"]],  # type: ignore[union-attr]
            SplitSpec(**d["spec"]),  # type: ignore[arg-type]
        )


def crop_mask(crop: xr.Dataset) -> np.ndarray:
    """Pixels under corn or soybean in every year (2-D bool)."""
    return np.asarray((crop["crop_type"] > 0).all("year").values)


def make_split(layers: Mapping[str, xr.Dataset], spec: SplitSpec) -> Split:
    """Draw held-out pixels and years from the cubes' metadata and crop map."""
    mask = crop_mask(layers["crop"])
    pix = np.argwhere(mask)
    if len(pix) < 2:
        raise ValueError(
            f"only {len(pix)} crop pixels in the crop cube: too few to train and hold out"
        )
    rng = np.random.default_rng(spec.seed)
    perm = rng.permutation(len(pix))
    n_test = max(1, round(spec.holdout_pixel_fraction * len(pix)))
    test = pix[perm[:n_test]][: spec.max_test_pixels]
    train = pix[perm[n_test:]][: spec.max_train_pixels]
    years = sorted({int(y) for y in pd.DatetimeIndex(layers["satellite"]["time"].values).year})
    if len(years) <= spec.holdout_years + 1:
        raise ValueError(
            f"the cubes cover {len(years)} years ({years[0]}-{years[-1]}); need more than "
            f"{spec.holdout_years + 1} to train with {spec.holdout_years} held-out years; "
            + (
                f"pass --holdout-years {len(years) - 2}"
                if len(years) >= 3
                else "generate or ingest more years"
            )
        )
    cut = len(years) - spec.holdout_years
    return Split(train, test, years[:cut], years[cut:], spec)


# --------------------------------------------------------------------------------------
# normalisation statistics (Dask reductions)
# --------------------------------------------------------------------------------------


#: Fixed normalisation of the availability flags (0/1 -> -1/+1): the share of
#: available days on the grid is near 1, and its standard deviation would blow up a 0.
FLAG_NORM = (0.5, 0.5)


def compute_norm(
    layers: Mapping[str, xr.Dataset],
    mask: np.ndarray | None = None,
    *,
    features: Sequence[str] = schema.FEATURES,
) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of every feature and target over crop pixels.

    Computed lazily with Dask over the cubes (one ``dask.compute``), never by loading
    them whole. Derived features: crop indicators from the crop cube, day-of-year
    terms fixed (mean 0, sd 1/sqrt 2), availability flags fixed (:data:`FLAG_NORM`).
    The additions of ``features`` (LAI, soil moisture) come from the satellite cube.
    """
    if mask is None:
        mask = crop_mask(layers["crop"])
    m = xr.DataArray(mask, dims=("y", "x"))
    lazy: dict[str, tuple[object, object]] = {}
    for v in F.WEATHER_FEATURES:
        da = layers["weather"][v]
        lazy[v] = (da.mean(), da.std())
    for v in F.satellite_inputs(features):
        if v not in layers["satellite"].data_vars:
            raise ValueError(
                f"feature set {schema.feature_set_name(features)!r} needs {v!r}, which the "
                "satellite cube lacks"
            )
        g = layers["satellite"][v].where(m)
        lazy[v] = (g.mean(), g.std())
    for v in F.SOIL_FEATURES:
        da = layers["soil"][v].where(m)
        lazy[v] = (da.mean(), da.std())
    crop = layers["crop"]["crop_type"].where(m)
    for name, code in (("is_corn", 1), ("is_soybean", 2)):
        frac = (crop == code).where(m).mean()
        lazy[name] = (frac, frac)
    if "truth" in layers:
        for v in DAILY_TARGETS:
            da = layers["truth"][v].where(m)
            lazy[v] = (da.mean(), da.std())
        y = layers["truth"][YIELD_TARGET].where(m)
        lazy[YIELD_TARGET] = (y.mean(), y.std())
    (computed,) = dask.compute({k: (a.data, b.data) for k, (a, b) in lazy.items()})  # type: ignore[attr-defined]
    out: dict[str, tuple[float, float]] = {}
    for k, (a, b) in computed.items():
        a, b = float(a), float(b)
        if k in ("is_corn", "is_soybean"):
            out[k] = (a, max(float(np.sqrt(a * (1 - a))), 1e-3))
        else:
            out[k] = (a, max(b, 1e-6))
    out["doy_sin"] = (0.0, float(np.sqrt(0.5)))
    out["doy_cos"] = (0.0, float(np.sqrt(0.5)))
    for name in schema.feature_additions(features):
        out[f"{name}_available"] = FLAG_NORM
    missing = [f for f in features if f not in out]
    if missing:
        raise ValueError(f"normalisation statistics missing for {missing}")
    return out


# --------------------------------------------------------------------------------------
# series and windows
# --------------------------------------------------------------------------------------


@dataclass
class Series:
    """Features and targets of ``n`` locations (pixels or towers), physical units.

    ``y`` holds NaN where a target is not observed (towers observe NEE, Reco, GPP but
    not Ra/Rh: those columns are NaN and ``reco`` carries the observed Reco).
    """

    time: pd.DatetimeIndex
    x: np.ndarray  # [n, T, F]
    y: np.ndarray  # [n, T, 4] DAILY_TARGETS
    yld: np.ndarray  # [n, T] yield at year ends, NaN elsewhere
    reco: np.ndarray | None = None  # [n, T] observed Reco (towers)
    names: list[str] = field(default_factory=list)
    features: tuple[str, ...] = schema.FEATURES  # the feature set of x
    #: per location, the first and last index of its own record in ``time`` (towers
    #: aligned on the union of their days); None: every location covers all of ``time``
    spans: list[tuple[int, int]] | None = None
    #: per location, where each addition's series came from (towers)
    sources: list[dict[str, str]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


def grid_series(
    layers: Mapping[str, xr.Dataset],
    pixels: np.ndarray,
    *,
    with_targets: bool = True,
    batch: int = 2000,
    features: Sequence[str] = schema.FEATURES,
) -> Series:
    """Read features (and truth) of grid pixels ``[(row, col), ...]`` from the cubes."""
    xs, ys, yls = [], [], []
    time = None
    features = tuple(features)
    for i in range(0, len(pixels), batch):
        p = pixels[i : i + batch]
        t, daily, soil, crop = F.pixel_inputs(layers, p[:, 0], p[:, 1], features=features)
        x, _ = F.assemble(time=t, daily=daily, soil=soil, crop_by_year=crop, features=features)
        xs.append(x)
        time = t
        if with_targets:
            y, yl = F.pixel_targets(layers["truth"], p[:, 0], p[:, 1], time=slice(t[0], t[-1]))
            ys.append(y)
            yls.append(_yield_at_year_end(t, yl, layers["truth"]["year"].values))
    assert time is not None
    x = np.concatenate(xs)
    y = np.concatenate(ys) if ys else np.full((*x.shape[:2], len(DAILY_TARGETS)), np.nan, "float32")
    yld = np.concatenate(yls) if yls else np.full(x.shape[:2], np.nan, "float32")
    return Series(time, x, y, yld, names=[f"pixel({r},{c})" for r, c in pixels], features=features)


def _yield_at_year_end(time: pd.DatetimeIndex, yl: np.ndarray, years: Sequence[int]) -> np.ndarray:
    out = np.full((yl.shape[0], len(time)), np.nan, "float32")
    ends = np.flatnonzero(F.year_end_mask(time))
    for t in ends:
        k = list(years).index(int(time[t].year))
        out[:, t] = yl[:, k]
    return out


def tower_series(
    towers: Sequence[xr.Dataset], *, features: Sequence[str] = schema.FEATURES
) -> Series:
    """Features and observations of FLUXNET towers (equal-length daily series).

    Towers with different date ranges are aligned on the union of their days; days
    outside a tower's record have NaN inputs (gap-filled causally) and no targets;
    each tower's own record is kept in :attr:`Series.spans` (windows never start
    before it). The additions of ``features`` come from the sources that
    :func:`kgml_grid.features.tower_addition_sources` picks (recorded in
    :attr:`Series.sources`).
    """
    if not towers:
        raise ValueError("no towers given")
    features = tuple(features)
    start = min(pd.Timestamp(ds["time"].values[0]) for ds in towers)
    end = max(pd.Timestamp(ds["time"].values[-1]) for ds in towers)
    time = pd.date_range(start, end, freq="D")
    xs, ys, recos, names, spans, sources = [], [], [], [], [], []
    for ds in towers:
        first = int(time.get_loc(pd.Timestamp(ds["time"].values[0])))
        last = int(time.get_loc(pd.Timestamp(ds["time"].values[-1])))
        spans.append((first, last))
        sources.append({k: v for k, (_, v) in F.tower_addition_sources(ds, features).items()})
        ds = ds.reindex(time=time)
        t, daily, soil, crop = F.tower_inputs(ds, features)
        years = sorted({int(y) for y in time.year})
        crop = {y: crop.get(y, np.zeros(1, "int8")) for y in years}
        x, _ = F.assemble(time=t, daily=daily, soil=soil, crop_by_year=crop, features=features)
        xs.append(x)
        y = np.full((1, len(time), len(DAILY_TARGETS)), np.nan, "float32")
        y[0, :, DAILY_TARGETS.index("nee")] = ds["nee"].values
        y[0, :, DAILY_TARGETS.index("gpp")] = ds["gpp"].values
        ys.append(y)
        recos.append(ds["reco"].values[None, :].astype("float32"))
        names.append(str(ds.attrs.get("site_id", f"tower{len(names)}")))
    x = np.concatenate(xs)
    return Series(time, x, np.concatenate(ys), np.full(x.shape[:2], np.nan, "float32"),
                  np.concatenate(recos), names, features, spans, sources)  # fmt: skip


def windows(
    time: pd.DatetimeIndex, years: Sequence[int], spinup: int
) -> list[tuple[int, int, int]]:
    """Fixed-length windows ``(start, stop, loss_from)`` ending on 31 December of each year.

    Every window is ``366 + spinup`` days long (a non-leap year gets one more spin-up
    day), so windows batch without padding. Years whose spin-up would start before
    the series are skipped.
    """
    length = 366 + spinup
    out = []
    for y in years:
        end = time.searchsorted(pd.Timestamp(f"{y}-12-31"))
        if end >= len(time) or time[end] != pd.Timestamp(f"{y}-12-31"):
            continue
        stop = end + 1
        start = stop - length
        jan1 = time.searchsorted(pd.Timestamp(f"{y}-01-01"))
        if start < 0:
            continue
        out.append((int(start), int(stop), int(jan1 - start)))
    return out


def location_windows(
    series: Series, i: int, years: Sequence[int], spinup: int
) -> list[tuple[int, int, int]]:
    """:func:`windows` of location ``i`` that lie inside its own record (:attr:`Series.spans`)."""
    out = windows(series.time, years, spinup)
    if series.spans is None:
        return out
    first, last = series.spans[i]
    return [w for w in out if w[0] >= first and w[1] - 1 <= last]


class Batches:
    """Streams standardised mini-batches of pixel x season windows as tensors.

    Parameters
    ----------
    series : Series
    items : sequence of (location index, window)
    norm : Normalizer
    batch_size : int
    shuffle : bool
    seed : int
    feature_dropout : float
        Probability, per window and addition (LAI, soil moisture), that the addition is
        hidden: value and availability flag set to 0, what a source without it gives.
        Pre-training uses it so that the model learns to run without the addition.
    """

    def __init__(self, series: Series, items: Sequence[tuple[int, tuple[int, int, int]]], norm: object,
                 *, batch_size: int = 32, shuffle: bool = True, seed: int = 0,
                 device: torch.device | str = "cpu", feature_dropout: float = 0.0) -> None:  # fmt: skip
        if not 0.0 <= feature_dropout <= 1.0:
            raise ValueError(f"feature_dropout must be within [0, 1], got {feature_dropout!r}")
        self.s = series
        self.items = list(items)
        self.norm = norm
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        self.device = device
        self.year_end = F.year_end_mask(series.time)
        self.feature_dropout = float(feature_dropout)
        idx = F.feature_index(series.features)
        self._droppable = [
            (idx[a], idx[f"{a}_available"]) for a in schema.feature_additions(series.features)
        ]

    def __len__(self) -> int:
        return -(-len(self.items) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = (
            self.rng.permutation(len(self.items)) if self.shuffle else np.arange(len(self.items))
        )
        for b in range(0, len(order), self.batch_size):
            yield self.batch([self.items[i] for i in order[b : b + self.batch_size]])

    def batch(self, items: Sequence[tuple[int, tuple[int, int, int]]]) -> dict[str, torch.Tensor]:
        s, norm = self.s, self.norm
        x = np.stack([s.x[i, a:b] for i, (a, b, _) in items])
        if self.feature_dropout > 0 and self._droppable:
            hide = self.rng.random((len(items), len(self._droppable))) < self.feature_dropout
            for j, cols in enumerate(self._droppable):
                x[np.ix_(hide[:, j], np.arange(x.shape[1]), cols)] = 0.0
        y = np.stack([s.y[i, a:b] for i, (a, b, _) in items])
        loss = np.zeros(x.shape[:2], dtype=bool)
        for k, (_, (_, _, lf)) in enumerate(items):
            loss[k, lf:] = True
        ye = np.stack([self.year_end[a:b] for _, (a, b, _) in items])
        yld = np.stack([s.yld[i, a:b] for i, (a, b, _) in items])
        out = {
            "x": norm.normalize_features(x),  # type: ignore[attr-defined]
            "y": norm.normalize_outputs(y),  # type: ignore[attr-defined]
            "y_phys": y,
            "loss": loss,
            "year_end": ye,
            "yield": norm.normalize_yield(yld) if YIELD_TARGET in norm.to_dict() else yld,  # type: ignore[attr-defined]
            "doy": np.stack([np.asarray(s.time.day_of_year[a:b]) for _, (a, b, _) in items]),
        }
        if s.reco is not None:
            out["reco"] = np.stack([s.reco[i, a:b] for i, (a, b, _) in items])
        return {k: torch.as_tensor(np.ascontiguousarray(v)).to(self.device) for k, v in out.items()}
