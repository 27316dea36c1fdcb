"""Provenance: a typed, versioned record of how a DistilledSet was made.

It is part of the file format: ``DistilledSet.save`` writes ``to_dict()`` as
JSON in the metadata and ``load`` rebuilds it with ``from_dict``, which checks
every field's type and range and names the field in its error.

Fields shared by the builders are typed attributes (``None`` where a builder
has no such value). What only one builder records goes in ``extras``, whose
allowed keys and types depend on ``method`` (see ``EXTRAS``).

Files written before the record was typed (a plain dict without
``schema_version``) are converted on load: the method is inferred from its old
``method``/``kind`` key, known keys are kept and keys the record no longer has
(free-text notes) are dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

SCHEMA_VERSION = 1

#: Every value of ``Provenance.method`` and the builder that sets it.
METHODS: dict[str, str] = {
    "closed_form": "distill / KRRDistiller (Theorems 4.1 and 5.1)",
    "label_only": "distill_labels (Theorem 4.2)",
    "deep_linear": "distill_deep_linear (Theorem 5.3)",
    "approximate": "distill_approximate (section 5.2, optimised preimage)",
    "private": "distill_private (Gaussian mechanism, Theorem 6.2)",
    "random": "random_subset",
    "herding": "herding",
    "kip": "kip (Kernel Inducing Points)",
    "moments": "MomentMemory.to_distilled_set",
    "manual": "a DistilledSet built directly, without a builder",
}


@dataclass(frozen=True)
class _Kind:
    """A JSON value type: its description for error messages and its test."""

    text: str
    accepts: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and not math.isnan(v)


_INT = _Kind("an integer", _is_int)
_FLOAT = _Kind("a number (not NaN)", _is_number)
_BOOL = _Kind("true or false", lambda v: isinstance(v, bool))
_STR = _Kind("a string", lambda v: isinstance(v, str))
_INTS = _Kind("a list of integers", lambda v: isinstance(v, list) and all(_is_int(i) for i in v))
_STEP_LOSSES = _Kind(
    "a list of [step, loss] pairs",
    lambda v: isinstance(v, list)
    and all(isinstance(p, list) and len(p) == 2 and _is_int(p[0]) and _is_number(p[1]) for p in v),
)


def _optional(kind: _Kind) -> _Kind:
    return _Kind(f"{kind.text} or null", lambda v: v is None or kind.accepts(v))


_CLOSED_FORM = {"root": _STR, "soft_labels": _BOOL}

#: The keys ``extras`` may hold for each method, and their types.
EXTRAS: dict[str, dict[str, _Kind]] = {
    "closed_form": _CLOSED_FORM,
    "approximate": {
        **_CLOSED_FORM,
        "optimizer": _STR,
        "steps": _INT,
        "feature_residual": _FLOAT,
        "label_step": _BOOL,
        "label_step_used": _BOOL,
        "recovery_error_before_labels": _FLOAT,
    },
    "deep_linear": {"map_rank": _INT, "range_residual": _FLOAT},
    "private": {
        "epsilon": _FLOAT,
        "delta": _FLOAT,
        "norm_bound": _FLOAT,
        "sigma": _FLOAT,
        "sigma_0": _FLOAT,
        "sigma_0_source": _STR,
        "noise_constant": _FLOAT,
    },
    "label_only": {"m": _INT, "p": _INT, "feature_rank": _INT, "predicted_error": _FLOAT, "exact": _BOOL},
    "random": {"indices": _INTS},
    "herding": {"indices": _INTS},
    "kip": {
        "init_indices": _optional(_INTS),
        "steps": _INT,
        "lr": _FLOAT,
        "batch_size": _INT,
        "learn_labels": _BOOL,
        "reg_scale": _FLOAT,
        "dtype": _STR,
        "cache_features": _BOOL,
        "initial_loss": _optional(_FLOAT),
        "final_loss": _FLOAT,
        "loss_history": _STEP_LOSSES,
        "setup_seconds": _FLOAT,
        "step_seconds": _optional(_FLOAT),
    },
    "moments": {
        "memory_points": _INT,
        "max_points": _optional(_INT),
        "shrink": _STR,
        "aligned": _BOOL,
    },
    "manual": {},
}

INITS = ("noise", "real")


@functools.lru_cache(maxsize=1)
def installed_version() -> str:
    """The version of the installed distillmem package (``"unknown"`` when run from an uninstalled tree)."""
    try:
        return importlib.metadata.version("distillmem")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass(frozen=True)
class Provenance:
    """How a DistilledSet was made.

    Attributes
    ----------
    method : str
        One of ``METHODS``.
    dataset : str, optional
        Name of the data the set was made from.
    n : int, optional
        Samples the model the set stands for was fitted on (>= 0).
    ipc : int, optional
        Points per class (>= 1).
    seed : int, optional
    init : {"noise", "real"}, optional
    teacher_reg : float, optional
        lambda of the original model (>= 0).
    reg_s : float, optional
        lambda_S solved for, before the range scale (>= 0).
    range_scale : float
        s > 0: the set stores features and targets divided by s and reg_s / s^2.
    recovery_error : float, optional
        ||W_S - W||_F / ||W||_F of the KRR refitted on the set (>= 0).
    seconds : float, optional
        Time the builder took.
    extras : dict
        Builder-specific values; keys and types per method in ``EXTRAS``.
    created : str
        Local time the record was made, ISO 8601.
    distillmem_version : str
        Version of the installed package that made the set.
    schema_version : int
        ``SCHEMA_VERSION`` of this record.
    """

    method: str
    dataset: str | None = None
    n: int | None = None
    ipc: int | None = None
    seed: int | None = None
    init: str | None = None
    teacher_reg: float | None = None
    reg_s: float | None = None
    range_scale: float = 1.0
    recovery_error: float | None = None
    seconds: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=_now)
    distillmem_version: str = field(default_factory=installed_version)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"provenance.method must be one of {sorted(METHODS)}, got {self.method!r}")
        if not _is_int(self.schema_version) or self.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"provenance.schema_version is {self.schema_version!r}; this distillmem reads {SCHEMA_VERSION} "
                "(a newer version may have written it)"
            )
        for name in ("created", "distillmem_version"):
            _check(name, getattr(self, name), _STR)
        _check("dataset", self.dataset, _optional(_STR))
        for name, minimum in (("n", 0), ("ipc", 1)):
            value = getattr(self, name)
            _check(name, value, _optional(_INT))
            if value is not None and value < minimum:
                raise ValueError(f"provenance.{name} must be >= {minimum}, got {value}")
        _check("seed", self.seed, _optional(_INT))
        if self.init is not None and self.init not in INITS:
            raise ValueError(f"provenance.init must be one of {INITS} or null, got {self.init!r}")
        for name in ("teacher_reg", "reg_s", "recovery_error", "seconds"):
            self._set_float(name, allow_inf=name == "recovery_error")
        self._set_float("range_scale", positive=True)
        self._set_extras()

    def _set_float(self, name: str, *, positive: bool = False, allow_inf: bool = False) -> None:
        value = getattr(self, name)
        if value is None and not positive:
            return
        _check(name, value, _FLOAT)
        if math.isinf(value) and not allow_inf:
            raise ValueError(f"provenance.{name} must be finite, got {value}")
        if value < 0 or (positive and value == 0):
            raise ValueError(f"provenance.{name} must be {'> 0' if positive else '>= 0'}, got {value}")
        object.__setattr__(self, name, float(value))

    def _set_extras(self) -> None:
        if not isinstance(self.extras, dict):
            raise TypeError(f"provenance.extras must be a dict, got {type(self.extras).__name__}")
        try:
            # A JSON round trip turns tuples into lists, so a record equals its reloaded copy.
            extras = json.loads(json.dumps(self.extras))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"provenance.extras must hold JSON values (numbers, strings, lists): {exc}") from None
        allowed = EXTRAS[self.method]
        for key, value in extras.items():
            if key not in allowed:
                raise ValueError(
                    f"provenance.extras has key {key!r}, not one of method {self.method!r}: {sorted(allowed)}"
                )
            _check(f"extras.{key}", value, allowed[key])
        object.__setattr__(self, "extras", extras)

    # -- serialisation ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "Provenance":
        """The record from ``to_dict()`` output (or an older untyped dict); ValueError/TypeError name the field."""
        if not isinstance(data, dict):
            raise TypeError(f"provenance must be a JSON object, got {type(data).__name__}")
        if "schema_version" not in data:
            data = _from_untyped(data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"provenance has unknown field(s) {unknown}")
        if "method" not in data:
            raise ValueError("provenance.method is missing")
        return cls(**data)


def _check(name: str, value: Any, kind: _Kind) -> None:
    if not kind.accepts(value):
        raise TypeError(f"provenance.{name} must be {kind.text}, got {value!r} ({type(value).__name__})")


_COMMON = ("dataset", "n", "ipc", "seed", "init", "teacher_reg", "reg_s", "range_scale", "recovery_error", "seconds",
           "created", "distillmem_version")
_UNTYPED_METHODS = {"deep-linear": "deep_linear", "label-only": "label_only", "dp-gaussian": "private"}


def _from_untyped(data: dict[str, Any]) -> dict[str, Any]:
    """The fields of a provenance dict written before schema 1 (free keys, ``method`` or ``kind`` or neither)."""
    if data.get("kind") == "moment-memory":
        method = "moments"
    else:
        method = data.get("method", "closed_form")
        method = _UNTYPED_METHODS.get(method, method)
    fields = {key: data[key] for key in _COMMON if key in data}
    if method == "moments" and "memory_reg" in data:
        fields["teacher_reg"] = fields["reg_s"] = data["memory_reg"]
    fields.setdefault("created", "unknown")
    fields.setdefault("distillmem_version", "unknown")
    allowed = EXTRAS.get(method, {})
    extras = {key: value for key, value in data.items() if key in allowed}
    if method == "private" and isinstance(extras.get("noise_constant"), str):
        extras["noise_constant"] = 2.0 * math.sqrt(2.0)  # stored as the text "2*sqrt(2)"
    return {**fields, "method": method, "extras": extras, "schema_version": SCHEMA_VERSION}
