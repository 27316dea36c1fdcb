"""Features of a dataset under a feature map, computed once and kept in a checked file.

``cached_features(feature_map, x, path)`` returns phi(x) of shape (n, p): read
from ``path`` when the file there was made from the same map and the same
data, otherwise computed in chunks (with a progress bar) and written there.
The file is a distillmem container (checksummed safetensors, written
atomically) whose metadata hold the key:

- the map's ``spec()`` (for ``Pretrained``: backbone, image size, input
  statistics and the weights' sha256);
- the data's identity: sha256 of its bytes, its shape and dtype.

A file with another key is never used: it raises ValueError saying what
differs, and is replaced only with ``refresh=True``. A file that is not a
feature cache, or is corrupt, is never replaced. ``FeatureCache.load(path)``
reads a cache without the data or the map.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ._stats import checked_features, iter_array_chunks
from ._validation import ArrayLike, as_samples, check_int, resolve_device
from .container import read_container, write_container
from .features import FeatureMap, Pretrained
from .provenance import installed_version

FORMAT = "distillmem.FeatureCache"
FORMAT_VERSION = "1"
_TENSORS = ("features",)
_HASH_ROWS = 4096


@dataclass(frozen=True, eq=False)
class FeatureCache:
    """A loaded feature cache: features (n, p) and the key they were computed under."""

    features: torch.Tensor
    feature_map_spec: dict[str, Any]
    data: dict[str, Any]  # {"sha256": str, "shape": [n, ...], "dtype": str}
    dataset: str | None = None
    compute_seconds: float | None = None  # wall time of the computation that made the file

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureCache":
        """Read and check the cache at ``path`` (FileNotFoundError if absent, ValueError if corrupt or foreign)."""
        tensors, meta = read_container(path, kind=FORMAT, version=FORMAT_VERSION, order=_TENSORS)
        features = tensors["features"]
        if not isinstance(meta, dict) or not isinstance(meta.get("feature_map"), dict) or not _is_identity(meta.get("data")):
            raise ValueError(f"{path} has malformed feature-cache metadata")
        if features.ndim != 2 or not features.is_floating_point() or features.shape[0] != meta["data"]["shape"][0]:
            raise ValueError(
                f"{path} holds features of shape {tuple(features.shape)} and dtype {features.dtype}, expected "
                f"floating (n={meta['data']['shape'][0]}, p)"
            )
        seconds = meta.get("compute_seconds")
        return cls(features, meta["feature_map"], meta["data"], meta.get("dataset"), None if seconds is None else float(seconds))

    def mismatch(self, feature_map_spec: dict[str, Any], data: dict[str, Any]) -> str | None:
        """Why this cache does not hold the features of ``data`` under that map, or None if it does."""
        reasons = []
        if self.feature_map_spec != feature_map_spec:
            reasons.append(f"the feature map differs ({_spec_difference(self.feature_map_spec, feature_map_spec)})")
        if self.data != data:
            reasons.append(
                f"the data differ (cached {_describe(self.data)}, given {_describe(data)})"
            )
        return "; ".join(reasons) or None


def cache_path(folder: str | os.PathLike, dataset: str, split: str, feature_map: FeatureMap) -> Path:
    """The file of a split's features under a map in a cache folder: ``<dataset>-<split>-<map>.dmf``.

    ``<map>`` is ``<backbone>-<image size>`` for ``Pretrained`` and ``<name>-<sha256 of the spec, 12 digits>``
    otherwise. The name only finds the file: ``cached_features`` checks its contents against the data and the map.
    """
    if isinstance(feature_map, Pretrained):
        tag = f"{feature_map.backbone_name}-{feature_map.image_size}"
    else:
        spec = json.dumps(feature_map.spec(), sort_keys=True).encode()
        tag = f"{feature_map.name}-{hashlib.sha256(spec).hexdigest()[:12]}"
    return Path(folder) / f"{dataset}-{split}-{tag}.dmf"


def data_identity(x: Any) -> dict[str, Any]:
    """{"sha256", "shape", "dtype"} of an array (n, ...): its bytes in C order, hashed by row blocks."""
    flat = as_samples(x)
    sha = hashlib.sha256()
    for start in range(0, flat.shape[0], _HASH_ROWS):
        block = flat[start : start + _HASH_ROWS]
        block = block.detach().cpu().contiguous().numpy() if isinstance(block, torch.Tensor) else np.ascontiguousarray(block)
        sha.update(memoryview(block).cast("B"))
    return {"sha256": sha.hexdigest(), "shape": [int(s) for s in x.shape], "dtype": str(x.dtype).removeprefix("torch.")}


def cached_features(
    feature_map: FeatureMap,
    x: Any,
    path: str | os.PathLike,
    *,
    chunk_size: int = 500,
    refresh: bool = False,
    progress: bool = True,
    dataset: str | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """phi(x) (n, p) on the CPU, from the cache at ``path`` or computed and stored there.

    ``x`` is a tensor or numpy array (n, d) or (n, C, H, W) (memory-mapped
    too), passed to the map as (b, d) rows of ``chunk_size`` in its own float
    dtype on ``device``. ``refresh=True`` recomputes and replaces a feature
    cache made with another key; ``dataset`` is a name stored for readers.
    """
    if not isinstance(feature_map, FeatureMap):
        raise TypeError(f"feature_map must be a distillmem FeatureMap, got {type(feature_map).__name__}")
    chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
    spec, data = feature_map.spec(), data_identity(x)
    path = Path(path)
    if path.exists():
        cache = FeatureCache.load(path)  # a foreign or corrupt file raises here, whatever refresh says
        reason = cache.mismatch(spec, data)
        if reason is None:
            return cache.features
        if not refresh:
            raise ValueError(
                f"the feature cache {path} was made from other inputs: {reason}. Pass refresh=True to recompute "
                "and replace it, or choose another path"
            )
    start = time.perf_counter()
    features = _compute(feature_map, as_samples(x), chunk_size, progress, resolve_device(device), dataset)
    meta = {
        "feature_map": spec, "data": data, "dataset": dataset, "compute_seconds": time.perf_counter() - start,
        "distillmem_version": installed_version(),
    }
    write_container(path, {"features": features}, meta, kind=FORMAT, version=FORMAT_VERSION, order=_TENSORS)
    return features


def _compute(
    feature_map: FeatureMap, flat: ArrayLike, chunk_size: int, progress: bool, device: torch.device, dataset: str | None
) -> torch.Tensor:
    fmap = feature_map.on_device(device)
    n = flat.shape[0]
    out: torch.Tensor | None = None
    bar = tqdm(total=n, desc=f"features {dataset or ''}".rstrip(), unit="img", disable=not progress, leave=False)
    with bar:
        start = 0
        for chunk, _ in iter_array_chunks(flat, None, chunk_size, device):
            f = checked_features(fmap, chunk, first_row=start).cpu()
            if out is None:
                out = torch.empty(n, f.shape[1], dtype=f.dtype)
            out[start : start + f.shape[0]] = f
            start += f.shape[0]
            bar.update(f.shape[0])
    assert out is not None  # as_samples refuses empty data
    return out


def _is_identity(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("sha256"), str)
        and isinstance(value.get("dtype"), str)
        and isinstance(value.get("shape"), list)
        and len(value["shape"]) >= 1
        and all(isinstance(s, int) for s in value["shape"])
    )


def _describe(data: dict[str, Any]) -> str:
    return f"{data['dtype']} {tuple(data['shape'])} sha256 {data['sha256'][:12]}"


def _spec_difference(cached: dict[str, Any], given: dict[str, Any]) -> str:
    if cached.get("name") != given.get("name"):
        return f"cached {cached.get('name')!r}, given {given.get('name')!r}"
    a, b = cached.get("params", {}), given.get("params", {})
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    parts = [f"{k}: cached {a.get(k)!r}, given {b.get(k)!r}" for k in keys]
    if cached.get("seed") != given.get("seed"):
        parts.append(f"seed: cached {cached.get('seed')!r}, given {given.get('seed')!r}")
    return "; ".join(parts)
