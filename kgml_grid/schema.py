"""The variable schema: the single source of truth for names, units and roles.

Every cube, the FLUXNET reader, the model's feature assembly and every checkpoint
refer to the variables defined here. Consumers check data against this schema and
refuse a mismatch with a message that names the variable.

Units are written so that udunits/CF can parse them: carbon fluxes are
``g m-2 d-1`` (grams *of carbon*: the ``standard_name`` says ``..._expressed_as_carbon``),
which is what the literature writes as gC m-2 d-1.

FLUXNET mapping
---------------
The default feature set (:data:`FEATURES`) is limited to what both the grid and a
FLUXNET2015 DD file can supply. DD files carry the daily *mean* air temperature (no
max/min), no LAI, and soil water may be missing entirely (it is, in the US-Ne1 file).
LAI and soil moisture are *optional additions* chosen at training time
(:func:`feature_set`, ``--features +lai,+soil_moisture``); each comes with an
availability flag (see *Feature sets* below). The mapping, in one place
(:data:`FLUXNET_COLUMNS`):

=================  ===================  ===================  ==============================
schema variable    FLUXNET DD column    DD units             conversion
=================  ===================  ===================  ==============================
tair               TA_F                 deg C                none
swrad              SW_IN_F              W m-2 (daily mean)   x 0.0864 -> MJ m-2 d-1
vpd                VPD_F                hPa                  none
precip             P_F                  mm d-1               none
gpp_sat            GPP_NT_VUT_REF       gC m-2 d-1           none (tower-partitioned GPP
                                                             stands in for satellite GPP)
soil_moisture      SWC_F_MDS_1          %                    x 0.01 -> m3 m-3 (optional)
nee                NEE_VUT_REF          gC m-2 d-1           none (positive = source)
reco               RECO_NT_VUT_REF      gC m-2 d-1           none
gpp                GPP_NT_VUT_REF       gC m-2 d-1           none
=================  ===================  ===================  ==============================

Static soil properties and the crop type of a tower come from its site-metadata
sidecar (see :mod:`kgml_grid.sites`); day-of-year features are derived from time.

Feature sets
------------
A model's features are :data:`FEATURES` plus any of the additions of
:data:`FEATURE_ADDITIONS`, appended in that table's order (so the default features
keep their positions in every set):

==============  ========================================  ===================================
addition        features appended                         sources
==============  ========================================  ===================================
``+lai``        ``lai``, ``lai_available``                grid: the satellite cube's ``lai``;
                                                          tower: the satellite cube at the
                                                          tower's pixel, when one covers it
``+soil_        ``soil_moisture``,                        grid: the satellite cube's
moisture``      ``soil_moisture_available``               ``soil_moisture``; tower:
                                                          ``SWC_F_MDS_1`` (% x 0.01) when it
                                                          has values, else the satellite cube
                                                          at the tower's pixel
==============  ========================================  ===================================

``<name>_available`` is 1 from the first day a value of ``<name>`` was seen (later
gaps are filled with the last value, causally), 0 before it and wherever the source has
none at all (the value is then 0). Pre-training hides each addition from a share of its
windows (``TrainConfig.feature_dropout``), so the model learns to run without it: a
tower that lacks LAI or soil water is then run with the flag at 0, explicitly, never
with a silent 0 value. The checkpoint stores its feature list (and the set's name,
:func:`feature_set_name`); every consumer checks its data against it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class Role(StrEnum):
    """What a variable is for."""

    FEATURE = "feature"  # model input
    TARGET = "target"  # simulated/observed truth the model learns
    OUTPUT = "output"  # what the upscaling writes
    AUX = "aux"  # carried in a cube, not used by the model


class ResolutionClass(StrEnum):
    """Which cube a variable lives in (DESIGN section 3)."""

    WEATHER = "weather"  # coarse grid, (time, y, x)
    SATELLITE = "satellite"  # fine grid, (time, y, x)
    SOIL = "soil"  # fine grid, (y, x)
    CROP = "crop"  # fine grid, (year, y, x)
    TRUTH = "truth"  # fine grid, (time, y, x) daily and (year, y, x) yearly
    DERIVED = "derived"  # computed from time or other variables, never stored


DIMS: Mapping[ResolutionClass, tuple[str, ...]] = MappingProxyType(
    {
        ResolutionClass.WEATHER: ("time", "y", "x"),
        ResolutionClass.SATELLITE: ("time", "y", "x"),
        ResolutionClass.SOIL: ("y", "x"),
        ResolutionClass.CROP: ("year", "y", "x"),
        ResolutionClass.TRUTH: ("time", "y", "x"),
    }
)


@dataclass(frozen=True)
class Variable:
    """One variable of the schema.

    Attributes
    ----------
    name : str
        Name in cubes, checkpoints and the FLUXNET reader's output.
    units : str
        Canonical CF/udunits units string.
    long_name : str
        Human-readable description.
    resolution : ResolutionClass
        The cube the variable belongs to.
    roles : tuple of Role
        What the variable is used for.
    valid_range : tuple of float
        Physically plausible closed interval; values outside are refused.
    standard_name : str or None
        CF standard name, where one exists.
    unit_aliases : tuple of str
        Other spellings of the same units accepted on input.
    yearly : bool
        True for variables with a ``year`` dimension instead of ``time``.
    dtype : str
        Storage dtype in cubes.
    """

    name: str
    units: str
    long_name: str
    resolution: ResolutionClass
    roles: tuple[Role, ...]
    valid_range: tuple[float, float]
    standard_name: str | None = None
    unit_aliases: tuple[str, ...] = ()
    yearly: bool = False
    dtype: str = "float32"
    flag_values: tuple[int, ...] | None = None
    flag_meanings: str | None = None
    comment: str | None = None

    @property
    def dims(self) -> tuple[str, ...]:
        if self.yearly:
            return ("year", "y", "x")
        return DIMS[self.resolution]

    def accepts_units(self, units: str | None) -> bool:
        """Whether ``units`` spells this variable's units."""
        if units is None:
            return False
        norm = " ".join(str(units).split())
        return norm == self.units or norm in self.unit_aliases

    def cf_attrs(self) -> dict[str, object]:
        """CF attributes for this variable in a cube."""
        attrs: dict[str, object] = {"units": self.units, "long_name": self.long_name}
        if self.standard_name:
            attrs["standard_name"] = self.standard_name
        if self.flag_values is not None:
            attrs["flag_values"] = list(self.flag_values)
            attrs["flag_meanings"] = self.flag_meanings or ""
        else:
            attrs["valid_min"] = float(self.valid_range[0])
            attrs["valid_max"] = float(self.valid_range[1])
        if self.comment:
            attrs["comment"] = self.comment
        return attrs


