"""Torch models of the KGML-ag carbon fluxes (DESIGN section 5).

Two architectures share one interface:

* :class:`KGMLModel`, the knowledge-guided hierarchical GRU whose modules mirror the
  carbon cycle: a shared *basis* GRU, an *Ra* module, an *Rh* module and an *NEE*
  module fed with the Ra and Rh predictions;
* :class:`GRUBaseline`, a plain stacked GRU with the same inputs and outputs, the
  baseline every comparison uses.

Both are **stateful and causal**::

    out, state = model(x, state, year_end=year_end)

``x`` is ``[B, T, F]`` standardised features (in :data:`kgml_grid.schema.FEATURES`
order); ``out["daily"]`` is ``[B, T, 4]`` standardised ``(ra, rh, nee, gpp)``
(:data:`DAILY_TARGETS`); ``out["yield"]`` (only when ``year_end`` is given) is
``[B, T]`` standardised yield, finite only where ``year_end`` is True. Running a
series in pieces with the state carried gives the same result as running it whole,
yield included: the yield head's attention softmax is accumulated online across
chunks (running max, normaliser and weighted sum, reset after each year end).

State layout
------------
``state`` is a plain ``dict[str, torch.Tensor]``, **batch first** in every entry so
that a subset of pixels is ``{k: v[idx] for k, v in state.items()}`` and state can be
stored per pixel (see :func:`state_spec`, :func:`state_to_numpy`):

=============  =================  =========================================
key            shape              meaning
=============  =================  =========================================
``basis``      ``[B, Lb, H]``     basis GRU hidden state (KGML)
``ra``         ``[B, La, H]``     Ra GRU hidden state (KGML)
``rh``         ``[B, Lh, H]``     Rh GRU hidden state (KGML)
``nee``        ``[B, Ln, H]``     NEE GRU hidden state (KGML)
``gru``        ``[B, L, H]``      GRU hidden state (baseline)
``yield_m``    ``[B]``            running max of attention scores (-inf: empty)
``yield_z``    ``[B]``            sum of exp(score - yield_m) of the season so far
``yield_a``    ``[B, H]``         sum of exp(score - yield_m) * h of the season so far
=============  =================  =========================================

The yield accumulators are updated on every call, whether or not ``year_end`` is
given (without it no season ends inside the chunk).

On the CPU without autograd (inference, validation) the GRUs run through
:func:`kgml_grid.fastgru.run_gru` (after the input projection, a layer's days in one
compiled call, the hidden projection fed to the gates in registers; the same outputs to
float32 rounding), elsewhere through ``nn.GRU``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from kgml_grid.fastgru import run_gru

__all__ = [
    "DAILY_TARGETS",
    "YIELD_TARGET",
    "GRUBaseline",
    "KGMLModel",
    "ModelConfig",
    "YieldHead",
    "build_model",
    "count_parameters",
    "detach_state",
    "module_groups",
    "nee_balance_from",
    "state_from_numpy",
    "state_spec",
    "state_to_numpy",
]

#: Daily outputs of the models, in the order of the last axis of ``out["daily"]``.
DAILY_TARGETS: tuple[str, ...] = ("ra", "rh", "nee", "gpp")
#: The yearly output.
YIELD_TARGET: str = "yield"

_ARCHS = ("kgml", "gru")
#: Largest hidden size and layer count accepted: far above the reference (hidden 64, 1-2
#: layers); a corrupt or hostile sidecar must not make ``build_model`` allocate petabytes.
MAX_WIDTH = 4096
MAX_LAYERS = 16
_YIELD_KEYS = ("yield_m", "yield_z", "yield_a")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a model; JSON-safe through :meth:`to_dict`/:meth:`from_dict`.

    Attributes
    ----------
    arch : {'kgml', 'gru'}
        Hierarchical KGML model or plain GRU baseline.
    n_features : int
        Number of input features (last axis of ``x``).
    hidden : int
        Hidden size of every GRU.
    dropout : float
        Dropout between stacked GRU layers and before the linear heads.
    basis_layers, ra_layers, rh_layers, nee_layers : int
        Layers of the KGML modules.
    gru_layers : int
        Layers of the baseline GRU.
    yield_hidden : int
        Hidden size of the yield attention and MLP.
    nee_balance : (float, float, float, float) or None
        KGML only. When set, NEE is the carbon balance of the model's own fluxes plus the
        NEE module's output as a correction: ``nee = c_ra ra + c_rh rh - c_gpp gpp + c0 +
        head``, all standardised, so that ``NEE = Ra + Rh - GPP + correction`` in physical
        units (:func:`nee_balance_from` gives the coefficients of a normalisation). None
        (checkpoints before issue 16): NEE is the module's output alone.
    """

    arch: Literal["kgml", "gru"]
    n_features: int
    hidden: int = 64
    dropout: float = 0.2
    basis_layers: int = 2
    ra_layers: int = 1
    rh_layers: int = 2
    nee_layers: int = 1
    gru_layers: int = 2
    yield_hidden: int = 32
    nee_balance: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.arch not in _ARCHS:
            raise ValueError(f"ModelConfig.arch must be one of {_ARCHS}, got {self.arch!r}")
        for name in (
            "n_features", "hidden", "basis_layers", "ra_layers", "rh_layers",
            "nee_layers", "gru_layers", "yield_hidden",
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
            limit = MAX_LAYERS if name.endswith("_layers") else MAX_WIDTH
            if value > limit:
                raise ValueError(
                    f"ModelConfig.{name} is {value!r}, above the limit of {limit} (the reference "
                    "model uses hidden 64 and 1-2 layers per module); is the configuration corrupt?"
                )
            object.__setattr__(self, name, int(value))
        dropout = float(self.dropout)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", dropout)
        if self.nee_balance is not None:
            nb = tuple(float(v) for v in self.nee_balance)
            if len(nb) != 4 or not all(math.isfinite(v) for v in nb):
                raise ValueError(
                    f"ModelConfig.nee_balance must be 4 finite numbers (c_ra, c_rh, c_gpp, c0), "
                    f"got {self.nee_balance!r}"
                )
            if self.arch != "kgml":
                raise ValueError(
                    "ModelConfig.nee_balance is for arch='kgml' (the GRU baseline has no NEE module)"
                )
            object.__setattr__(self, "nee_balance", nb)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dictionary of the configuration.

        ``nee_balance`` is left out when None, so that such checkpoints stay readable by
        versions before it (and their hashes unchanged).
        """
        d = asdict(self)
        if d["nee_balance"] is None:
            del d["nee_balance"]
        else:
            d["nee_balance"] = list(d["nee_balance"])
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Rebuild a configuration from :meth:`to_dict` output.

        Raises
        ------
        ValueError
            On unknown or missing keys, naming them.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown keys {unknown}; known keys are {sorted(known)}")
        missing = [k for k in ("arch", "n_features") if k not in data]
        if missing:
            raise ValueError(f"ModelConfig: missing keys {missing}")
        return cls(**dict(data))


# --------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------


def _gru(input_size: int, hidden: int, layers: int, dropout: float) -> nn.GRU:
    return nn.GRU(
        input_size,
        hidden,
        num_layers=layers,
        batch_first=True,
        dropout=dropout if layers > 1 else 0.0,
    )


def _h0(state: Mapping[str, torch.Tensor] | None, key: str) -> torch.Tensor | None:
    """Batch-first stored hidden state -> the ``[L, B, H]`` layout ``nn.GRU`` wants."""
    if state is None:
        return None
    return state[key].transpose(0, 1).contiguous()


class _GRUHead(nn.Module):
    """A GRU followed by dropout and a linear layer to one output."""

    def __init__(self, input_size: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.gru = _gru(input_size, hidden, layers, dropout)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, 1)

    def forward(
        self, inp: torch.Tensor, h0: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out, hn = run_gru(self.gru, inp, h0)
        return self.head(self.drop(out)), hn


class YieldHead(nn.Module):
    """Attention pooling over a season's hidden states, then an MLP to one value.

    Scores are ``s_t = v^T tanh(W h_t)``; a season's pooled state is
    ``sum_t softmax(s)_t h_t``, accumulated online across chunks as
    ``m = max s``, ``z = sum exp(s - m)``, ``a = sum exp(s - m) h`` and reset after
    each year end; at a year end the yield is ``MLP(a / z)``.
    """

    def __init__(self, hidden: int, yield_hidden: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.Linear(hidden, yield_hidden)
        self.score = nn.Linear(yield_hidden, 1, bias=False)
        self.drop = nn.Dropout(dropout)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, yield_hidden), nn.ReLU(), nn.Linear(yield_hidden, 1)
        )

    def forward(
        self,
        h: torch.Tensor,
        year_end: torch.Tensor,
        m0: torch.Tensor,
        z0: torch.Tensor,
        a0: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pool one chunk.

        Parameters
        ----------
        h : Tensor ``[B, T, H]``
        year_end : bool Tensor ``[B, T]``
        m0, z0, a0 : Tensor ``[B]``, ``[B]``, ``[B, H]``
            Accumulators carried from the previous chunk.

        Returns
        -------
        yield : Tensor ``[B, T]``, NaN where ``year_end`` is False
        m, z, a : the accumulators after the chunk
        """
        bsz, _, hid = h.shape
        # under autocast (bf16 inference) the scores come back in bf16: pool in the
        # accumulators' dtype (float32), as the state is kept
        h = h.to(a0.dtype)
        s = self.score(torch.tanh(self.attn(h))).squeeze(-1).to(m0.dtype)  # [B, T]
        ye = year_end.to(torch.long)
        n_end = ye.sum(dim=1)  # [B]; the open season after the chunk is segment n_end
        n_seg = int(n_end.max().item()) + 1 if ye.numel() else 1
        if n_seg == 1:
            # no season ends in the chunk (most of the engine's CPU time blocks): the same
            # update by plain reductions, without the segment scatters
            m1 = torch.maximum(m0.detach(), s.detach().amax(dim=1))
            m1_safe = torch.where(torch.isfinite(m1), m1, torch.zeros_like(m1))
            w1 = torch.exp(s - m1_safe[:, None])  # [B, T]
            rescale1 = torch.exp(m0.detach() - m1_safe)
            z1 = z0 * rescale1 + w1.sum(dim=1)
            a1 = a0 * rescale1[:, None] + torch.bmm(w1[:, None, :], h).squeeze(1)
            return torch.full_like(s, math.nan), m1, z1, a1
        # segment of each day: number of year ends strictly before it; segment 0
        # continues the season carried in (m0, z0, a0)
        seg = torch.cumsum(ye, dim=1) - ye
        neg_inf = torch.full((bsz, n_seg), -math.inf, dtype=s.dtype, device=s.device)
        # the max is only a shift (the pooled state does not depend on it): no gradient
        m_init = torch.cat([m0.detach()[:, None], neg_inf[:, 1:]], dim=1)
        m = m_init.scatter_reduce(1, seg, s.detach(), reduce="amax", include_self=True)
        m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        w = torch.exp(s - m_safe.gather(1, seg))  # [B, T], <= 1
        rescale = torch.exp(m0.detach() - m_safe[:, 0])  # 0 where m0 = -inf
        zeros = torch.zeros((bsz, n_seg - 1), dtype=s.dtype, device=s.device)
        z = torch.cat([(z0 * rescale)[:, None], zeros], dim=1).scatter_add(1, seg, w)
        a_zeros = torch.zeros((bsz, n_seg - 1, hid), dtype=h.dtype, device=h.device)
        a = torch.cat([(a0 * rescale[:, None])[:, None, :], a_zeros], dim=1).scatter_add(
            1, seg[..., None].expand(-1, -1, hid), w[..., None] * h
        )
        z_safe = torch.where(z > 0, z, torch.ones_like(z))
        pooled = a / z_safe[..., None]  # [B, S, H]
        y_seg = self.mlp(self.drop(pooled)).squeeze(-1)  # [B, S]
        y = y_seg.gather(1, seg)
        y = torch.where(year_end, y, torch.full_like(y, math.nan))
        last = n_end[:, None]
        m_new = m.gather(1, last).squeeze(1)
        z_new = z.gather(1, last).squeeze(1)
        a_new = a.gather(1, last[..., None].expand(-1, -1, hid)).squeeze(1)
        return y, m_new, z_new, a_new


class _StatefulModel(nn.Module):
    """Shared input checks, state initialisation and yield plumbing."""

    config: ModelConfig
    yield_head: YieldHead

    def _gru_keys(self) -> dict[str, int]:
        raise NotImplementedError

    def initial_state(
        self,
        batch: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> dict[str, torch.Tensor]:
        """The state of a series that has not started (zeros; empty season)."""
        if device is None:
            device = next(self.parameters()).device
        hid = self.config.hidden
        state = {
            k: torch.zeros((batch, layers, hid), dtype=dtype, device=device)
            for k, layers in self._gru_keys().items()
        }
        state["yield_m"] = torch.full((batch,), -math.inf, dtype=dtype, device=device)
        state["yield_z"] = torch.zeros((batch,), dtype=dtype, device=device)
        state["yield_a"] = torch.zeros((batch, hid), dtype=dtype, device=device)
        return state

    def _check(
        self,
        x: torch.Tensor,
        state: Mapping[str, torch.Tensor] | None,
        year_end: torch.Tensor | np.ndarray | None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        if x.ndim != 3 or x.shape[-1] != self.config.n_features:
            raise ValueError(
                f"x must have shape [batch, time, {self.config.n_features}] "
                f"(n_features of the model), got {tuple(x.shape)}"
            )
        bsz, steps, _ = x.shape
        if state is None:
            state = self.initial_state(bsz, device=x.device, dtype=x.dtype)
        else:
            spec = state_spec(self.config)
            missing = sorted(set(spec) - set(state))
            if missing:
                raise ValueError(f"state is missing entries {missing}; expected {sorted(spec)}")
            for k, shape in spec.items():
                got = tuple(state[k].shape)
                if got != (bsz, *shape):
                    raise ValueError(
                        f"state[{k!r}] has shape {got}, expected {(bsz, *shape)} "
                        f"for a batch of {bsz}"
                    )
            state = dict(state)
        ye = None
        if year_end is not None:
            ye = torch.as_tensor(year_end, device=x.device).to(torch.bool)
            if ye.ndim == 1:
                ye = ye.expand(bsz, -1)
            if tuple(ye.shape) != (bsz, steps):
                raise ValueError(
                    f"year_end must have shape [batch, time] = {(bsz, steps)} or [time], "
                    f"got {tuple(ye.shape)}"
                )
        return state, ye

    def _pool(
        self,
        h: torch.Tensor,
        ye: torch.Tensor | None,
        state: Mapping[str, torch.Tensor],
        new_state: dict[str, torch.Tensor],
        out: dict[str, torch.Tensor],
    ) -> None:
        year_end = (
            ye if ye is not None else torch.zeros(h.shape[:2], dtype=torch.bool, device=h.device)
        )
        y, m, z, a = self.yield_head(
            h, year_end, state["yield_m"], state["yield_z"], state["yield_a"]
        )
        new_state.update(yield_m=m, yield_z=z, yield_a=a)
        if ye is not None:
            out["yield"] = y

    def _empty(
        self, x: torch.Tensor, state: dict[str, torch.Tensor], ye: torch.Tensor | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        bsz = x.shape[0]
        out = {"daily": x.new_zeros((bsz, 0, len(DAILY_TARGETS)))}
        if ye is not None:
            out["yield"] = x.new_zeros((bsz, 0))
        return out, state


class KGMLModel(_StatefulModel):
    """Hierarchical knowledge-guided GRU (basis -> Ra, Rh -> NEE, plus yield).

    Parameters
    ----------
    config : ModelConfig
        With ``arch='kgml'``.

    Notes
    -----
    * basis: GRU (``basis_layers``) over ``x``;
    * Ra: GRU (``ra_layers``) over ``[basis, x]`` -> dropout -> linear -> ra;
    * Rh: GRU (``rh_layers``) over ``[basis, x]`` -> dropout -> linear -> rh;
    * GPP: linear head on the basis output (a denoised estimate of the input GPP);
    * NEE: GRU (``nee_layers``) over ``[ra, rh, gpp, x]`` -> dropout -> linear -> nee;
      with ``config.nee_balance``, that output is a correction added to the model's own
      ``ra + rh - gpp`` (standardised coefficients, so NEE = Reco - GPP + correction in
      physical units);
    * yield: attention over the season's basis outputs -> MLP (:class:`YieldHead`).

    Dropout is applied to the basis output before it feeds Ra and Rh.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch != "kgml":
            raise ValueError(f"KGMLModel needs arch='kgml', got {config.arch!r}")
        self.config = config
        f, h, p = config.n_features, config.hidden, config.dropout
        self.basis = _gru(f, h, config.basis_layers, p)
        self.basis_drop = nn.Dropout(p)
        self.ra = _GRUHead(h + f, h, config.ra_layers, p)
        self.rh = _GRUHead(h + f, h, config.rh_layers, p)
        # GPP head: the basis denoises the (noisy, gappy) satellite GPP; the mass
        # balance GPP = Reco - NEE is enforced against this estimate, not the raw input.
        self.gpp = nn.Sequential(nn.Dropout(p), nn.Linear(h, 1))
        self.nee = _GRUHead(3 + f, h, config.nee_layers, p)
        self.yield_head = YieldHead(h, config.yield_hidden, p)

    def _gru_keys(self) -> dict[str, int]:
        c = self.config
        return {"basis": c.basis_layers, "ra": c.ra_layers, "rh": c.rh_layers,
                "nee": c.nee_layers}  # fmt: skip

    def forward(
        self,
        x: torch.Tensor,
        state: Mapping[str, torch.Tensor] | None = None,
        *,
        year_end: torch.Tensor | np.ndarray | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Run one chunk of days.

        Parameters
        ----------
        x : Tensor ``[B, T, F]``
            Standardised features.
        state : dict or None
            State returned by the previous chunk; None starts a new series.
        year_end : bool array ``[B, T]`` or ``[T]``, optional
            True on the last day of each season; enables ``out["yield"]``.

        Returns
        -------
        out : dict
            ``daily`` ``[B, T, 4]`` standardised (ra, rh, nee, gpp); ``yield`` ``[B, T]``
            standardised, NaN except at year ends (only when ``year_end`` is given).
        state : dict
            The state after the chunk (see the module docstring for the layout).
        """
        state, ye = self._check(x, state, year_end)
        if x.shape[1] == 0:
            return self._empty(x, state, ye)
        basis_out, hb = run_gru(self.basis, x, _h0(state, "basis"))
        bx = torch.cat([self.basis_drop(basis_out), x], dim=-1)
        ra, hra = self.ra(bx, _h0(state, "ra"))
        rh, hrh = self.rh(bx, _h0(state, "rh"))
        gpp = self.gpp(basis_out)
        nee, hnee = self.nee(torch.cat([ra, rh, gpp, x], dim=-1), _h0(state, "nee"))
        if self.config.nee_balance is not None:
            c_ra, c_rh, c_gpp, c0 = self.config.nee_balance
            nee = nee + (c_ra * ra + c_rh * rh - c_gpp * gpp + c0)
        out = {"daily": torch.cat([ra, rh, nee, gpp], dim=-1)}
        new_state = {
            "basis": hb.transpose(0, 1),
            "ra": hra.transpose(0, 1),
            "rh": hrh.transpose(0, 1),
            "nee": hnee.transpose(0, 1),
        }
        self._pool(basis_out, ye, state, new_state, out)
        return out, new_state


class GRUBaseline(_StatefulModel):
    """Plain stacked GRU over the features -> linear -> (ra, rh, nee, gpp), plus yield.

    The yield head pools the GRU's top-layer outputs. Same interface as
    :class:`KGMLModel`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch != "gru":
            raise ValueError(f"GRUBaseline needs arch='gru', got {config.arch!r}")
        self.config = config
        h, p = config.hidden, config.dropout
        self.gru = _gru(config.n_features, h, config.gru_layers, p)
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(h, len(DAILY_TARGETS))
        self.yield_head = YieldHead(h, config.yield_hidden, p)

    def _gru_keys(self) -> dict[str, int]:
        return {"gru": self.config.gru_layers}

    def forward(
        self,
        x: torch.Tensor,
        state: Mapping[str, torch.Tensor] | None = None,
        *,
        year_end: torch.Tensor | np.ndarray | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Run one chunk of days; see :meth:`KGMLModel.forward`."""
        state, ye = self._check(x, state, year_end)
        if x.shape[1] == 0:
            return self._empty(x, state, ye)
        h, hn = run_gru(self.gru, x, _h0(state, "gru"))
        out = {"daily": self.head(self.drop(h))}
        new_state = {"gru": hn.transpose(0, 1)}
        self._pool(h, ye, state, new_state, out)
        return out, new_state


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def nee_balance_from(norm: Mapping[str, Sequence[float]]) -> tuple[float, float, float, float]:
    """Coefficients of :attr:`ModelConfig.nee_balance` for output statistics ``norm``
    (``name -> (mean, std)`` for ra, rh, nee and gpp, as a checkpoint's ``norm``):
    standardised ``c_ra ra + c_rh rh - c_gpp gpp + c0`` is the standardised ``Ra + Rh - GPP``."""
    m = {v: float(norm[v][0]) for v in DAILY_TARGETS}
    s = {v: float(norm[v][1]) for v in DAILY_TARGETS}
    return (s["ra"] / s["nee"], s["rh"] / s["nee"], s["gpp"] / s["nee"],
            (m["ra"] + m["rh"] - m["gpp"] - m["nee"]) / s["nee"])  # fmt: skip


def build_model(config: ModelConfig) -> KGMLModel | GRUBaseline:
    """The model of ``config.arch``, freshly initialised."""
    if config.arch == "kgml":
        return KGMLModel(config)
    return GRUBaseline(config)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def module_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters by module, for per-module learning rates and staged freezing.

    Returns
    -------
    dict
        ``basis``, ``ra``, ``rh``, ``nee``, ``yield`` for :class:`KGMLModel`;
        ``gru``, ``head``, ``yield`` for :class:`GRUBaseline`. Every parameter
        appears in exactly one group.
    """
    if isinstance(model, KGMLModel):
        parts: dict[str, nn.Module] = {
            "basis": model.basis, "gpp": model.gpp, "ra": model.ra, "rh": model.rh,
            "nee": model.nee, "yield": model.yield_head,
        }  # fmt: skip
    elif isinstance(model, GRUBaseline):
        parts = {"gru": model.gru, "head": model.head, "yield": model.yield_head}
    else:
        raise TypeError(f"module_groups: not a kgml_grid model: {type(model).__name__}")
    return {name: list(mod.parameters()) for name, mod in parts.items()}


def state_spec(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shape of each state entry without its leading batch axis."""
    h = config.hidden
    if config.arch == "kgml":
        spec: dict[str, tuple[int, ...]] = {
            "basis": (config.basis_layers, h), "ra": (config.ra_layers, h),
            "rh": (config.rh_layers, h), "nee": (config.nee_layers, h),
        }  # fmt: skip
    else:
        spec = {"gru": (config.gru_layers, h)}
    spec.update(yield_m=(), yield_z=(), yield_a=(h,))
    return spec


def detach_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state cut from the autograd graph (truncated back-propagation)."""
    return {k: v.detach() for k, v in state.items()}


def state_to_numpy(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The state as numpy arrays on the host (batch first, like the tensors)."""
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def state_from_numpy(
    arrays: Mapping[str, np.ndarray],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Tensors from :func:`state_to_numpy` output."""
    return {
        k: torch.as_tensor(np.ascontiguousarray(v), device=device).to(dtype)
        for k, v in arrays.items()
    }
