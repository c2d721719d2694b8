"""Checkpoints: safetensors weights plus a JSON sidecar. Never pickle.

A checkpoint is a directory holding

* ``model.safetensors``: the model's ``state_dict`` (safetensors, no code, no pickle);
* ``model.json``: format version, architecture (:class:`~kgml_grid.model.ModelConfig`),
  feature names and order (and the feature set's name, e.g. ``default+lai``), units, normalization statistics (mean, std per feature and
  per target), target names, and provenance (creation time, package and torch
  versions, sha256 of the weights file, whatever the trainer adds).

Both files are written under temporary names and renamed into place, the JSON last
(and any previous JSON removed first), so a directory whose ``model.json`` exists is a
complete checkpoint. :func:`load_checkpoint` refuses, with a :class:`ValueError`
naming the file and the difference, missing files, bad JSON, sidecar entries of the
wrong type (``features`` not a list, ``norm`` or ``targets`` not an object...), an
unknown format version, a weights file whose sha256 differs from the sidecar's, an
architecture whose weights would not fit the weights file (counted on the ``meta``
device before anything is allocated), NaN or infinite weights (naming the tensor), and
feature names, order or units that differ from what the caller expects.

Devices are resolved by :func:`resolve_device`; nothing here initialises CUDA at
import time.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from kgml_grid import schema
from kgml_grid.model import DAILY_TARGETS, YIELD_TARGET, ModelConfig, build_model

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "JSON_NAME",
    "WEIGHTS_NAME",
    "Checkpoint",
    "Normalizer",
    "checkpoint_hash",
    "fit_norm",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
]

FORMAT = "kgml_grid-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
JSON_NAME = "model.json"

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)


# --------------------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_threads(n: int | None) -> Any:
    """Use ``n`` torch intra-op threads inside the block, then restore the previous count.

    ``None`` or 0 leaves torch's setting alone. Restoring matters in Jupyter, where a
    training call must not change the threads of everything run after it.
    """
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_spec(device: str | torch.device, *, option: str = "--device") -> str:
    """``device`` normalised (``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'``), checked for its
    spelling only: nothing is initialised, so the client can check a device meant for the
    workers before any cluster starts.

    Raises
    ------
    ValueError
        For another spelling (``'tpu'``, ``'gpu'``), naming the option and the choices.
    """
    spec = str(device).strip().lower()
    if not _DEVICE.fullmatch(spec):
        raise ValueError(f"{option} {str(device)!r}: unknown device; use auto, cpu, cuda or cuda:N")
    return spec


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device to use.

    Parameters
    ----------
    device : {'auto', 'cpu', 'cuda', 'cuda:N'} or torch.device
        ``'auto'`` picks ``cuda`` when a GPU is available, else ``cpu``.

    Raises
    ------
    ValueError
        For an unknown spelling, or when CUDA (or GPU ``N``) is asked for and not
        available.
    """
    if isinstance(device, torch.device):
        spec = str(device)
    else:
        spec = str(device).strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        try:
            dev = torch.device(spec)
        except RuntimeError as exc:
            raise ValueError(f"device {device!r}: not a valid CUDA device ({exc})") from None
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} asked for, but CUDA is not available "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                "use device='cpu' or 'auto'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
        return dev
    raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")


# --------------------------------------------------------------------------------------
# normalization
# --------------------------------------------------------------------------------------


def _as_mean_std(name: str, value: Any) -> tuple[float, float]:
    if isinstance(value, Mapping):
        try:
            mean, std = value["mean"], value["std"]
        except KeyError:
            raise ValueError(f"norm[{name!r}] must have 'mean' and 'std', got {value!r}") from None
    else:
        try:
            mean, std = value
        except (TypeError, ValueError):
            raise ValueError(f"norm[{name!r}] must be (mean, std), got {value!r}") from None
    mean, std = float(mean), float(std)
    if not math.isfinite(mean) or not math.isfinite(std) or std <= 0:
        raise ValueError(
            f"norm[{name!r}] = (mean {mean!r}, std {std!r}): need a finite mean and a "
            "finite, positive std"
        )
    return mean, std