_CFLUX = ("gC m-2 d-1", "gC m-2 day-1", "g C m-2 d-1", "gC/m2/d", "g m-2 day-1")
_F, _T, _O, _A = Role.FEATURE, Role.TARGET, Role.OUTPUT, Role.AUX
_W, _S, _SO, _C, _TR, _D = (
    ResolutionClass.WEATHER,
    ResolutionClass.SATELLITE,
    ResolutionClass.SOIL,
    ResolutionClass.CROP,
    ResolutionClass.TRUTH,
    ResolutionClass.DERIVED,
)

_VARIABLES: tuple[Variable, ...] = (
    # --- weather (NLDAS-2 / gridMET / Daymet), coarse grid -------------------------
    Variable(
        "tair",
        "degC",
        "daily mean air temperature at 2 m",
        _W,
        (_F,),
        (-60.0, 60.0),
        "air_temperature",
        ("deg C", "degree_Celsius", "celsius", "°C"),
    ),
    Variable(
        "swrad",
        "MJ m-2 d-1",
        "daily incoming shortwave radiation",
        _W,
        (_F,),
        (0.0, 45.0),
        "surface_downwelling_shortwave_flux_in_air",
        ("MJ m-2 day-1", "MJ/m2/d"),
    ),
    Variable(
        "vpd",
        "hPa",
        "daily mean vapour pressure deficit",
        _W,
        (_F,),
        (0.0, 120.0),
        "water_vapor_saturation_deficit_in_air",
        ("mbar", "hectopascal"),
    ),
    Variable(
        "precip",
        "mm d-1",
        "daily precipitation",
        _W,
        (_F,),
        (0.0, 600.0),
        "lwe_precipitation_rate",
        ("mm day-1", "mm/d", "mm/day"),
    ),
    # --- satellite (SLOPE GPP, GLASS/MODIS LAI, SMAP), fine grid ---------------------
    Variable(
        "gpp_sat",
        "g m-2 d-1",
        "satellite gross primary productivity (noisy, gappy)",
        _S,
        (_F,),
        (0.0, 60.0),
        "gross_primary_productivity_of_biomass_expressed_as_carbon",
        _CFLUX,
    ),
    Variable(
        "lai",
        "1",
        "leaf area index (satellite)",
        _S,
        (_F, _A),
        (0.0, 12.0),
        "leaf_area_index",
        ("m2 m-2", "m2/m2"),
    ),
    Variable(
        "soil_moisture",
        "m3 m-3",
        "volumetric soil water content, root zone (satellite)",
        _S,
        (_F, _A),
        (0.0, 0.7),
        "volume_fraction_of_condensed_water_in_soil",
        ("m3/m3", "1"),
    ),
    # --- soil (gSSURGO), fine grid, static ------------------------------------------
    Variable(
        "bulk_density",
        "g cm-3",
        "soil bulk density, 0-30 cm",
        _SO,
        (_F,),
        (0.5, 2.2),
        None,
        ("g/cm3",),
    ),
    Variable("sand", "%", "sand content, 0-30 cm", _SO, (_F,), (0.0, 100.0), None, ("percent",)),
    Variable("silt", "%", "silt content, 0-30 cm", _SO, (_A,), (0.0, 100.0), None, ("percent",)),
    Variable("clay", "%", "clay content, 0-30 cm", _SO, (_F,), (0.0, 100.0), None, ("percent",)),
    Variable(
        "field_capacity",
        "m3 m-3",
        "volumetric water content at field capacity (-33 kPa)",
        _SO,
        (_F,),
        (0.02, 0.6),
        None,
        ("m3/m3",),
    ),
    Variable(
        "wilting_point",
        "m3 m-3",
        "volumetric water content at wilting point (-1500 kPa)",
        _SO,
        (_F,),
        (0.005, 0.45),
        None,
        ("m3/m3",),
    ),
    Variable(
        "ksat",
        "um s-1",
        "saturated hydraulic conductivity",
        _SO,
        (_F,),
        (0.01, 700.0),
        None,
        ("µm s-1", "micrometer s-1", "um/s"),
    ),
    Variable(
        "soc",
        "kg m-2",
        "soil organic carbon stock, 0-30 cm",
        _SO,
        (_F,),
        (0.1, 60.0),
        None,
        ("kg/m2", "kgC m-2"),
    ),
    Variable("ph", "1", "soil pH in water", _SO, (_F,), (3.0, 10.5), None, ()),
    Variable(
        "cec",
        "cmol kg-1",
        "cation exchange capacity",
        _SO,
        (_F,),
        (0.5, 150.0),
        None,
        ("meq/100g", "cmol/kg"),
    ),
    # --- crop type (USDA CDL), fine grid, per year ------------------------------------
    Variable(
        "crop_type",
        "1",
        "crop type of the year (from CDL classes)",
        _C,
        (_F,),
        (0.0, 2.0),
        None,
        (),
        yearly=True,
        dtype="int8",
        flag_values=(0, 1, 2),
        flag_meanings="other corn soybean",
    ),
    # --- truth / outputs, fine grid ---------------------------------------------------
    Variable(
        "gpp",
        "g m-2 d-1",
        "gross primary productivity (truth)",
        _TR,
        (_A,),
        (0.0, 60.0),
        "gross_primary_productivity_of_biomass_expressed_as_carbon",
        _CFLUX,
    ),
    Variable(
        "ra",
        "g m-2 d-1",
        "autotrophic respiration",
        _TR,
        (_T, _O),
        (0.0, 60.0),
        "autotrophic_respiration_carbon_flux",
        _CFLUX,
    ),
    Variable(
        "rh",
        "g m-2 d-1",
        "heterotrophic respiration",
        _TR,
        (_T, _O),
        (0.0, 40.0),
        "heterotrophic_respiration_carbon_flux",
        _CFLUX,
    ),
    Variable(
        "reco",
        "g m-2 d-1",
        "ecosystem respiration (Ra + Rh)",
        _TR,
        (_T, _O),
        (0.0, 80.0),
        None,
        _CFLUX,
    ),
    Variable(
        "nee",
        "g m-2 d-1",
        "net ecosystem exchange (Reco - GPP; positive = source)",
        _TR,
        (_T, _O),
        (-60.0, 60.0),
        None,
        _CFLUX,
        comment="positive values are a flux from the surface to the atmosphere (FLUXNET sign)",
    ),
    Variable(
        "yield",
        "g m-2",
        "harvested grain carbon of the season",
        _TR,
        (_T, _O),
        (0.0, 2000.0),
        None,
        ("gC m-2", "g C m-2"),
        yearly=True,
    ),
    # --- derived, never stored ------------------------------------------------------------
    Variable("is_corn", "1", "1 where the year's crop is corn", _D, (_F,), (0.0, 1.0)),
    Variable("is_soybean", "1", "1 where the year's crop is soybean", _D, (_F,), (0.0, 1.0)),
    Variable("doy_sin", "1", "sin(2 pi doy / 365.25)", _D, (_F,), (-1.0, 1.0)),
    Variable("doy_cos", "1", "cos(2 pi doy / 365.25)", _D, (_F,), (-1.0, 1.0)),
    Variable(
        "lai_available",
        "1",
        "1 once a LAI value has been seen, 0 before and where the source has none",
        _D,
        (_F,),
        (0.0, 1.0),
    ),
    Variable(
        "soil_moisture_available",
        "1",
        "1 once a soil moisture value has been seen, 0 before and where the source has none",
        _D,
        (_F,),
        (0.0, 1.0),
    ),
)

