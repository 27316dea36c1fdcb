"""DistilledSet: the synthetic points, their targets and everything needed to use them."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._validation import check_int, check_real
from .container import read_container, write_container
from .data import unnormalize
from .features import FeatureMap, from_spec
from .provenance import Provenance
from .features.base import feature_map_names

FORMAT = "distillmem.DistilledSet"
FORMAT_VERSION = "1"
_TENSORS = ("x", "y", "labels")
_DTYPES = {"x": torch.float64, "y": torch.float64, "labels": torch.int64}
_META_FIELDS = ("feature_map_spec", "reg", "image_shape", "mean", "std", "provenance")
#: Spec parameters that size the tensors drawn when a feature map is rebuilt.
_SIZE_PARAMS = ("in_features", "out_features", "widths", "channels", "image_shape", "input_shape", "kernel_size", "stride", "padding")
#: No size in a loaded feature-map spec may exceed this many times max(points, input width).
MAX_WIDTH_RATIO = 16


@dataclass(eq=False)
class DistilledSet:
    """A distilled dataset: KRR on (x, y) with ``feature_map()`` and ``reg`` gives the original W.

    Attributes
    ----------
    x : torch.Tensor of shape (m, d), float64
        Synthetic inputs in the normalised, flattened input space.
    y : torch.Tensor of shape (m, k), float64
        Targets: one-hot or soft labels (possibly divided by a range scale).
    labels : torch.Tensor of shape (m,), int64
        The class each point stands for.
    feature_map_spec : dict
        ``FeatureMap.spec()`` of phi.
    reg : float
        lambda to fit the KRR head on (x, y) with.
    image_shape : tuple of int, optional
        (C, H, W) to view ``x`` as images.
    mean, std : tuple of float, optional
        Per-channel normalisation of the inputs, to un-normalise images.
    provenance : Provenance
        How the set was made: method, dataset, n, seed, weight error, version, ...
        (``method="manual"`` when not given).
    """

    x: torch.Tensor
    y: torch.Tensor
    labels: torch.Tensor
    feature_map_spec: dict[str, Any]
    reg: float
    image_shape: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    provenance: Provenance = field(default_factory=lambda: Provenance(method="manual"))

    def __post_init__(self) -> None:
        # Per-channel statistics may come as a scalar, an array or a sequence; keep plain floats.
        if self.mean is not None:
            self.mean = tuple(float(v) for v in np.atleast_1d(self.mean))
        if self.std is not None:
            self.std = tuple(float(v) for v in np.atleast_1d(self.std))
        m = self.x.shape[0]
        if self.x.ndim != 2 or self.y.ndim != 2 or self.labels.ndim != 1:
            raise ValueError(
                f"DistilledSet needs x (m, d), y (m, k), labels (m,); found {tuple(self.x.shape)}, "
                f"{tuple(self.y.shape)}, {tuple(self.labels.shape)}"
            )
        if self.y.shape[0] != m or self.labels.shape[0] != m:
            raise ValueError(f"x, y and labels disagree on the number of points: {m}, {self.y.shape[0]}, {self.labels.shape[0]}")
        if 0 in self.x.shape or 0 in self.y.shape:
            raise ValueError(f"DistilledSet needs at least one point, feature and class; found x {tuple(self.x.shape)}, y {tuple(self.y.shape)}")
        for name in ("x", "y"):
            values = getattr(self, name)
            if not values.is_floating_point():
                raise ValueError(f"{name} must hold floating-point values, found {values.dtype}")
            if not bool(torch.isfinite(values).all()):
                raise ValueError(f"{name} contains NaN or Inf")
        if self.labels.is_floating_point() or self.labels.is_complex() or self.labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer class indices, found {self.labels.dtype}")
        low, high = int(self.labels.min()), int(self.labels.max())
        if low < 0 or high >= self.n_classes:
            raise ValueError(f"labels must lie in [0, {self.n_classes}) for y with {self.n_classes} columns, found [{low}, {high}]")
        if self.image_shape is not None:
            self.image_shape = tuple(check_int(s, "image_shape entry", minimum=1) for s in self.image_shape)
            if math.prod(self.image_shape) != self.x.shape[1]:
                raise ValueError(f"image_shape {self.image_shape} does not match {self.x.shape[1]} features")
        self._check_statistics()
        self.reg = check_real(self.reg, "reg", minimum=0.0)
        if not isinstance(self.provenance, Provenance):
            raise TypeError(f"provenance must be a distillmem Provenance, got {type(self.provenance).__name__}")

    def _check_statistics(self) -> None:
        """mean and std: finite, std > 0, one value per channel (or a divisor of d without image_shape)."""
        channels = None if self.image_shape is None else self.image_shape[0]
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is None:
                continue
            if not values or not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be one or more finite numbers, got {values}")
            if name == "std" and min(values) <= 0:
                raise ValueError(f"std must be positive, got {values}")
            if channels is not None and len(values) != channels:
                raise ValueError(f"{name} has {len(values)} values for image_shape {self.image_shape} with {channels} channels")
            if channels is None and self.x.shape[1] % len(values):
                raise ValueError(f"{name} has {len(values)} values, which do not split {self.x.shape[1]} features into channels")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def n_classes(self) -> int:
        return self.y.shape[1]

    @property
    def recovery_error(self) -> float | None:
        """||W_S - W|| / ||W|| measured when the set was made."""
        return self.provenance.recovery_error

    def feature_map(self) -> FeatureMap:
        """A fresh copy of phi, rebuilt from its spec."""
        return from_spec(self.feature_map_spec)

    def fit_krr(self, **kwargs: Any):
        """The KRR head fitted on this set (its weights equal the original model's)."""
        from .krr import KRR

        return KRR(self.feature_map(), reg=self.reg, n_classes=self.n_classes, **kwargs).fit(self.x, self.y)

    def images(self) -> torch.Tensor:
        """Points as un-normalised images (m, C, H, W) in the [0, 1] pixel scale (not clipped)."""
        if self.image_shape is None:
            raise ValueError("this DistilledSet has no image_shape, so its points cannot be shown as images")
        images = self.x.reshape(len(self), *self.image_shape)
        if self.mean is None or self.std is None:
            return images
        return unnormalize(images, self.mean, self.std)

    # -- files --------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file atomically; loading it runs no code.

        A symlink is written through to its target; an existing file keeps its
        permissions, and a read-only one is refused (PermissionError). See
        ``distillmem.files`` for how temporaries of killed saves are cleaned up.
        """
        tensors = {
            "x": self.x.to(torch.float64),
            "y": self.y.to(torch.float64),
            "labels": self.labels.to(torch.int64),
        }
        meta = {
            "feature_map_spec": self.feature_map_spec,
            "reg": self.reg,
            "image_shape": self.image_shape,
            "mean": self.mean,
            "std": self.std,
            "provenance": self.provenance.to_dict(),
        }
        return write_container(path, tensors, meta, kind=FORMAT, version=FORMAT_VERSION, order=_TENSORS)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DistilledSet":
        """Read a file written by ``save``; a truncated, corrupt or foreign file raises ValueError."""
        path = Path(path)
        tensors, meta = read_container(path, kind=FORMAT, version=FORMAT_VERSION, order=_TENSORS)
        # The checksum only detects accidents: everything below is checked as if crafted.
        meta = _check_meta(meta, path)
        try:
            for name in _TENSORS:
                if tensors[name].dtype != _DTYPES[name]:
                    raise ValueError(f"{name} must be {_DTYPES[name]} as save writes it, found {tensors[name].dtype}")
            if tensors["x"].ndim == 2:
                _check_feature_map_spec(meta["feature_map_spec"], *tensors["x"].shape)
            return cls(
                tensors["x"],
                tensors["y"],
                tensors["labels"],
                meta["feature_map_spec"],
                meta["reg"],
                _numbers(meta, "image_shape"),
                _numbers(meta, "mean"),
                _numbers(meta, "std"),
                Provenance.from_dict(meta["provenance"]),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path} is not a valid DistilledSet: {exc}") from None


def _check_meta(meta: Any, path: Path) -> dict[str, Any]:
    """The ``meta`` record: a JSON object with exactly the fields ``save`` writes."""
    if not isinstance(meta, dict):
        raise ValueError(f"{path} has malformed DistilledSet metadata: expected a JSON object, found {type(meta).__name__}")
    missing, unknown = sorted(set(_META_FIELDS) - set(meta)), sorted(set(meta) - set(_META_FIELDS))
    if missing or unknown:
        raise ValueError(f"{path} has malformed DistilledSet metadata: missing fields {missing}, unknown fields {unknown}")
    return meta


def _numbers(meta: dict[str, Any], name: str) -> tuple[Any, ...] | None:
    """Field ``name`` of the metadata: None or a list of numbers, as a tuple."""
    value = meta[name]
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list or null, found {type(value).__name__}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{name} must hold numbers, found {v!r}")
    return tuple(value)


def _check_feature_map_spec(spec: Any, n_points: int, in_features: int) -> None:
    """Check a feature-map spec read from a file of ``n_points`` points of width ``in_features``.

    The map is rebuilt from its spec, so every size in it is bounded by the
    data actually stored: no more than ``MAX_WIDTH_RATIO`` times the larger of
    the point count and the input width. A crafted width thus fails here, not
    as a huge allocation when the map is rebuilt.
    """
    if not isinstance(spec, dict) or set(spec) != {"name", "params", "seed"}:
        raise ValueError(f"feature_map_spec must be an object with keys name, params and seed, got {spec!r:.200}")
    name, params, seed = spec["name"], spec["params"], spec["seed"]
    if name not in feature_map_names():
        raise ValueError(f"feature_map_spec names an unknown feature map {name!r:.100}; known: {list(feature_map_names())}")
    if not isinstance(params, dict):
        raise ValueError(f"feature_map_spec.params must be an object, found {type(params).__name__}")
    if seed is not None:
        seed = check_int(seed, "feature_map_spec.seed")
        if not -(2**63) <= seed < 2**64:
            raise ValueError(f"feature_map_spec.seed {seed} is out of the 64-bit range")
    limit = MAX_WIDTH_RATIO * max(n_points, in_features)
    for key in _SIZE_PARAMS:
        value = params.get(key)
        if value is None:
            continue
        for size in value if isinstance(value, list) else [value]:
            size = check_int(size, f"feature_map_spec.params.{key}", minimum=0 if key == "padding" else 1)
            # A ModuleMap's output width is the user's module's, nothing is allocated from it.
            if size > limit and not (name == "module" and key == "out_features"):
                raise ValueError(
                    f"feature_map_spec.params.{key} = {size} exceeds {limit}, {MAX_WIDTH_RATIO} times the larger of "
                    f"the set's {n_points} points and {in_features} input features"
                )
    if params.get("in_features") is not None and params["in_features"] != in_features:
        raise ValueError(f"feature_map_spec.params.in_features = {params['in_features']} but the points have {in_features} features")
    for key in ("image_shape", "input_shape"):
        if isinstance(params.get(key), list) and math.prod(params[key]) != in_features:
            raise ValueError(f"feature_map_spec.params.{key} = {params[key]} does not match the points' {in_features} features")
