"""DistilledSet: the synthetic points, their targets and everything needed to use them."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ._io import atomic_write_bytes
from .data import unnormalize
from .features import FeatureMap, from_spec

FORMAT = "distillmem.DistilledSet"
FORMAT_VERSION = "1"
_TENSORS = ("x", "y", "labels")


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
    provenance : dict
        Where the set came from: dataset, n, seed, init, time, recovery error, ...
    """

    x: torch.Tensor
    y: torch.Tensor
    labels: torch.Tensor
    feature_map_spec: dict[str, Any]
    reg: float
    image_shape: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

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
        if self.image_shape is not None and int(torch.tensor(self.image_shape).prod()) != self.x.shape[1]:
            raise ValueError(f"image_shape {self.image_shape} does not match {self.x.shape[1]} features")
        if not self.reg >= 0:
            raise ValueError(f"reg must be >= 0, got {self.reg!r}")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def n_classes(self) -> int:
        return self.y.shape[1]

    @property
    def recovery_error(self) -> float | None:
        """||W_S - W|| / ||W|| measured when the set was made."""
        return self.provenance.get("recovery_error")

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
        """Write a safetensors file atomically; loading it runs no code."""
        tensors = {
            "x": self.x.detach().cpu().to(torch.float64).contiguous(),
            "y": self.y.detach().cpu().to(torch.float64).contiguous(),
            "labels": self.labels.detach().cpu().to(torch.int64).contiguous(),
        }
        meta = {
            "feature_map_spec": self.feature_map_spec,
            "reg": self.reg,
            "image_shape": self.image_shape,
            "mean": self.mean,
            "std": self.std,
            "provenance": self.provenance,
        }
        meta_json = json.dumps(meta)
        header = {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta_json, "sha256": _digest(tensors, meta_json)}
        return atomic_write_bytes(path, save_tensors(tensors, metadata=header))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DistilledSet":
        """Read a file written by ``save``; a truncated, corrupt or foreign file raises ValueError."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no DistilledSet file at {path}")
        data = path.read_bytes()
        header = _read_metadata(data, path)
        if header.get("format") != FORMAT:
            raise ValueError(f"{path} is a safetensors file but not a distillmem DistilledSet")
        if header.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} has DistilledSet format version {header.get('format_version')!r}; this distillmem reads {FORMAT_VERSION}")
        try:
            tensors = load_tensors(data)
        except (SafetensorError, RuntimeError, ValueError) as exc:
            raise ValueError(f"{path} is corrupt or truncated: {exc}") from None
        if set(tensors) != set(_TENSORS):
            raise ValueError(f"{path} holds tensors {sorted(tensors)}, expected {list(_TENSORS)}")
        if _digest(tensors, header.get("meta", "")) != header.get("sha256"):
            raise ValueError(f"{path} is corrupt: its checksum does not match its contents")
        try:
            meta = json.loads(header["meta"])
            return cls(
                tensors["x"],
                tensors["y"],
                tensors["labels"],
                meta["feature_map_spec"],
                float(meta["reg"]),
                None if meta["image_shape"] is None else tuple(meta["image_shape"]),
                None if meta["mean"] is None else tuple(meta["mean"]),
                None if meta["std"] is None else tuple(meta["std"]),
                meta["provenance"],
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} has malformed DistilledSet metadata: {exc!r}") from None


def _digest(tensors: dict[str, torch.Tensor], meta_json: str) -> str:
    """sha256 over the tensors' bytes and the metadata, so a flipped byte anywhere is caught."""
    sha = hashlib.sha256(meta_json.encode())
    for name in _TENSORS:
        sha.update(tensors[name].numpy().tobytes())
    return sha.hexdigest()


def _read_metadata(data: bytes, path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header: 8-byte little-endian length, then JSON."""
    if len(data) < 8:
        raise ValueError(f"{path} is not a DistilledSet file: it is only {len(data)} bytes long")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise ValueError(f"{path} is truncated or not a DistilledSet file: its header claims {length} bytes")
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{path} is not a DistilledSet file: its header is not valid JSON") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise ValueError(f"{path} is not a DistilledSet file: it has no distillmem metadata")
    return metadata