VARIABLES: Mapping[str, Variable] = MappingProxyType({v.name: v for v in _VARIABLES})

#: The model's input features, in order. Changing this order invalidates checkpoints.
FEATURES: tuple[str, ...] = (
    "tair", "swrad", "vpd", "precip",
    "gpp_sat",
    "bulk_density", "sand", "clay", "field_capacity", "wilting_point", "ksat", "soc", "ph", "cec",
    "is_corn", "is_soybean",
    "doy_sin", "doy_cos",
)  # fmt: skip

#: Optional feature additions (``--features +NAME``): the features each appends, in order.
#: Additions are appended in this table's order whatever order they are asked in.
FEATURE_ADDITIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "lai": ("lai", "lai_available"),
        "soil_moisture": ("soil_moisture", "soil_moisture_available"),
    }
)

#: Name of the default feature set.
DEFAULT_FEATURE_SET = "default"

#: Daily fluxes the model predicts, in order.
DAILY_OUTPUTS: tuple[str, ...] = ("ra", "rh", "reco", "nee")
#: Yearly outputs.
YEARLY_OUTPUTS: tuple[str, ...] = ("yield",)

CROP_CODES: Mapping[int, str] = MappingProxyType({0: "other", 1: "corn", 2: "soybean"})
CROP_NAMES: Mapping[str, int] = MappingProxyType({v: k for k, v in CROP_CODES.items()})