def fit_norm(data: Mapping[str, Any], *, min_std: float = 1e-6) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation per variable, ignoring NaN.

    Parameters
    ----------
    data : mapping of name -> array
    min_std : float
        Floor for the standard deviation (constant variables, e.g. one soil site).

    Returns
    -------
    dict
        ``name -> (mean, std)``, ready for :class:`Normalizer` and
        :func:`save_checkpoint`.
    """
    out: dict[str, tuple[float, float]] = {}
    for name, values in data.items():
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().numpy()
        arr = np.asarray(values, dtype="float64")
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            raise ValueError(f"fit_norm: {name!r} has no finite values")
        out[name] = (float(finite.mean()), max(float(finite.std()), float(min_std)))
    return out


class Normalizer:
    """Standardisation of features and de-standardisation of outputs.

    Works on numpy arrays and torch tensors alike (same type, device and float dtype
    out as in).

    Parameters
    ----------
    norm : mapping
        ``name -> (mean, std)`` (or ``{'mean': .., 'std': ..}``) for every feature and
        every daily target; ``yield`` is needed only by the yield methods.
    features : sequence of str
        Feature names in model order.
    daily_targets : sequence of str
        Names of the last axis of the model's ``daily`` output.
    yield_target : str
        Name of the yield statistics.
    """

    def __init__(
        self,
        norm: Mapping[str, Any],
        *,
        features: Sequence[str] = schema.FEATURES,
        daily_targets: Sequence[str] = DAILY_TARGETS,
        yield_target: str = YIELD_TARGET,
    ) -> None:
        self.norm: dict[str, tuple[float, float]] = {
            str(k): _as_mean_std(str(k), v) for k, v in norm.items()
        }
        self.features = tuple(features)
        self.daily_targets = tuple(daily_targets)
        self.yield_target = yield_target
        missing = [n for n in (*self.features, *self.daily_targets) if n not in self.norm]
        if missing:
            raise ValueError(f"normalization statistics are missing for {missing}")
        self._stats = {
            "features": self._stack(self.features),
            "outputs": self._stack(self.daily_targets),
        }
        if yield_target in self.norm:
            self._stats["yield"] = self._stack((yield_target,))
        self._cache: dict[tuple[str, str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _stack(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        mean = np.array([self.norm[n][0] for n in names], dtype="float64")
        std = np.array([self.norm[n][1] for n in names], dtype="float64")
        return mean, std

    def _get(self, which: str, x: ArrayT) -> tuple[Any, Any]:
        try:
            mean, std = self._stats[which]
        except KeyError:
            raise ValueError(
                f"normalization statistics are missing for {self.yield_target!r}"
            ) from None
        n = mean.shape[0]
        if which != "yield" and (x.ndim == 0 or x.shape[-1] != n):
            names = self.features if which == "features" else self.daily_targets
            raise ValueError(
                f"expected a last axis of {n} ({', '.join(names)}), got shape {tuple(x.shape)}"
            )
        if which == "yield":
            mean, std = mean[0], std[0]
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
            key = (which, str(x.device), dtype)
            if key not in self._cache:
                self._cache[key] = (
                    torch.as_tensor(mean, dtype=dtype, device=x.device),
                    torch.as_tensor(std, dtype=dtype, device=x.device),
                )
            return self._cache[key]
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype("float64")
        return np.asarray(mean, dtype=dtype), np.asarray(std, dtype=dtype)

    @staticmethod
    def _prep(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x if x.is_floating_point() else x.to(torch.get_default_dtype())
        x = np.asarray(x)
        return x if np.issubdtype(x.dtype, np.floating) else x.astype("float64")

    def normalize_features(self, x: ArrayT) -> ArrayT:
        """``(x - mean) / std`` along the last (feature) axis."""
        x = self._prep(x)
        mean, std = self._get("features", x)
        out = x - mean
        out /= std  # in place: one temporary the size of x, not two
        return out

    def denormalize_features(self, x: ArrayT) -> ArrayT:
        """Inverse of :meth:`normalize_features`."""
        x = self._prep(x)
        mean, std = self._get("features", x)
        return x * std + mean

    def normalize_outputs(self, y: ArrayT) -> ArrayT:
        """Physical ``[..., 4]`` (ra, rh, nee, gpp) -> standardised (training targets)."""
        y = self._prep(y)
        mean, std = self._get("outputs", y)
        return (y - mean) / std

    def denormalize_outputs(self, y: ArrayT) -> ArrayT:
        """Standardised model ``daily`` output ``[..., 4]`` -> gC m-2 d-1."""
        y = self._prep(y)
        mean, std = self._get("outputs", y)
        out = y * std
        out += mean
        return out

    def normalize_yield(self, y: ArrayT) -> ArrayT:
        """Physical yield (gC m-2) -> standardised."""
        y = self._prep(y)
        mean, std = self._get("yield", y)
        return (y - mean) / std

    def denormalize_yield(self, y: ArrayT) -> ArrayT:
        """Standardised model ``yield`` output -> gC m-2 (NaN stays NaN)."""
        y = self._prep(y)
        mean, std = self._get("yield", y)
        return y * std + mean

    def to_dict(self) -> dict[str, dict[str, float]]:
        """JSON-safe ``name -> {'mean': .., 'std': ..}``."""
        return {k: {"mean": m, "std": s} for k, (m, s) in self.norm.items()}

    def __repr__(self) -> str:
        return (
            f"Normalizer({len(self.features)} features, targets {self.daily_targets}, "
            f"yield {'yes' if 'yield' in self._stats else 'no'})"
        )


# --------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("kgml_grid")
    except metadata.PackageNotFoundError:
        pass
    try:
        from kgml_grid import __version__  # type: ignore[attr-defined]
    except ImportError:
        return "unknown"
    return str(__version__)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _identity(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of the sidecar that determine the model's outputs."""
    return {
        "format_version": meta["format_version"],
        "weights_sha256": meta["weights"]["sha256"],
        "config": meta["config"],
        "features": meta["features"],
        "units": meta["units"],
        "norm": meta["norm"],
        "targets": meta["targets"],
    }


