"""Value checks of cubes: what the metadata checks of :func:`kgml_grid.cubes.validate_layer`
cannot see.

A cube can carry the right names, dims and units and still hold impossible values: air
temperature in kelvin labelled ``degC``, negative precipitation, GPP of 1e6, a crop code
outside the legend, a layer that is all NaN, ``tair`` stored as ``uint8``. Each schema
variable of a layer is checked for

* **dtype**: continuous variables must be floating point (missing = NaN, no truncation);
  categorical ones (those with ``flag_values``, the crop type) integer;
* **all missing**: a variable with no finite value is refused;
* **kelvin**: a ``degC`` variable whose values all lie in 100..360 is refused as kelvin;
* **legend**: any categorical code outside ``flag_values`` is refused (a code has no
  "slightly outside");
* **valid range** (:attr:`kgml_grid.schema.Variable.valid_range`): refused when more
  than :data:`MAX_OUTSIDE_FRACTION` (0.1 %) of the checked finite values lie outside,
  or when any value lies outside by more than :data:`WIDE_MARGIN` times the range's
  width (GPP of 1e6, -inf); fewer, near misses (resampling overshoot, a negative
  precipitation of -0.01 here and there) give a :class:`CubeValueWarning`.

Two modes, the same statistics:

* ``"sample"``: :data:`SAMPLE_CHUNKS` chunks per variable, spread evenly over its chunk
  grid (deterministic), so the cost is a few chunk reads whatever the domain size. Run
  when cubes are opened for training (:func:`kgml_grid.train.pretrain`) and upscaling
  (:func:`kgml_grid.plan.make_plan`). A variable whose sampled chunks hold no finite
  value is read on, chunk by chunk, until one is found (unwritten Zarr chunks, the
  usual form of an empty layer, cost no I/O), so "all NaN" is never a sampling
  accident.
* ``"full"``: every chunk, one small statistics task per chunk (Dask, threads);
  ``kgml-grid catalog CAT --check-values``.

Refusals raise :class:`CubeValueError` (a :class:`~kgml_grid.cubes.CubeError`) naming
the source, layer, variable, the value and where it is (coordinates), and the fix.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from kgml_grid import schema
from kgml_grid.cubes import CubeError

__all__ = [
    "MAX_OUTSIDE_FRACTION",
    "MODEL_INPUTS",
    "SAMPLE_CHUNKS",
    "WIDE_MARGIN",
    "CubeValueError",
    "CubeValueWarning",
    "Finding",
    "ValueReport",
    "VariableStats",
    "catalog_sources",
    "check_dataset",
    "check_layers",
]

Mode = Literal["sample", "full"]

#: The stored variables the model's features are made of (what upscaling reads).
MODEL_INPUTS: tuple[str, ...] = (
    *(
        n
        for n in schema.FEATURES
        if schema.VARIABLES[n].resolution != schema.ResolutionClass.DERIVED
    ),
    "crop_type",
)
#: Chunks read per variable in the sampled check.
SAMPLE_CHUNKS = 4
#: Refuse when more than this fraction of the checked finite values is outside the valid range.
MAX_OUTSIDE_FRACTION = 1e-3
#: Refuse any value outside the valid range by more than this multiple of the range's width.
WIDE_MARGIN = 1.0
#: A degC variable whose finite values all lie in this interval is in kelvin.
KELVIN_RANGE = (100.0, 360.0)


class CubeValueError(CubeError):
    """A cube's values are impossible for its variable (checked before any compute)."""


class CubeValueWarning(UserWarning):
    """A few values of a cube lie (slightly) outside the valid range."""