#: Conversion from W m-2 (daily mean) to MJ m-2 d-1.
W_M2_TO_MJ_M2_D = 0.0864


@dataclass(frozen=True)
class FluxnetColumn:
    """How one FLUXNET DD column maps onto a schema variable."""

    column: str
    variable: str
    scale: float = 1.0
    required: bool = True
    qc: str | None = None
    fluxnet_units: str = ""


#: FLUXNET2015 DD column -> schema variable, the one place for the mapping.
FLUXNET_COLUMNS: tuple[FluxnetColumn, ...] = (
    FluxnetColumn("TA_F", "tair", 1.0, True, "TA_F_QC", "deg C"),
    FluxnetColumn("SW_IN_F", "swrad", W_M2_TO_MJ_M2_D, True, "SW_IN_F_QC", "W m-2"),
    FluxnetColumn("VPD_F", "vpd", 1.0, True, "VPD_F_QC", "hPa"),
    FluxnetColumn("P_F", "precip", 1.0, True, "P_F_QC", "mm d-1"),
    FluxnetColumn("GPP_NT_VUT_REF", "gpp_sat", 1.0, True, "NEE_VUT_REF_QC", "gC m-2 d-1"),
    FluxnetColumn("SWC_F_MDS_1", "soil_moisture", 0.01, False, "SWC_F_MDS_1_QC", "%"),
    FluxnetColumn("NEE_VUT_REF", "nee", 1.0, True, "NEE_VUT_REF_QC", "gC m-2 d-1"),
    FluxnetColumn("RECO_NT_VUT_REF", "reco", 1.0, True, "NEE_VUT_REF_QC", "gC m-2 d-1"),
    FluxnetColumn("GPP_NT_VUT_REF", "gpp", 1.0, True, "NEE_VUT_REF_QC", "gC m-2 d-1"),
)

