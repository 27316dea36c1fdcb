"""The feature-map contract shared by every map: forward, preimage, spec."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .._validation import check_int

_REGISTRY: dict[str, type["FeatureMap"]] = {}


class FeatureMap(nn.Module):
    """A frozen, seeded map phi: R^d -> R^p with a preimage where one exists.

    Subclasses draw their parameters in float64 from ``seed`` in ``__init__``,
    so ``spec()`` (name, params, seed) rebuilds the exact same map. ``forward``
    runs in the dtype and on the device of its input.
    """

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _REGISTRY[cls.name] = cls

    def __init__(self) -> None:
        super().__init__()
        self.requires_grad_(False)
        self._cast_cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    # -- shapes -------------------------------------------------------------
    def out_features(self, in_features: int) -> int:
        """p, the width of phi(x) for inputs of width ``in_features``."""
        raise NotImplementedError

    @property
    def surjective(self) -> bool:
        """Whether every feature vector has a preimage (up to ``range_scale``)."""
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError if ``x`` of shape (n, d) has the wrong width."""

    # -- maps ---------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, d) -> (n, p)
        raise NotImplementedError

    def preimage(self, features: torch.Tensor) -> torch.Tensor:
        """Inputs x of shape (m, d) with phi(x) = features, features of shape (m, p)."""
        raise NotImplementedError

    def range_scale(self, features: torch.Tensor) -> float:
        """A divisor s > 0 that brings ``features`` inside the range of phi.

        Maps whose range is all of R^p return 1. The distiller divides the
        features and targets by s and the ridge by s^2, which leaves the
        refitted weights unchanged (docs/math.md §11.2).
        """
        return 1.0

    def on_device(self, device: torch.device) -> "FeatureMap":
        """This map if all its tensors are on ``device``, else a copy moved there.

        Estimators and builders call this instead of ``.to(device)`` so that a
        caller's map is never moved behind their back, and so that the common
        case (already on the device) costs no copy.
        """
        tensors = [*self.parameters(), *self.buffers()]
        if all(_same_device(t.device, device) for t in tensors):
            return self
        return copy.deepcopy(self).to(device)

    # -- serialization ------------------------------------------------------
    def spec_params(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def seed(self) -> int | None:
        """The seed the parameters were drawn from (subclasses store it as ``_seed``); None if none."""
        return getattr(self, "_seed", None)

    def spec(self) -> dict[str, Any]:
        """A JSON-able description from which ``from_spec`` rebuilds this map."""
        return {"name": self.name, "params": self.spec_params(), "seed": self.seed}

    def extra_repr(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.spec_params().items())
        seed = f", seed={self.seed}" if self.seed is not None else ""
        return params + seed

    # -- helpers for subclasses --------------------------------------------
    def _cast(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Buffer ``name`` in the dtype and on the device of ``like`` (cached)."""
        key = (name, like.device, like.dtype)
        cached = self._cast_cache.get(key)
        if cached is None:
            cached = getattr(self, name).to(device=like.device, dtype=like.dtype)
            self._cast_cache[key] = cached
        return cached

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module signature
        # Moving or casting the module invalidates the cast copies.
        self._cast_cache = {}
        return super()._apply(fn, recurse)


def feature_map_names() -> tuple[str, ...]:
    """The ``spec()["name"]`` values ``from_spec`` knows, sorted."""
    return tuple(sorted(_REGISTRY))


def from_spec(spec: dict[str, Any]) -> FeatureMap:
    """Rebuild a feature map from ``FeatureMap.spec()``."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"a feature-map spec must be a dict with a 'name', got {spec!r}")
    cls = _REGISTRY.get(spec["name"])
    if cls is None:
        raise ValueError(f"unknown feature map {spec['name']!r}; known: {list(feature_map_names())}")
    params = dict(spec.get("params", {}))
    if spec.get("seed") is not None:
        params["seed"] = spec["seed"]
    return cls(**params)


def layer_widths(in_features: Any, widths: Any) -> tuple[int, tuple[int, ...]]:
    """(d, (d_1, ..., d_L)) as plain ints >= 1; ``widths=None`` is one layer of width d.

    Plain ints (not numpy integers) keep ``spec()`` JSON-able.
    """
    in_features = check_int(in_features, "in_features", minimum=1)
    if widths is None:
        return in_features, (in_features,)
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) == 0:
        raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths!r}")
    return in_features, tuple(check_int(w, f"widths[{i}]", minimum=1) for i, w in enumerate(widths))


def check_width(x: torch.Tensor, expected: int, owner: str) -> None:
    if x.ndim != 2 or x.shape[1] != expected:
        raise ValueError(f"{owner} expects inputs of shape (n, {expected}), found {tuple(x.shape)}")


def _same_device(actual: torch.device, wanted: torch.device) -> bool:
    """``wanted`` without an index ("cuda") matches any device of its type ("cuda:0")."""
    return actual.type == wanted.type and (wanted.index is None or actual.index == wanted.index)