@dataclass
class VariableStats:
    """Statistics of one variable over the checked chunks."""

    n: int = 0
    n_finite: int = 0
    n_low: int = 0
    n_high: int = 0
    n_wide: int = 0
    vmin: float = np.inf
    vmax: float = -np.inf
    worst: tuple[float, float, tuple[int, ...]] | None = None  # (excess, value, index)
    bad_codes: dict[int, tuple[int, tuple[int, ...]]] = field(
        default_factory=dict
    )  # code -> (count, index)
    chunks_checked: int = 0
    chunks_total: int = 0

    @property
    def n_outside(self) -> int:
        return self.n_low + self.n_high

    def merge(self, other: VariableStats) -> None:
        self.n += other.n
        self.n_finite += other.n_finite
        self.n_low += other.n_low
        self.n_high += other.n_high
        self.n_wide += other.n_wide
        self.vmin = min(self.vmin, other.vmin)
        self.vmax = max(self.vmax, other.vmax)
        if other.worst is not None and (self.worst is None or other.worst[0] > self.worst[0]):
            self.worst = other.worst
        for code, (count, idx) in other.bad_codes.items():
            c0, i0 = self.bad_codes.get(code, (0, idx))
            self.bad_codes[code] = (c0 + count, i0)
        self.chunks_checked += other.chunks_checked


@dataclass(frozen=True)
class Finding:
    """One problem found: ``severity`` ``'refuse'`` or ``'warn'``."""

    severity: Literal["refuse", "warn"]
    layer: str
    variable: str
    message: str