def _identity_hash(meta: Mapping[str, Any]) -> str:
    text = json.dumps(_identity(meta), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def save_checkpoint(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    config: ModelConfig,
    features: Sequence[str],
    units: Mapping[str, str],
    norm: Mapping[str, Any],
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``directory``, atomically.

    Parameters
    ----------
    model : nn.Module
        A model built from ``config``.
    directory : path
        Created if needed; an existing checkpoint there is replaced.
    config : ModelConfig
    features : sequence of str
        Feature names in the order of the model's input axis.
    units : mapping
        Units of every feature (extra entries, e.g. targets, are kept).
    norm : mapping
        ``name -> (mean, std)`` for every feature and every daily target
        (``ra``, ``rh``, ``nee``); ``yield`` when the yield head was trained.
    provenance : mapping, optional
        Training provenance (data, seeds, epochs, metrics...). ``created``,
        ``package_version``, ``torch_version`` and ``weights_sha256`` are added.

    Returns
    -------
    Path
        The checkpoint directory.

    Raises
    ------
    ValueError
        When the arguments disagree (feature count, units or statistics missing,
        model built from another configuration).
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
    model_config = getattr(model, "config", None)
    if model_config is not None and model_config != config:
        raise ValueError(f"model was built with {model_config}, not with config={config}")
    features = tuple(str(f) for f in features)
    if len(features) != config.n_features:
        raise ValueError(
            f"{len(features)} features given, but config.n_features is {config.n_features}"
        )
    if len(set(features)) != len(features):
        raise ValueError(f"feature names repeat: {features}")
    missing_units = [f for f in features if not units.get(f)]
    if missing_units:
        raise ValueError(f"units are missing for features {missing_units}")
    normalizer = Normalizer(norm, features=features)

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights_path, json_path = directory / WEIGHTS_NAME, directory / JSON_NAME
    token = uuid.uuid4().hex
    tmp_weights = directory / f".{WEIGHTS_NAME}.{token}.tmp"
    tmp_json = directory / f".{JSON_NAME}.{token}.tmp"

    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    try:
        # one metadata key only: safetensors writes a map's keys in no fixed order, and
        # identical models must give identical bytes (and hashes)
        save_file(tensors, str(tmp_weights), metadata={"format": "pt"})
        with open(tmp_weights, "rb+") as fh:
            os.fsync(fh.fileno())
        sha = _sha256(tmp_weights)
        prov = dict(provenance or {})
        prov.update(
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            package_version=_package_version(),
            torch_version=torch.__version__,
            weights_sha256=sha,
        )
        all_units = {f: str(units[f]) for f in features}
        all_units.update({str(k): str(v) for k, v in units.items()})
        for name in (*DAILY_TARGETS, YIELD_TARGET):
            all_units.setdefault(name, schema.get(name).units)
        meta: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "weights": {
                "file": WEIGHTS_NAME,
                "sha256": sha,
                "bytes": tmp_weights.stat().st_size,
            },
            "config": config.to_dict(),
            "features": list(features),
            "feature_set": schema.feature_set_name(features),
            "units": all_units,
            "targets": {"daily": list(DAILY_TARGETS), "yearly": [YIELD_TARGET]},
            "norm": normalizer.to_dict(),
            "provenance": prov,
        }
        meta["checkpoint_hash"] = _identity_hash(meta)
        try:
            text = json.dumps(meta, indent=2, default=str, allow_nan=False)
        except ValueError as exc:
            raise ValueError(
                f"provenance cannot be written as JSON ({exc}); replace NaN/inf values"
            ) from None
        with open(tmp_json, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        # an old sidecar must not vouch for the new weights while they are replaced
        json_path.unlink(missing_ok=True)
        os.replace(tmp_weights, weights_path)
        _fsync_dir(directory)
        os.replace(tmp_json, json_path)
        _fsync_dir(directory)
    finally:
        tmp_weights.unlink(missing_ok=True)
        tmp_json.unlink(missing_ok=True)
    return directory


# --------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes
    ----------
    model : nn.Module
        In eval mode, on ``device``.
    config : ModelConfig
    features : tuple of str
        Feature names in model order.
    units : dict
        Units of the features (and targets).
    norm : dict
        ``name -> (mean, std)``.
    provenance : dict
    sha256 : str
        sha256 of ``model.safetensors``.
    hash : str
        :func:`checkpoint_hash`: weights plus everything in the sidecar that changes
        the outputs (architecture, features, units, normalization).
    path : Path
        The checkpoint directory.
    device : torch.device
    """

    model: nn.Module
    config: ModelConfig
    features: tuple[str, ...]
    units: dict[str, str]
    norm: dict[str, tuple[float, float]]
    provenance: dict[str, Any]
    sha256: str
    hash: str
    path: Path
    device: torch.device
    targets: tuple[str, ...] = DAILY_TARGETS
    _normalizer: Normalizer | None = field(default=None, repr=False, compare=False)

    @property
    def normalizer(self) -> Normalizer:
        """A :class:`Normalizer` built from the checkpoint's statistics."""
        if self._normalizer is None:
            self._normalizer = Normalizer(
                self.norm, features=self.features, daily_targets=self.targets
            )
        return self._normalizer


def _read_meta(directory: Path) -> tuple[dict[str, Any], Path, Path]:
    if not directory.is_dir():
        raise ValueError(f"{directory}: checkpoint directory does not exist")
    json_path, weights_path = directory / JSON_NAME, directory / WEIGHTS_NAME
    if not json_path.is_file():
        raise ValueError(
            f"{json_path}: missing; {directory} is not a complete checkpoint "
            f"(expected {JSON_NAME} and {WEIGHTS_NAME})"
        )
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{json_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{json_path}: not valid JSON for a checkpoint (not an object)")
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{json_path}: not a kgml_grid checkpoint (format {meta.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{json_path}: unknown format version {version!r}; this kgml_grid reads "
            f"version {FORMAT_VERSION}"
        )
    required = ("weights", "config", "features", "units", "norm", "targets", "provenance")
    missing = [k for k in required if k not in meta]
    if missing:
        raise ValueError(f"{json_path}: missing entries {missing}")
    if not isinstance(meta["weights"], dict) or "sha256" not in meta["weights"]:
        raise ValueError(f"{json_path}: entry 'weights' has no 'sha256'")
    _check_meta_types(meta, json_path)
    if not weights_path.is_file():
        raise ValueError(f"{weights_path}: missing (the sidecar {json_path.name} refers to it)")
    return meta, json_path, weights_path


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _check_meta_types(meta: Mapping[str, Any], json_path: Path) -> None:
    """Refuse sidecar entries of the wrong JSON type, naming the entry (before any use)."""
    kinds = {"config": "an object of architecture settings", "units": "an object name -> units",
             "norm": "an object name -> {mean, std}", "targets": 'an object {"daily": [...], "yearly": [...]}',
             "provenance": "an object"}  # fmt: skip
    for key, what in kinds.items():
        if not isinstance(meta[key], dict):
            raise ValueError(
                f"{json_path}: entry {key!r} must be {what}, got {_describe(meta[key])}"
            )
    feats = meta["features"]
    if not isinstance(feats, list) or not all(isinstance(f, str) for f in feats):
        raise ValueError(
            f"{json_path}: entry 'features' must be a list of feature names, got {_describe(feats)}"
        )
    bad_units = [k for k, v in meta["units"].items() if not isinstance(v, str)]
    if bad_units:
        raise ValueError(
            f"{json_path}: entry 'units' must map names to unit strings; {bad_units[0]!r} has "
            f"{_describe(meta['units'][bad_units[0]])}"
        )
    for key in ("daily", "yearly"):
        value = meta["targets"].get(key, [])
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise ValueError(
                f"{json_path}: entry 'targets.{key}' must be a list of target names, got {_describe(value)}"
            )


def _architecture_bytes(config: ModelConfig) -> int:
    """Bytes of the weights an architecture needs, counted on the meta device (no allocation)."""
    with torch.device("meta"):
        model = build_model(config)
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _check_finite_weights(tensors: Mapping[str, torch.Tensor], weights_path: Path) -> None:
    """Refuse NaN or infinite weights, naming the first such tensor."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n_bad = int((~torch.isfinite(t)).sum())
            n_nan = int(torch.isnan(t).sum())
            raise ValueError(
                f"{weights_path}: tensor {name!r} {tuple(t.shape)} has {n_bad} non-finite values "
                f"({n_nan} NaN, {n_bad - n_nan} inf): the model would output NaN; the training "
                "diverged or the file is corrupt: retrain or use an earlier checkpoint"
            )


def _verify_weights(meta: Mapping[str, Any], json_path: Path, weights_path: Path) -> str:
    expected = str(meta["weights"]["sha256"])
    got = _sha256(weights_path)
    if got != expected:
        raise ValueError(
            f"{weights_path}: sha256 {got} does not match {expected} recorded in "
            f"{json_path.name}; the weights were changed or the checkpoint is corrupt"
        )
    return got


def _check_expected_features(
    features: tuple[str, ...], expected: Sequence[str], source: str
) -> None:
    expected = tuple(expected)
    if features == expected:
        return
    missing = [f for f in expected if f not in features]
    extra = [f for f in features if f not in expected]
    if missing or extra:
        raise ValueError(
            f"{source}: features differ from those expected: missing {missing}, unexpected {extra}"
        )
    first = next(i for i, (a, b) in enumerate(zip(features, expected, strict=True)) if a != b)
    raise ValueError(
        f"{source}: feature order differs from the one expected at position {first}: "
        f"{features[first]!r} where {expected[first]!r} was expected"
    )


def _same_units(name: str, got: str | None, want: str) -> bool:
    if got is None:
        return False
    if " ".join(got.split()) == " ".join(want.split()):
        return True
    var = schema.VARIABLES.get(name)
    return var is not None and var.accepts_units(got) and var.accepts_units(want)


def load_checkpoint(
    directory: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    expect_features: Sequence[str] | None = None,
    expect_units: Mapping[str, str] | None = None,
    check_schema: bool = False,
) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    directory : path
    device : str or torch.device
        See :func:`resolve_device`.
    expect_features : sequence of str, optional
        Refuse unless the checkpoint's features are these, in this order.
    expect_units : mapping, optional
        Refuse unless each named variable has these units in the checkpoint
        (spellings the schema lists as aliases count as equal).
    check_schema : bool
        Refuse unless features and units match :mod:`kgml_grid.schema`
        (via :func:`kgml_grid.schema.check_features`).

    Returns
    -------
    Checkpoint

    Raises
    ------
    ValueError
        Naming the file and the difference.
    """
    directory = Path(directory)
    meta, json_path, weights_path = _read_meta(directory)
    sha = _verify_weights(meta, json_path, weights_path)
    try:
        config = ModelConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{json_path}: bad 'config': {exc}") from None
    features = tuple(str(f) for f in meta["features"])
    units = {str(k): str(v) for k, v in dict(meta["units"]).items()}
    if len(features) != config.n_features:
        raise ValueError(
            f"{json_path}: {len(features)} features listed, but config.n_features is "
            f"{config.n_features}"
        )
    if check_schema:
        schema.check_features(features, units, source=str(json_path))
        named = meta.get("feature_set")
        if named is not None and named != schema.feature_set_name(features):
            raise ValueError(
                f"{json_path}: 'feature_set' is {named!r} but the features listed make "
                f"{schema.feature_set_name(features)!r}"
            )
    if expect_features is not None:
        _check_expected_features(features, expect_features, str(json_path))
    if expect_units is not None:
        for name, want in expect_units.items():
            got = units.get(name)
            if not _same_units(name, got, str(want)):
                raise ValueError(
                    f"{json_path}: variable {name!r} has units {got!r}, expected {want!r}"
                )
    targets = tuple(meta["targets"].get("daily", DAILY_TARGETS))
    if targets != DAILY_TARGETS:
        raise ValueError(
            f"{json_path}: daily targets {targets} differ from this kgml_grid's {DAILY_TARGETS}"
        )
    try:
        normalizer = Normalizer(meta["norm"], features=features, daily_targets=targets)
    except ValueError as exc:
        raise ValueError(f"{json_path}: {exc}") from None

    dev = resolve_device(device)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    need, have = _architecture_bytes(config), weights_path.stat().st_size
    if need > have:  # before building it for real: a wrong 'config' could ask for petabytes
        raise ValueError(
            f"{weights_path}: weights do not fit the architecture in {json_path.name}: its "
            f"'config' (hidden {config.hidden}) needs {need:,} bytes of weights, the file holds "
            f"{have:,} (nothing was allocated); restore the checkpoint's {json_path.name}"
        )
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{weights_path}: cannot be read as safetensors ({exc})") from None
    _check_finite_weights(tensors, weights_path)
    model = build_model(config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"{weights_path}: weights do not fit the architecture in {json_path.name}: {exc}"
        ) from None
    model.to(dev).eval()
    return Checkpoint(
        model=model,
        config=config,
        features=features,
        units=units,
        norm=dict(normalizer.norm),
        provenance=dict(meta["provenance"]),
        sha256=sha,
        hash=_identity_hash(meta),
        path=directory,
        device=dev,
        targets=targets,
        _normalizer=normalizer,
    )


def checkpoint_hash(directory: str | os.PathLike[str]) -> str:
    """Identity of a checkpoint, for output provenance (sha256 hex digest).

    Covers the weights (their sha256, verified against the file) and everything in
    the sidecar that changes the model's outputs: architecture, features, units,
    normalization statistics and targets; not the provenance (creation time...).
    Two checkpoints with the same hash produce the same outputs.

    Raises
    ------
    ValueError
        As :func:`load_checkpoint` for missing files, bad JSON, unknown versions and
        weights that do not match the sidecar.
    """
    meta, json_path, weights_path = _read_meta(Path(directory))
    _verify_weights(meta, json_path, weights_path)
    return _identity_hash(meta)