#: Soil properties a site-metadata sidecar must give (the soil features).
SITE_SOIL_PROPERTIES: tuple[str, ...] = tuple(
    n for n in FEATURES if VARIABLES[n].resolution == ResolutionClass.SOIL
)


@dataclass(frozen=True)
class Layer:
    """One cube of the catalog and the variables it must hold."""

    name: str
    resolution: ResolutionClass
    required: tuple[str, ...]
    optional: tuple[str, ...] = field(default=())


def variables_of(resolution: ResolutionClass) -> tuple[str, ...]:
    """Names of the stored variables of one resolution class, in schema order."""
    return tuple(v.name for v in _VARIABLES if v.resolution == resolution)


LAYERS: Mapping[str, Layer] = MappingProxyType(
    {
        "weather": Layer("weather", _W, variables_of(_W)),
        "satellite": Layer("satellite", _S, ("gpp_sat",), ("lai", "soil_moisture")),
        "soil": Layer("soil", _SO, SITE_SOIL_PROPERTIES, ("silt",)),
        "crop": Layer("crop", _C, ("crop_type",)),
        "truth": Layer("truth", _TR, ("gpp", "ra", "rh", "reco", "nee", "yield")),
    }
)


def get(name: str) -> Variable:
    """Look up a variable, with an error that lists the known names."""
    try:
        return VARIABLES[name]
    except KeyError:
        raise KeyError(
            f"unknown variable {name!r}; the schema knows: {', '.join(VARIABLES)}"
        ) from None


def feature_units(features: Iterable[str] = FEATURES) -> dict[str, str]:
    """Units of each feature, as stored in checkpoints."""
    return {n: get(n).units for n in features}


def _feature_set_help() -> str:
    known = ", ".join(f"+{a}" for a in FEATURE_ADDITIONS)
    return (
        f"write {DEFAULT_FEATURE_SET!r} or additions such as +lai,+soil_moisture (known: {known})"
    )