@dataclass
class ValueReport:
    """What a value check found, per variable and as findings."""

    mode: Mode
    stats: dict[tuple[str, str], VariableStats] = field(default_factory=dict)  # (layer, var)
    findings: list[Finding] = field(default_factory=list)

    @property
    def refusals(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "refuse"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warn"]

    def raise_or_warn(self) -> None:
        """Issue every warning (:class:`CubeValueWarning`), then raise the first refusal."""
        for f in self.warnings:
            warnings.warn(f.message, CubeValueWarning, stacklevel=3)
        bad = self.refusals
        if bad:
            more = f" (and {len(bad) - 1} more value problems)" if len(bad) > 1 else ""
            raise CubeValueError(bad[0].message + more)

    def table(self) -> str:
        """One line per checked variable (for ``kgml-grid catalog --check-values``)."""
        lines = [f"{'layer':<10} {'variable':<15} {'chunks':>9} {'values':>12} {'NaN %':>7} "
                 f"{'min':>10} {'max':>10} {'outside':>9}"]  # fmt: skip
        for (layer, var), s in self.stats.items():
            nan = 100.0 * (s.n - s.n_finite) / s.n if s.n else float("nan")
            vmin = f"{s.vmin:.4g}" if s.n_finite else "-"
            vmax = f"{s.vmax:.4g}" if s.n_finite else "-"
            outside = s.n_outside + sum(c for c, _ in s.bad_codes.values())
            lines.append(f"{layer:<10} {var:<15} {s.chunks_checked:>4}/{s.chunks_total:<4} {s.n:>12,} "
                         f"{nan:>7.2f} {vmin:>10} {vmax:>10} {outside:>9,}")  # fmt: skip
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# chunks
# --------------------------------------------------------------------------------------


def _chunk_bounds(da: xr.DataArray) -> list[list[tuple[int, int]]]:
    """Per dimension, the ``(start, stop)`` of each chunk: Dask's chunks, else the
    store's (``encoding['chunks']``), else one chunk."""
    if da.chunks is not None:
        sizes: Sequence[Sequence[int]] = da.chunks
    else:
        enc = da.encoding.get("chunks") or da.encoding.get("preferred_chunks")
        if isinstance(enc, Mapping):
            enc = tuple(enc.get(d, n) for d, n in da.sizes.items())
        if not enc or len(enc) != da.ndim:
            enc = da.shape
        sizes = [
            [min(c, n - s) for s in range(0, n, max(int(c), 1))]
            for c, n in zip(enc, da.shape, strict=True)
        ]
    out = []
    for dim_sizes in sizes:
        b, s = [], 0
        for c in dim_sizes:
            b.append((s, s + int(c)))
            s += int(c)
        out.append(b)
    return out


def _sample_indices(grid: Sequence[int], k: int) -> list[tuple[int, ...]]:
    """``k`` chunk indices spread evenly over the flattened chunk grid (first and last
    included), deterministic."""
    n = int(np.prod(grid)) if grid else 1
    flat = range(n) if n <= k else sorted({round(float(i)) for i in np.linspace(0, n - 1, k)})
    return [tuple(int(i) for i in np.unravel_index(f, grid)) for f in flat] if grid else [()]


def _stats(
    a: Any, lo: float, hi: float, flags: tuple[int, ...] | None, offset: tuple[int, ...]
) -> VariableStats:
    """Statistics of one chunk (``offset``: its first index in the variable)."""
    a = np.asarray(a)
    s = VariableStats(n=int(a.size), chunks_checked=1)
    if a.size == 0:
        return s
    if flags is not None:
        bad = ~np.isin(a, np.asarray(flags))
        if np.issubdtype(a.dtype, np.floating):
            bad &= ~np.isnan(a)
            s.n_finite = int(np.isfinite(a).sum())
        else:
            s.n_finite = int(a.size)
        for code in np.unique(a[bad])[:8]:
            where = np.unravel_index(int(np.argmax(a == code)), a.shape)
            s.bad_codes[int(code)] = (
                int((a == code).sum()),
                tuple(int(o + w) for o, w in zip(offset, where, strict=True)),
            )
        if s.n_finite:
            valid = a[np.isfinite(a)] if np.issubdtype(a.dtype, np.floating) else a
            s.vmin, s.vmax = float(valid.min()), float(valid.max())
        return s
    fin = np.isfinite(a)
    s.n_finite = int(fin.sum())
    if s.n_finite:
        af = a[fin]
        s.vmin, s.vmax = float(af.min()), float(af.max())
    tol = 1e-6 * max(abs(lo), abs(hi), 1.0)  # float32 rounding of the bounds themselves
    with np.errstate(invalid="ignore"):
        low = a < lo - tol
        high = a > hi + tol
    s.n_low, s.n_high = int(low.sum()), int(high.sum())
    if s.n_low or s.n_high:
        with np.errstate(invalid="ignore"):
            excess = np.where(
                low, lo - a.astype("float64"), np.where(high, a.astype("float64") - hi, 0.0)
            )
        s.n_wide = int((excess > WIDE_MARGIN * (hi - lo)).sum())
        i = int(np.argmax(excess))
        where = np.unravel_index(i, a.shape)
        s.worst = (
            float(excess.flat[i]),
            float(a.flat[i]),
            tuple(int(o + w) for o, w in zip(offset, where, strict=True)),
        )
    return s


def _read(da: xr.DataArray, bounds: Sequence[tuple[int, int]]) -> Any:
    """One chunk of ``da``: a Dask array (read when computed) or a numpy view."""
    sl = tuple(slice(a, b) for a, b in bounds)
    return da.data[sl]


# --------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------


def _where(ds: xr.Dataset, dims: Sequence[Hashable], index: Sequence[int]) -> str:
    parts = []
    for d, i in zip(dims, index, strict=True):
        if d in ds.coords:
            v = ds[d].values[i]
            if np.issubdtype(np.asarray(v).dtype, np.datetime64):
                v = pd.Timestamp(v).date()
            elif isinstance(v, np.floating):
                v = f"{float(v):.6g}"
            parts.append(f"{d}={v}")
        else:
            parts.append(f"{d}[{i}]")
    return ", ".join(parts)


def _dtype_finding(da: xr.DataArray, var: schema.Variable, layer: str, head: str) -> Finding | None:
    dt = np.dtype(da.dtype)
    if var.flag_values is not None:
        if not np.issubdtype(dt, np.integer):
            return Finding("refuse", layer, var.name,
                           f"{head} is stored as {dt}; a categorical variable (codes "
                           f"{list(var.flag_values)}) must be an integer type (int8): rebuild the cube")  # fmt: skip
        return None
    if not np.issubdtype(dt, np.floating):
        return Finding("refuse", layer, var.name,
                       f"{head} is stored as {dt}; a continuous variable must be floating point "
                       f"({var.dtype}), so that missing values can be NaN and values are not "
                       "truncated: rebuild the cube with float32 (or CF scale_factor/add_offset packing)")  # fmt: skip
    return None


def _first_finite(
    da: xr.DataArray, bounds: list[list[tuple[int, int]]], skip: set[tuple[int, ...]]
) -> bool:
    """Whether any chunk not in ``skip`` holds a finite value (stops at the first)."""
    import itertools

    for idx in itertools.product(*(range(len(b)) for b in bounds)):
        if idx in skip:
            continue
        a = np.asarray(_read(da, [b[i] for b, i in zip(bounds, idx, strict=True)]))
        if a.size and np.isfinite(a).any():
            return True
    return False


def _findings(ds: xr.Dataset, var: schema.Variable, layer: str, head: str, s: VariableStats, mode: Mode,
              has_finite: bool) -> list[Finding]:  # fmt: skip
    da = ds[var.name]
    lo, hi = (float(b) for b in var.valid_range)
    checked = (f"{s.n:,} values in {s.chunks_checked} of {s.chunks_total} chunks"
               + (" (sampled; `kgml-grid catalog CATALOG --check-values` checks every chunk)"
                  if mode == "sample" and s.chunks_checked < s.chunks_total else ""))  # fmt: skip
    out: list[Finding] = []
    if not has_finite:
        return [Finding("refuse", layer, var.name,
                        f"{head} has no finite value: all {int(np.prod(da.shape)):,} values are "
                        "missing (NaN); the layer holds no data: rebuild or re-ingest it")]  # fmt: skip
    if var.flag_values is not None:
        if s.bad_codes:
            code, (count, idx) = next(iter(sorted(s.bad_codes.items(), key=lambda kv: -kv[1][0])))
            legend = ", ".join(
                f"{c} {m}"
                for c, m in zip(var.flag_values, (var.flag_meanings or "").split(), strict=False)
            )
            out.append(Finding("refuse", layer, var.name,
                               f"{head} has codes {sorted(s.bad_codes)} outside its legend ({legend}): "
                               f"{count:,} values of code {code}, e.g. at {_where(ds, da.dims, idx)}, "
                               f"among {checked}; map the source classes onto the legend (kgml_grid.ingest.cdl)"))  # fmt: skip
        return out
    units = var.units
    kelvin = (
        var.units == "degC"
        and s.n_finite
        and KELVIN_RANGE[0] <= s.vmin
        and s.vmax <= KELVIN_RANGE[1]
    )
    if kelvin:
        return [Finding("refuse", layer, var.name,
                        f"{head} has values {s.vmin:.5g}..{s.vmax:.5g}, labelled {da.attrs.get('units')!r}: "
                        f"these are kelvin, not degC (valid {lo:g}..{hi:g} degC); convert "
                        "(value - 273.15) and rebuild the cube")]  # fmt: skip
    if not s.n_outside:
        return out
    frac = s.n_outside / max(s.n_finite, 1)
    assert s.worst is not None
    _, value, idx = s.worst
    what = (f"{s.n_outside:,} of {s.n_finite:,} finite values ({100 * frac:.3g} %) lie outside the valid "
            f"range {lo:g}..{hi:g} {units} ({s.n_low:,} below, {s.n_high:,} above; min {s.vmin:.5g}, "
            f"max {s.vmax:.5g}); the farthest is {value:.5g} at {_where(ds, da.dims, idx)}; "
            f"checked {checked}")  # fmt: skip
    if s.n_wide or frac > MAX_OUTSIDE_FRACTION:
        why = (f"{s.n_wide:,} beyond it by more than its width" if s.n_wide
               else f"more than {100 * MAX_OUTSIDE_FRACTION:g} % are outside")  # fmt: skip
        out.append(
            Finding(
                "refuse",
                layer,
                var.name,
                f"{head}: {what}; {why}: check the source's units and scale factor and rebuild the cube",
            )
        )
    else:
        out.append(Finding("warn", layer, var.name,
                           f"{head}: {what}; accepted (at most {100 * MAX_OUTSIDE_FRACTION:g} % may be "
                           "slightly outside), but check the source"))  # fmt: skip
    return out


def check_dataset(
    ds: xr.Dataset,
    layer: str,
    *,
    source: str = "<dataset>",
    mode: Mode = "sample",
    variables: Iterable[str] | None = None,
    sample_chunks: int = SAMPLE_CHUNKS,
) -> ValueReport:
    """Check the values of one layer (see the module docstring); nothing is raised.

    Parameters
    ----------
    ds : Dataset
        The layer, as opened (Dask-backed or in memory); already metadata-validated.
    layer : str
        Its layer name in :data:`kgml_grid.schema.LAYERS`.
    source : str
        What to name in messages (the store path, the catalog entry).
    mode : {'sample', 'full'}
    variables : iterable of str, optional
        Check only these (those the consumer reads); default every schema variable the
        layer holds.
    sample_chunks : int
        Chunks per variable in the sampled mode.

    Returns
    -------
    ValueReport
        Call :meth:`ValueReport.raise_or_warn` to act on it.
    """
    return check_layers({layer: ds}, sources={layer: source}, mode=mode, variables=variables,
                        sample_chunks=sample_chunks)  # fmt: skip


def check_layers(
    layers: Mapping[str, xr.Dataset],
    *,
    sources: Mapping[str, str] | None = None,
    mode: Mode = "sample",
    variables: Iterable[str] | None = None,
    sample_chunks: int = SAMPLE_CHUNKS,
) -> ValueReport:
    """Check the values of several layers with one Dask compute (see :func:`check_dataset`)."""
    import dask

    if mode not in ("sample", "full"):
        raise ValueError(f"value check mode {mode!r}: use 'sample' or 'full'")
    wanted = None if variables is None else set(variables)
    sources = dict(sources or {})
    report = ValueReport(mode)
    tasks: dict[tuple[str, str], list[Any]] = {}
    plans: dict[tuple[str, str], tuple[list[list[tuple[int, int]]], set[tuple[int, ...]]]] = {}
    heads: dict[tuple[str, str], str] = {}
    for layer, ds in layers.items():
        spec = schema.LAYERS[layer]
        names = [n for n in (*spec.required, *spec.optional) if n in ds.data_vars]
        for name in names:
            if wanted is not None and name not in wanted:
                continue
            var = schema.VARIABLES[name]
            da = ds[name]
            head = f"{sources.get(layer, layer)} (layer {layer!r}): variable {name!r}"
            key = (layer, name)
            heads[key] = head
            bad_dtype = _dtype_finding(da, var, layer, head)
            if bad_dtype is not None:
                report.findings.append(bad_dtype)
                continue  # values of the wrong type say nothing more
            bounds = _chunk_bounds(da)
            grid = [len(b) for b in bounds]
            if mode == "full":
                import itertools

                idxs = list(itertools.product(*(range(g) for g in grid)))
            else:
                idxs = _sample_indices(grid, sample_chunks)
            lo, hi = (float(b) for b in var.valid_range)
            tasks[key] = []
            for idx in idxs:
                bb = [b[i] for b, i in zip(bounds, idx, strict=True)]
                tasks[key].append(dask.delayed(_stats)(_read(da, bb), lo, hi, var.flag_values,
                                                       tuple(a for a, _ in bb)))  # fmt: skip
            plans[key] = (bounds, set(idxs))
            report.stats[key] = VariableStats(chunks_total=int(np.prod(grid)) if grid else 1)
    # read in this process with threads, also when a distributed Client is the default
    with dask.config.set(scheduler="threads"):
        if tasks:
            (computed,) = dask.compute(tasks)
            for key, parts in computed.items():
                for part in parts:
                    report.stats[key].merge(part)
        for key, s in report.stats.items():
            layer, name = key
            ds = layers[layer]
            bounds, done = plans[key]
            has_finite = s.n_finite > 0 or (
                mode == "sample" and _first_finite(ds[name], bounds, done)
            )
            report.findings.extend(
                _findings(ds, schema.VARIABLES[name], layer, heads[key], s, mode, has_finite)
            )
    return report


def catalog_sources(cat: Any) -> dict[str, str]:
    """``layer -> "CATALOG:ENTRY (STORE)"`` for messages, the store's path resolved."""
    out = {}
    for e in cat.entries.values():
        path = re.sub(r"\{\{\s*CATALOG_DIR\s*\}\}", str(cat.path.parent), e.urlpath)
        out[e.layer] = f"{cat.path}:{e.name} ({path})"
    return out
