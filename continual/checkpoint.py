"""Save and restore a KRRStrategy's memory in a safetensors file (loading runs no code)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

import distillmem as dm
from distillmem.container import read_container, write_container
from distillmem.sketch import GramSketch

from .strategy import KRRStrategy

FORMAT = "distillmem.continual.KRRMemory"
FORMAT_VERSION = "2"  # 2: a corrected sketch is stored folded, as R - C
_TENSORS = {"moments": ("features", "targets"), "sketch": ("sketch", "diagonal"), "per-class": ("x", "y", "labels")}


def save_memory(strategy: KRRStrategy, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write the strategy's memory, lambda and class bookkeeping to ``path`` atomically.

    An existing file is kept unless ``overwrite=True``.
    """
    if not isinstance(strategy, KRRStrategy):
        raise TypeError(f"strategy must be a KRRStrategy, got {type(strategy).__name__}")
    if strategy.memory is None:
        raise ValueError("the strategy has no memory yet: train it on an experience before saving")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    memory = strategy.memory
    if strategy.memory_kind == "moments":
        tensors = {"features": memory.features_, "targets": memory.targets_}
        extra = {"n_seen": memory.n_seen_, "n_features_in": memory.n_features_in_}
    elif strategy.memory_kind == "sketch":
        # Folded (with the correction): R - C alone; otherwise R.
        tensors = {"sketch": memory.sketch_, "diagonal": memory.diagonal_, _cross_name(strategy): memory.target_}
        extra = {"n_seen": memory.n_seen_, "n_features_in": memory.n_features_in_, "shrinkage": memory.shrinkage_}
    else:
        tensors = {"x": memory.x, "y": memory.y, "labels": memory.labels}
        extra = {"set_reg": memory.reg}
    meta = {
        "kind": strategy.memory_kind,
        "feature_map_spec": strategy.feature_map.spec(),
        "n_classes": strategy.n_classes,
        "max_points": strategy.max_points,
        "shrink": strategy.shrink,
        "reg": strategy.reg_,
        "memory_classes": list(strategy.memory_classes_),
        **extra,
    }
    return write_container(path, tensors, meta, kind=FORMAT, version=FORMAT_VERSION)


def load_memory(strategy: KRRStrategy, path: str | os.PathLike[str]) -> KRRStrategy:
    """Restore a memory saved by ``save_memory`` into a strategy built with the same settings; refits its head.

    The strategy's feature map, memory kind, n_classes, max_points and shrink
    must match the file's; a foreign, corrupt or truncated file raises ValueError.
    """
    if not isinstance(strategy, KRRStrategy):
        raise TypeError(f"strategy must be a KRRStrategy, got {type(strategy).__name__}")
    tensors, meta = read_container(path, kind=FORMAT, version=FORMAT_VERSION)
    if not isinstance(meta, dict):
        raise ValueError(f"{path} has malformed memory metadata: expected a JSON object")
    expected = {
        "kind": strategy.memory_kind,
        "feature_map_spec": strategy.feature_map.spec(),
        "max_points": strategy.max_points,
        "shrink": strategy.shrink,
    }
    if strategy.n_classes is not None:
        expected["n_classes"] = strategy.n_classes
    for key, value in expected.items():
        if json.loads(json.dumps(value)) != meta.get(key):
            raise ValueError(f"{path} holds a memory with {key}={meta.get(key)!r}, the strategy has {value!r}")
    names = _TENSORS[meta["kind"]] + ((_cross_name(strategy),) if meta["kind"] == "sketch" else ())
    if set(tensors) != set(names):
        raise ValueError(f"{path} holds tensors {sorted(tensors)}, expected {list(names)}")
    k = int(meta["n_classes"])
    if meta["kind"] == "moments":
        memory = dm.MomentMemory.from_features(
            strategy.feature_map, k, tensors["features"], tensors["targets"], n_seen=int(meta["n_seen"]),
            max_points=strategy.max_points, shrink=strategy.shrink,
        )
        weights = memory.fit_krr(float(meta["reg"])).weights_
    elif meta["kind"] == "sketch":
        memory = GramSketch.from_arrays(
            strategy.feature_map, tensors["sketch"], tensors[_cross_name(strategy)], float(meta["shrinkage"]),
            tensors["diagonal"], n_seen=int(meta["n_seen"]), n_features_in=int(meta["n_features_in"]),
            rank=strategy.max_points, reg=strategy.sketch_reg, fold=strategy.correction,
        )
        weights = memory.fit_krr(float(meta["reg"])).weights_
    else:
        memory = dm.DistilledSet(
            tensors["x"], tensors["y"], tensors["labels"], strategy.feature_map.spec(), float(meta["set_reg"])
        )
        head = memory.fit_krr()
        weights = torch.zeros(k, head.weights_.shape[1], dtype=torch.float64)
        weights[list(meta["memory_classes"])] = head.weights_
    strategy.n_classes = k
    strategy.memory, strategy.memory_classes_, strategy.reg_ = memory, tuple(meta["memory_classes"]), float(meta["reg"])
    strategy.model.weights = weights
    return strategy


def _cross_name(strategy: KRRStrategy) -> str:
    """The sketch memory's k rows of cross moments: the folded target R - C with the correction, else R."""
    return "target" if strategy.correction else "cross"