def feature_set(spec: str | Iterable[str] | None = None) -> tuple[str, ...]:
    """The feature names of a feature-set specification, in model order.

    Parameters
    ----------
    spec : str or iterable of str, optional
        ``"default"`` (or None, or ``""``): :data:`FEATURES`. Otherwise additions of
        :data:`FEATURE_ADDITIONS` separated by commas, each written ``+name``, optionally
        after ``default`` (``"+lai"``, ``"default,+lai,+soil_moisture"``), or an iterable
        of addition names.

    Returns
    -------
    tuple of str
        :data:`FEATURES` followed by the additions' features in the table's order.

    Raises
    ------
    ValueError
        For an unknown or repeated addition, naming it and the known ones.

    Examples
    --------
    >>> feature_set("+soil_moisture,+lai")[-4:]
    ('lai', 'lai_available', 'soil_moisture', 'soil_moisture_available')
    """
    if spec is None:
        return FEATURES
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        names = []
        for i, part in enumerate(parts):
            if part == DEFAULT_FEATURE_SET and i == 0:
                continue
            if not part.startswith("+"):
                raise ValueError(
                    f"--features {spec!r}: {part!r} is not an addition; {_feature_set_help()}"
                )
            names.append(part[1:].strip())
    else:
        names = [str(n).lstrip("+") for n in spec]
    seen: set[str] = set()
    for name in names:
        if name not in FEATURE_ADDITIONS:
            raise ValueError(
                f"--features {spec!r}: unknown addition '+{name}'; {_feature_set_help()}"
            )
        if name in seen:
            raise ValueError(f"--features {spec!r}: '+{name}' is given twice")
        seen.add(name)
    out = list(FEATURES)
    for name, added in FEATURE_ADDITIONS.items():
        if name in seen:
            out.extend(added)
    return tuple(out)


def feature_additions(features: Iterable[str]) -> tuple[str, ...]:
    """Names of the additions (``lai``, ``soil_moisture``) whose value feature is in ``features``."""
    fs = set(features)
    return tuple(a for a, added in FEATURE_ADDITIONS.items() if added[0] in fs)


def feature_set_name(features: Iterable[str]) -> str:
    """``"default"`` or ``"default+lai+soil_moisture"``: how a feature list is written."""
    return DEFAULT_FEATURE_SET + "".join(f"+{a}" for a in feature_additions(features))


def check_features(
    features: Iterable[str], units: Mapping[str, str], *, source: str = "checkpoint"
) -> None:
    """Refuse a feature list or units that are not one of this schema's feature sets.

    The list must be :data:`FEATURES` followed by the features of some additions of
    :data:`FEATURE_ADDITIONS` (see :func:`feature_set`).

    Parameters
    ----------
    features : iterable of str
        Feature names in the order ``source`` was built with.
    units : mapping
        Units per feature in ``source``.
    source : str
        What is being checked, for the error message (a file path, say).

    Raises
    ------
    ValueError
        Naming the first differing feature or unit.
    """
    features = tuple(features)
    optional = {f for added in FEATURE_ADDITIONS.values() for f in added}
    missing = [f for f in FEATURES if f not in features]
    extra = [f for f in features if f not in FEATURES and f not in optional]
    if missing or extra:
        raise ValueError(
            f"{source}: features differ from the schema: missing {missing}, unexpected {extra}"
        )
    expected = feature_set(feature_additions(features))
    if features != expected:
        lacking = [f for f in expected if f not in features]
        if lacking:
            raise ValueError(
                f"{source}: feature set {feature_set_name(features)!r} lacks {lacking} "
                "(each addition comes with its availability flag)"
            )
        stray = [f for f in features if f not in expected]
        if stray:
            raise ValueError(
                f"{source}: features {stray} belong to no addition present "
                f"({feature_set_name(features)!r})"
            )
        first = next(i for i, (a, b) in enumerate(zip(features, expected, strict=True)) if a != b)
        raise ValueError(
            f"{source}: feature order differs from the schema at position {first}: "
            f"{features[first]!r} where {expected[first]!r} was expected"
        )
    for name in features:
        want = get(name)
        got = units.get(name)
        if not want.accepts_units(got):
            raise ValueError(
                f"{source}: feature {name!r} has units {got!r}, expected {want.units!r}"
            )


def doy_features(dayofyear: Any) -> tuple[Any, Any]:
    """The cyclic day-of-year encoding used as features (works on arrays)."""
    import numpy as np

    angle = 2.0 * math.pi * np.asarray(dayofyear, dtype="float64") / 365.25
    return np.sin(angle), np.cos(angle)
